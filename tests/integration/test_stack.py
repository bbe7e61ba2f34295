"""The embedded local stack as ``mlops-tasks up`` runs it, and the example seeding against it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_tasks import example
from mlops_tasks.config import PipelineConfig
from mlops_tasks.stack import LocalStack, airflow_health
from mlops_tasks.storage import ObjectStore, partition_prefix

JAN_1, JAN_3 = dt.date(2013, 1, 1), dt.date(2013, 1, 3)


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("local-stack")) as running:
        yield running


def test_stack_creates_the_configured_bucket_and_serves_mlflow(
    local_stack: LocalStack, example_config: PipelineConfig
) -> None:
    local_stack.store(example_config.storage.bucket).check()
    with urllib.request.urlopen(local_stack.mlflow_url + "/health", timeout=5) as resp:
        assert resp.status == 200


def test_seeded_days_are_listed_back_as_landing_partitions(
    local_stack: LocalStack, example_config: PipelineConfig
) -> None:
    store = local_stack.store(example_config.storage.bucket)
    summary = example.seed_landing(store, example_config, JAN_1, JAN_3)
    landing = f"{example_config.prefix}/landing/"
    assert store.list_partition_dates(landing) == [JAN_1, JAN_1 + dt.timedelta(1), JAN_3]
    keys = [o.key for o in store.list(partition_prefix(example_config.prefix, "landing", JAN_1))]
    assert keys == [f"{landing}date=2013-01-01/flights.csv", f"{landing}date=2013-01-01/weather.csv"]
    assert summary["days"] == 3 and summary["objects"] == 6


def test_seeding_twice_gives_identical_objects(store: ObjectStore, example_config: PipelineConfig) -> None:
    example.seed_landing(store, example_config, JAN_1, JAN_1)
    first = {o.key: o.etag for o in store.list(example_config.prefix)}
    example.seed_landing(store, example_config, JAN_1, JAN_1)
    assert {o.key: o.etag for o in store.list(example_config.prefix)} == first


def test_seeded_flights_are_the_days_rows_as_shipped(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    summary = example.seed_landing(store, example_config, JAN_1, JAN_1)
    import pandas as pd

    key = partition_prefix(example_config.prefix, "landing", JAN_1) + "flights.csv"
    with store.spooled(key) as path:
        landed = pd.read_csv(path)
    shipped = example.flights_on(JAN_1).reset_index(drop=True)
    pd.testing.assert_frame_equal(landed, shipped)
    assert summary["rows"] == len(shipped) and landed["dep_time"].isna().any()  # cancelled flights kept


def test_seeding_outside_the_example_year_names_the_covered_range(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    with pytest.raises(example.ExampleDataError, match="2013-01-01 .. 2013-12-31"):
        example.seed_landing(store, example_config, dt.date(2014, 1, 1), dt.date(2014, 1, 2))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_full_stack_serves_a_healthy_airflow_without_dag_import_errors(tmp_path: Path) -> None:
    with LocalStack(tmp_path, airflow=True) as running:
        assert set(airflow_health(running.airflow_url).values()) == {"healthy"}
        running.wait_dags_parsed(timeout=60)  # whatever dags/ holds, it has been parsed once
        errors = subprocess.run(
            ["airflow", "dags", "list-import-errors", "--output", "json"],
            env={**os.environ, **running.airflow_env()},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        # The CLI may print warnings before the JSON document, which is its last line.
        assert json.loads(errors.stdout.strip().splitlines()[-1]) == []
