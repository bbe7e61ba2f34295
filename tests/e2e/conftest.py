"""Whole-DAG tests: the real DAG files, run with ``dag.test()`` against the real S3 endpoint and MLflow
server of the test session, on a migrated Airflow metadata DB (SQLite in the session's AIRFLOW_HOME).

The example pipeline is shrunk for speed (short window, few epochs) by writing a variant of
configs/flights_delay.yaml into a temporary config dir; the DAG code is unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlops_tasks import stack
from tests.conftest import EXAMPLE_CONFIG, make_store


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """``airflow db migrate`` once per session (SQLite under the session's AIRFLOW_HOME)."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        timeout=300,
    )


def small_config(tmp_path: Path, name: str = "flights_delay", **overrides: dict) -> Path:
    """The example config, shrunk for speed. A test that uses its own bucket must also use its own
    ``name``: Airflow keeps one active asset per name, so two pipelines named alike but writing to
    different buckets would leave one's predictions asset inactive in the shared test database."""
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["name"] = name
    raw["mlflow"]["registered_model"] = name
    raw["training"].update({"window_days": 10, "evaluation_days": 3})
    # batches of 128 over 4 epochs: enough optimiser steps on a few days of rows for a real model (the
    # default 1,024 made 2-3 steps an epoch, and gate ROC AUCs near 0.5 on some windows)
    raw["model"].update({"epochs": 4, "hidden_layers": [32, 16], "batch_size": 128})
    raw["validation"]["min_rows"] = 10
    raw["gate"]["min_value"] = 0.5  # a 4-epoch model on 7 days: the test is about the mechanics
    raw["drift"].update({"window_days": 3, "min_rows": 200})
    for section, values in overrides.items():
        raw[section].update(values)
    directory = tmp_path / "configs"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return directory


@pytest.fixture
def lifecycle_env(
    tmp_path: Path, airflow_db: None, s3_endpoint: str, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict]:
    """Connections for the session's services and a small example config; a fresh bucket prefix."""
    config_dir = small_config(tmp_path)
    monkeypatch.setenv("MLOPS_TASKS_CONFIG_DIR", str(config_dir))
    for key, value in stack.connection_env(s3_endpoint, mlflow_server).items():
        monkeypatch.setenv(key, value)
    store = make_store(s3_endpoint, "mlops")
    yield {"store": store, "config_dir": config_dir, "mlflow": mlflow_server}


def run_dag(dag_id: str, logical_date: str, conf: dict | None = None):
    """Parse dags/ like Airflow does and run one DAG with ``dag.test()``; returns the DagRun."""
    import datetime as dt

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert bag.import_errors == {}
    dag = bag.dags[dag_id]
    return dag.test(
        logical_date=dt.datetime.fromisoformat(logical_date).replace(tzinfo=dt.UTC), run_conf=conf
    )
