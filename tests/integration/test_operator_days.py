"""Which day an asset-triggered run works on: retrain windows and drift checks (no logical date)."""

from __future__ import annotations

import datetime as dt
import re
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from mlops_tasks.airflow.operators import (
    DriftCheckOperator,
    IngestDayOperator,
    PlanIngestionOperator,
    TriggerRetrainingOperator,
    retrain_window_end,
)
from mlops_tasks.config import PipelineConfig
from mlops_tasks.storage import ObjectStore, partition_prefix, publish_manifest, write_part


def asset_run(*extras: dict[str, Any]) -> dict[str, Any]:
    """The context of a run that an asset's events triggered: no logical date or data interval."""
    events = [SimpleNamespace(extra=extra) for extra in extras]
    return {
        "triggering_asset_events": {"asset": events},
        "logical_date": None,
        "data_interval_end": None,
        "dag_run": SimpleNamespace(
            run_after=dt.datetime(2026, 12, 3, tzinfo=dt.UTC), run_type="asset_triggered"
        ),
    }


def test_a_run_taking_in_several_retrain_requests_trains_up_to_the_latest_window() -> None:
    context = asset_run(
        {"window_end": "2013-07-20", "source": "drift_monitor", "reason": "drift"},
        {"window_end": "2013-06-01", "source": "backfill", "reason": "late labels"},
    )
    assert retrain_window_end(context) == (dt.date(2013, 7, 20), "asset:drift_monitor: drift")


def test_a_retrain_event_without_a_window_trains_up_to_the_day_before_it_arrived() -> None:
    assert retrain_window_end(asset_run({"reason": "manual"})) == (dt.date(2026, 12, 2), "asset_triggered")


def drift_check(store: ObjectStore) -> DriftCheckOperator:
    operator = DriftCheckOperator(task_id="drift_check", pipeline="flights_delay")
    operator.__dict__["store"] = store  # the connection's store, without an Airflow connection
    return operator


def test_a_drift_check_triggered_by_an_event_without_a_day_checks_the_newest_published_day(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    operator = drift_check(store)
    with pytest.raises(AirflowSkipException, match="no predictions are published"):
        operator._day(asset_run({}))
    for day, published in (
        (dt.date(2013, 7, 1), True),
        (dt.date(2013, 7, 2), True),
        (dt.date(2013, 7, 3), False),
    ):
        partition = partition_prefix(example_config.prefix, "predictions", day)
        part = write_part(store, partition, "part-00000.parquet", b"rows", rows=1)
        if published:
            publish_manifest(store, partition, [part])
    assert operator._day(asset_run({})) == dt.date(2013, 7, 2)  # 07-03 has parts but no manifest
    assert operator._day(asset_run({"day": "2013-07-01"})) == dt.date(2013, 7, 1)


def test_a_window_with_more_days_to_ingest_than_airflow_maps_fails_saying_what_to_change(
    store: ObjectStore, example_config: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    operator = PlanIngestionOperator(
        task_id="plan_ingestion", pipeline="flights_delay", window_end="2013-02-28"
    )
    operator.__dict__["store"] = store
    pushed: dict[str, Any] = {}
    context: Any = {"ti": SimpleNamespace(xcom_push=lambda key, value: pushed.update({key: value}))}
    for day in ("2013-02-25", "2013-02-26", "2013-02-27"):
        store.put_bytes(f"{example_config.prefix}/landing/date={day}/flights.csv", b"year\n2013\n")
    assert operator.execute(context) == ["2013-02-25", "2013-02-26", "2013-02-27"]
    assert pushed["window"] == {"end": "2013-02-28", "trigger": "manual"}
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "2")
    with pytest.raises(
        AirflowFailException, match=r"3 days to ingest in 2013-0\d-\d\d\.\.2013-02-28 are more"
    ):
        operator.execute(context)


def test_a_retrain_event_for_a_window_without_data_fails_instead_of_training_nothing(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """A typo in an external event's window_end (1999 for 2013): skipped, the run would end green
    with no model and no alert."""
    from airflow.sdk.exceptions import AirflowFailException

    operator = PlanIngestionOperator(task_id="plan_ingestion", pipeline="flights_delay")
    operator.__dict__["store"] = store
    event = SimpleNamespace(extra={"window_end": "1999-02-28", "reason": "new labels"})
    context: Any = {
        "triggering_asset_events": {"retrain": [event]},
        "dag_run": SimpleNamespace(
            run_after=dt.datetime(2026, 12, 4, tzinfo=dt.UTC), run_type="asset_triggered"
        ),
        "ti": SimpleNamespace(xcom_push=lambda key, value: None),
    }
    with pytest.raises(
        AirflowFailException, match=r"window 1999-01-01\.\.1999-02-28, which holds no landed or curated day"
    ):
        operator.execute(context)
    store.put_bytes(f"{example_config.prefix}/landing/date=1999-02-27/flights.csv", b"year\n1999\n")
    assert operator.execute(context) == ["1999-02-27"]  # some data: the run goes on


def test_a_scheduled_training_run_whose_window_holds_no_data_fails_instead_of_ending_green(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """A feed that stopped landing files: skipped, the run ended green with no model and no alert."""
    from airflow.sdk.exceptions import AirflowFailException

    operator = PlanIngestionOperator(task_id="plan_ingestion", pipeline="flights_delay")
    operator.__dict__["store"] = store
    context: Any = {
        "data_interval_end": dt.datetime(2013, 10, 1, tzinfo=dt.UTC),
        "dag_run": SimpleNamespace(run_after=dt.datetime(2013, 10, 1, tzinfo=dt.UTC), run_type="scheduled"),
        "ti": SimpleNamespace(xcom_push=lambda key, value: None),
    }
    with pytest.raises(
        AirflowFailException,
        match=r"this run \(schedule\) trains on the window 2013-08-03\.\.2013-09-30, which holds no landed "
        r"or curated day .* \(is the feed delivering\?\)",
    ):
        operator.execute(context)


def test_a_scheduled_training_run_before_the_pipelines_data_starts_skips(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """The first fire time of a new pipeline's schedule: its window ends before start_date."""
    from airflow.sdk.exceptions import AirflowSkipException

    operator = PlanIngestionOperator(task_id="plan_ingestion", pipeline="flights_delay")
    operator.__dict__["store"] = store
    start = dt.datetime(2013, 1, 1, tzinfo=dt.UTC)
    context: Any = {
        "data_interval_end": start,
        "dag_run": SimpleNamespace(run_after=start, run_type="scheduled"),
        "ti": SimpleNamespace(xcom_push=lambda key, value: None),
    }
    with pytest.raises(AirflowSkipException, match=r"ends before the pipeline's data starts \(2013-01-01\)"):
        operator.execute(context)


def test_the_retrain_event_goes_out_once_per_run_and_is_marked_sent_only_once_it_exists(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """The first attempt sends the event and marks nothing (Airflow emits it only if the task
    succeeds: a mark before that would make the run's cleared check give up a retrain that never
    went out). Cleared and run again, the task finds the run's event, marks the trigger sent and
    sends no second one."""
    from collections import defaultdict

    from mlops_tasks.airflow.dag_factory import retrain_asset
    from mlops_tasks.monitoring import state_key

    day, run = dt.date(2013, 7, 14), "scheduled__2013-07-14T00:00:00+00:00"
    dag_id = "flights_delay_drift_monitor"
    checker = f"{dag_id}/{run}"  # the drift state names a run with its DAG: run ids repeat across DAGs
    decision = {"day": day.isoformat(), "retrain": True, "status": "drift", "reasons": ["drift"]}
    other = {"day": "2013-06-01", "run_id": "older"}
    store.put_json(
        state_key(example_config), {"triggers": [other, {"day": day.isoformat(), "run_id": checker}]}
    )
    asset = retrain_asset(example_config)
    operator = TriggerRetrainingOperator(
        task_id="request_retraining",
        pipeline="flights_delay",
        decision=decision,
        outlets=[asset],
        inlets=[asset],
    )
    operator.__dict__["store"] = store

    def context(*events: tuple[str, str]) -> Any:
        sent = [
            SimpleNamespace(source_dag_id=d, source_run_id=r, timestamp="2013-07-15T00:00:01")
            for d, r in events
        ]
        return {
            "run_id": run,
            # as the task runner's RuntimeTaskInstance has them (the alert's key reads them)
            "ti": SimpleNamespace(dag_id=dag_id, task_id=operator.task_id, map_index=-1, try_number=1),
            "outlet_events": defaultdict(SimpleNamespace),
            "inlet_events": {asset: sent},
        }

    first = context((dag_id, "scheduled__2013-06-01T00:00:00+00:00"), ("flights_delay_training", run))
    assert operator.execute(first)["window_end"] == "2013-07-14"
    assert first["outlet_events"][asset].extra["window_end"] == "2013-07-14"
    assert store.get_json(state_key(example_config))["triggers"][1] == {
        "day": day.isoformat(),
        "run_id": checker,
    }

    cleared = context((dag_id, run))
    with pytest.raises(AirflowSkipException, match="This run already requested retraining"):
        operator.execute(cleared)
    assert "extra" not in vars(cleared["outlet_events"][asset])
    state = store.get_json(state_key(example_config))
    # what test_drift.py's cleared-check test starts from: the run's trigger blocks the run itself
    assert state["triggers"] == [other, {"day": day.isoformat(), "run_id": checker, "sent": True}]


def test_batch_inference_ingests_its_day_again_only_when_landing_files_were_added_or_replaced(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """Landing retention removed a curated day's file: re-scoring the day scores its curated rows
    (ingest skips), instead of re-curating it from what is left. A replaced file is ingested."""
    from mlops_tasks.example import seed_landing
    from mlops_tasks.ingestion import ingest_day
    from mlops_tasks.validation import validate_day

    day = dt.date(2013, 3, 4)
    seed_landing(store, example_config, day, day)
    ingest_day(store, example_config, day)
    validate_day(store, example_config, day)
    curated = partition_prefix(example_config.prefix, "curated", day)
    before = store.read_manifest(curated)
    operator = IngestDayOperator(
        task_id="ingest", pipeline="flights_delay", day=day.isoformat(), only_if_needed=True
    )
    operator.__dict__["store"] = store
    landing = partition_prefix(example_config.prefix, "landing", day)

    store.delete([landing + "weather.csv"])  # retention
    with pytest.raises(AirflowSkipException, match="2013-03-04 is curated and no landing file was added"):
        operator.execute({})
    assert store.read_manifest(curated) == before

    seed_landing(store, example_config, day, day)  # weather.csv landed again, the same bytes
    flights = store.get_bytes(landing + "flights.csv")
    store.put_bytes(landing + "flights.csv", flights.rstrip(b"\n") + b"\n\n")  # corrected upstream
    assert operator.execute({})["status"] != "no_data"


def test_the_mlflow_run_of_a_training_killed_on_its_last_attempt_is_ended_when_the_dag_run_fails(
    mlflow_server: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last attempt killed outright (OOM, a lost node) leaves its run RUNNING with no next attempt
    to end it; the training DAG's failure callback marks it KILLED, through the MLflow connection.
    Other runs are left alone."""
    import uuid

    from mlops_tasks import stack, tracking
    from mlops_tasks.airflow.dag_factory import build_training_dag
    from mlops_tasks.airflow.operators import EndAbandonedTrainingRun
    from mlops_tasks.config import load_pipeline

    for key, value in stack.connection_env(s3_endpoint, mlflow_server).items():
        monkeypatch.setenv(key, value)
    callback = build_training_dag(load_pipeline("flights_delay")).on_failure_callback
    assert isinstance(callback, EndAbandonedTrainingRun)
    client = tracking.client(mlflow_server)
    experiment = client.get_experiment_by_name("flights_delay")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("flights_delay")
    run_id = f"scheduled__{uuid.uuid4().hex}"
    killed = client.create_run(experiment_id, run_name=f"flights_delay-{run_id}")
    other = client.create_run(experiment_id, run_name=f"flights_delay-other-{run_id}")

    callback({"run_id": run_id, "reason": "task_failure"})

    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert client.get_run(other.info.run_id).info.status == "RUNNING"
    client.set_terminated(other.info.run_id)


def test_a_cleared_drift_check_of_a_run_that_sent_its_retrain_marks_it_sent_first(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """So the trigger stays (and the cooldown holds) whatever the check decides this time."""
    from mlops_tasks.airflow.dag_factory import retrain_asset
    from mlops_tasks.monitoring import state_key

    run, dag_id = "scheduled__2013-07-14T00:00:00+00:00", "flights_delay_drift_monitor"
    store.put_json(
        state_key(example_config), {"triggers": [{"day": "2013-07-14", "run_id": f"{dag_id}/{run}"}]}
    )
    asset = retrain_asset(example_config)
    operator = DriftCheckOperator(
        task_id="drift_check", pipeline="flights_delay", day="2013-07-14", inlets=[asset]
    )
    operator.__dict__["store"] = store
    # Nothing listens there: the check itself stops after the mark, whatever other tests registered.
    operator.__dict__["_mlflow_addresses"] = ("http://127.0.0.1:9", "http://127.0.0.1:9")
    sent = SimpleNamespace(source_dag_id=dag_id, source_run_id=run, extra={"window_end": "2013-07-14"})
    ti = SimpleNamespace(dag_id=dag_id, task_id="check_drift", map_index=-1, try_number=1)
    context: Any = {"run_id": run, "ti": ti, "inlet_events": {asset: [sent]}}
    with pytest.raises(Exception, match="is not reachable"):
        operator.execute(context)
    assert store.get_json(state_key(example_config))["triggers"] == [
        {"day": "2013-07-14", "run_id": f"{dag_id}/{run}", "sent": True}
    ]


def test_a_late_publish_of_a_model_the_champion_alias_has_left_is_refused_by_the_registry(
    store: ObjectStore, example_config: PipelineConfig, mlflow_server: str
) -> None:
    """The operator asks the real registry which version the alias names now: a run that resolved v1
    before the rollback to v2 does not replace the day a later run published with v2."""
    import uuid

    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks import tracking
    from mlops_tasks.airflow.operators import PublishPredictionsOperator
    from mlops_tasks.inference import publish_predictions

    name = f"m_{uuid.uuid4().hex[:10]}"
    cfg = example_config.model_copy(
        update={"mlflow": example_config.mlflow.model_copy(update={"registered_model": name})}
    )
    client = tracking.client(mlflow_server)
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source="s3://mlops/unused/model")
    client.set_registered_model_alias(name, "champion", "2")
    day = dt.date(2013, 3, 1)
    partition = partition_prefix(cfg.prefix, "predictions", day)

    def scored(version: str, run_id: str) -> dict[str, Any]:
        part = write_part(store, partition, f"part-{run_id}.parquet", f"{version} {run_id}".encode(), 1)
        return {
            "part": part,
            "part_index": 0,
            "units": 1,
            "rows": 1,
            "model_version": version,
            "run_id": run_id,
        }

    stale = scored("1", "scheduled")
    publish_predictions(
        store, cfg, day, [scored("2", "manual")], model_name=name, model_version="2", run_id="manual"
    )
    operator = PublishPredictionsOperator(
        task_id="publish",
        pipeline="flights_delay",
        part_results=[stale],
        models={"champion": {"version": "1"}},
    )
    operator.__dict__.update(config=cfg, store=store, _mlflow_addresses=(mlflow_server, mlflow_server))
    context = {
        "run_id": "scheduled",
        "outlet_events": {},
        "logical_date": dt.datetime(2013, 3, 1, tzinfo=dt.UTC),
    }

    with pytest.raises(AirflowFailException, match="version 2's .run 'manual'"):
        operator.execute(context)
    assert store.read_manifest(partition)["model_version"] == "2"


def test_a_day_failing_the_validation_gate_still_reports_its_quarantine_metrics_and_report_link(
    store: ObjectStore, example_config: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quarantined-fraction panel must show the day that failed, not only days that passed; the
    task's link opens the report that says why."""
    from collections import defaultdict

    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks import example, observability
    from mlops_tasks.airflow import operators
    from mlops_tasks.airflow.links import ValidationReportLink
    from mlops_tasks.ingestion import ingest_day

    day = dt.date(2013, 1, 5)
    example.seed_landing(store, example_config, day, day)
    landing = partition_prefix(example_config.prefix, "landing", day) + "flights.csv"
    lines = store.get_bytes(landing).decode().splitlines()
    # two of every three flights from an airport the config does not allow: over max_bad_row_fraction
    header, rows = lines[0], [r.replace(",EWR,", ",XXX,").replace(",JFK,", ",XXX,") for r in lines[1:]]
    store.put_bytes(landing, "\n".join([header, *rows, ""]).encode())
    ingest_day(store, example_config, day)
    emitted: list[dict[str, float]] = []
    monkeypatch.setattr(operators, "emit", lambda *a, **k: emitted.append(observability.emit(*a, **k)))
    validate = operators.ValidateDayOperator(
        task_id="validate", pipeline="flights_delay", day=day.isoformat()
    )
    validate.__dict__.update(store=store, config=example_config)
    pushed: dict[str, str] = defaultdict(str)
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))

    with pytest.raises(AirflowFailException, match="FAILED the gate.*'origin in allowed values'") as failure:
        validate.execute({"run_id": "manual__1", "ti": ti})

    [sent] = emitted
    assert sent["mlops.flights_delay.validate.bad_fraction"] > example_config.validation.max_bad_row_fraction
    assert sent["mlops.flights_delay.validate.quarantined_rows"] > 0
    report = re.search(r"Report: (s3://\S+/validation-[0-9a-f]{16}\.html);", str(failure.value))
    assert report and store.exists(store.key_of(report[1]))
    assert pushed[ValidationReportLink().xcom_key] == "/mlops/reports?uri=" + quote(report[1], safe="")
