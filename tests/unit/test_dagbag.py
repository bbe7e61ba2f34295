"""The real Airflow DagBag loads dags/ with zero import errors and the DAGs the configs promise."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dags_folder_has_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


def test_every_pipeline_has_training_inference_and_drift_dags(dagbag) -> None:
    assert {"flights_delay_training", "flights_delay_batch_inference", "flights_delay_drift_monitor"} <= set(
        dagbag.dag_ids
    )


def test_training_dag_runs_the_lifecycle_in_order(dagbag) -> None:
    dag = dagbag.dags["flights_delay_training"]
    order = [
        "plan_ingestion",
        "ingest",
        "validate",
        "version_data",
        "train",
        "export_onnx",
        "evaluate_gate",
        "register",
        "lineage",
    ]
    for upstream, downstream in pairwise(order):
        assert downstream in dag.get_task(upstream).downstream_task_ids, f"{upstream} -> {downstream}"


def test_training_is_scheduled_on_cron_or_the_retrain_asset(dagbag) -> None:
    timetable = dagbag.dags["flights_delay_training"].timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.expression == "0 0 1 * *"
    assert timetable.asset_condition.uri == "mlops://flights_delay/retrain"


def test_drift_monitor_is_triggered_by_predictions(dagbag) -> None:
    dag = dagbag.dags["flights_delay_drift_monitor"]
    publish = dagbag.dags["flights_delay_batch_inference"].get_task("publish")
    assert [a.uri for a in publish.outlets] == ["s3://mlops/flights_delay/predictions"]
    assert dag.timetable.asset_condition.name == "flights_delay_predictions"
