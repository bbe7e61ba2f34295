"""The real Airflow DagBag loads dags/ with zero import errors and the DAGs the configs promise."""

from __future__ import annotations

import shutil
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


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
def test_a_missing_config_directory_is_an_error_dag_not_zero_dags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made: bool
) -> None:
    """A mistyped $MLOPS_TASKS_CONFIG_DIR (or a wheel install without configs/ beside it, or a
    volume mounted over the wrong path) must show up in the UI, not leave an empty DAG list."""
    import shutil

    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowFailException

    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    shutil.copy(REPO / "dags" / "mlops_pipelines.py", dags_dir)
    typo = tmp_path / "cofnigs"
    if made:
        typo.mkdir()
        (typo / "README.md").write_text("not a pipeline")
    monkeypatch.setenv("MLOPS_TASKS_CONFIG_DIR", str(typo))
    bag = DagBag(dag_folder=str(dags_dir))
    assert bag.import_errors == {}
    assert bag.dag_ids == ["mlops_config_error_config_dir"]
    dag = bag.dags["mlops_config_error_config_dir"]
    task = dag.get_task("config_error")
    problem = "holds no pipeline YAML file" if made else "does not exist"
    assert str(typo) in task.reason and problem in task.reason
    assert "$MLOPS_TASKS_CONFIG_DIR" in task.reason and "$MLOPS_TASKS_CONFIG_DIR" in dag.description
    assert dag.schedule is None or dag.timetable.summary in ("None", "")
    with pytest.raises(AirflowFailException, match="cofnigs"):
        task.execute({})


def test_a_broken_config_with_a_very_long_file_name_is_one_error_dag(tmp_path: Path) -> None:
    """Airflow refuses DAG ids over 250 characters: the error DAG's id is cut, not an exception that
    would discard every pipeline's DAGs."""
    from mlops_tasks.airflow.dag_factory import build_all_dags

    shutil.copy(REPO / "configs" / "flights_delay.yaml", tmp_path / "flights_delay.yaml")
    (tmp_path / ("x" * 240 + ".yaml")).write_text("name: [broken\n")
    dags = build_all_dags(tmp_path)
    errors = [d for d in dags if d.startswith("mlops_config_error_")]
    assert len(errors) == 1 and len(errors[0]) <= 250
    assert "flights_delay_training" in dags
