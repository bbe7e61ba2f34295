"""Scale-out: the unchanged package on Airflow 3 with CeleryExecutor, PostgreSQL and Redis.

One module-scoped stack: scheduler, dag-processor, triggerer and api-server on a PostgreSQL metadata
database (Celery result backend in it too), a Redis broker, two ``airflow celery worker`` processes
(concurrency 1, told apart by ``[core] hostname_callable``), MLflow on its own PostgreSQL database and
the moto S3 endpoint. The shrunk example pipeline is trained and then scored in >= 4 mapped parts
through the REST API, exactly as a user would; the predictions are then compared with an in-process
``airflow dags test`` of the same day.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from mlops_tasks import stack as stack_mod
from mlops_tasks.airflow_client import AirflowApi
from tests.conftest import REPO, require_service
from tests.e2e.conftest import small_config
from tests.integration.services import (
    PG_HOST,
    PG_PORT,
    REDIS_HOST,
    REDIS_PORT,
    postgres_database,
    redis_database,
)

pytestmark = [pytest.mark.slow, pytest.mark.services]

WORKERS = ("worker-a", "worker-b")
TRAIN_RUN, SCORE_DAY = "2013-01-05", dt.date(2013, 1, 8)  # trains on 01-01..01-04, scores 01-08
RUN_TIMEOUT = 420


def celery_overrides(metadata_db: str, broker: str) -> dict[str, str]:
    """Airflow settings that turn the local stack into the docker-compose topology."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db.replace("postgresql://", "postgresql+psycopg2://"),
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + metadata_db,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        # REPO: the workers' hostname_callable lives in the test package.
        "PYTHONPATH": str(REPO),
    }


def start_worker(stack: stack_mod.LocalStack, name: str) -> None:
    """``airflow celery worker`` with its own hostname; stopped by ``stack.stop()`` like the rest."""
    log = stack.log_dir / f"celery-{name}.log"
    env = {
        **stack.airflow_env(),
        "MLOPS_WORKER_NAME": name,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.integration.services.worker_hostname",
    }
    argv = [stack_mod._bin("airflow"), "celery", "worker", "-c", "1", "-H", f"{name}@%h", "--skip-serve-logs"]
    stack.services[f"celery-{name}"] = stack_mod.start_process(
        f"celery-{name}",
        argv,
        "",
        stack.log_dir,
        lambda: log.exists() and b" ready." in log.read_bytes(),
        env=env,
        timeout=180,
    )


@pytest.fixture(scope="module")
def celery_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_mod.LocalStack]:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    tmp = tmp_path_factory.mktemp("celery")
    config_dir = small_config(
        tmp,
        training={"window_days": 4, "evaluation_days": 1, "schedule": None},
        inference={"part_rows": 200, "schedule": None},
    )
    with (
        postgres_database("mlops_test_airflow") as metadata_db,
        postgres_database("mlops_test_mlflow") as mlflow_db,
        redis_database() as broker,
    ):
        stack = stack_mod.LocalStack(
            tmp / "stack",
            airflow=True,
            config_dir=config_dir,
            airflow_overrides=celery_overrides(metadata_db, broker),
            mlflow_backend_uri=mlflow_db,
            timeout=240,
        )
        with stack:
            for name in WORKERS:
                start_worker(stack, name)
            yield stack


@pytest.fixture(scope="module")
def runs(celery_stack: stack_mod.LocalStack) -> Iterator[dict[str, dict]]:
    """Training, then batch inference of one day, both through the scheduler and the workers."""
    # The stack's configs for this module only: later tests read the repository's.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLOPS_TASKS_CONFIG_DIR", str(celery_stack.config_dir))
        yield _run_training_and_scoring(celery_stack)


def _run_training_and_scoring(celery_stack: stack_mod.LocalStack) -> dict[str, dict]:
    from mlops_tasks.config import load_pipeline
    from mlops_tasks.example import seed_landing

    cfg = load_pipeline("flights_delay")
    seed_landing(celery_stack.store(cfg.storage.bucket), cfg, dt.date(2013, 1, 1), SCORE_DAY)
    assert celery_stack.wait_dags_parsed() == []
    api = AirflowApi(celery_stack.airflow_url, celery_stack.api_token())
    result = {}
    for kind, day in (("training", TRAIN_RUN), ("batch_inference", SCORE_DAY.isoformat())):
        dag_id = cfg.dag_id(kind)
        api.unpause(dag_id)
        run_id = api.trigger(dag_id, day)
        run = api.wait_for_run(dag_id, run_id, timeout=RUN_TIMEOUT, progress=lambda line: None)
        result[kind] = {"run": run, "tis": api.task_instances(dag_id, run_id)}
    return result


def test_training_and_batch_inference_succeed_on_celery(runs: dict[str, dict]) -> None:
    failed = {
        kind: [(ti["task_id"], ti["map_index"], ti["state"]) for ti in r["tis"] if ti["state"] == "failed"]
        for kind, r in runs.items()
    }
    assert {kind: r["run"]["state"] for kind, r in runs.items()} == {
        "training": "success",
        "batch_inference": "success",
    }, failed


def test_champion_is_registered_in_mlflow_on_postgresql(
    runs: dict[str, dict], celery_stack: stack_mod.LocalStack
) -> None:
    from mlops_tasks.config import load_pipeline
    from mlops_tasks.registry import champion_info

    champion = champion_info(load_pipeline("flights_delay"), tracking_uri=celery_stack.mlflow_url)
    assert champion is not None and champion["version"] == "1"


def test_scoring_is_mapped_into_at_least_four_parts(runs: dict[str, dict]) -> None:
    scored = [ti for ti in runs["batch_inference"]["tis"] if ti["task_id"] == "score"]
    assert len(scored) >= 4
    assert {ti["state"] for ti in scored} == {"success"}


def test_both_celery_workers_ran_tasks(runs: dict[str, dict]) -> None:
    # The batch inference DAG's leaves are EmptyOperators, which the scheduler completes itself.
    ran = [ti for r in runs.values() for ti in r["tis"] if ti["state"] == "success"]
    assert {ti["hostname"] for ti in ran if ti["task_id"] == "served"} == {""}
    assert {ti["hostname"] for ti in ran if ti["task_id"] != "served"} == set(WORKERS)


def test_celery_predictions_equal_an_in_process_dag_test_run(
    runs: dict[str, dict], celery_stack: stack_mod.LocalStack
) -> None:
    from mlops_tasks.config import load_pipeline
    from mlops_tasks.inference import read_predictions
    from mlops_tasks.storage import partition_prefix

    cfg = load_pipeline("flights_delay")
    store = celery_stack.store(cfg.storage.bucket)
    partition = partition_prefix(cfg.prefix, "predictions", SCORE_DAY)
    on_celery = read_predictions(store, cfg, SCORE_DAY)
    celery_manifest = store.read_manifest(partition)
    # The reference run writes the same keys: remove Celery's, and keep the scheduler from
    # picking up the run that ``dags test`` clears and re-runs in process.
    celery_stack.services.pop("scheduler").stop()
    try:
        assert store.delete_prefix(partition) > 0
        subprocess.run(
            [stack_mod._bin("airflow"), "dags", "test", cfg.dag_id("batch_inference"), SCORE_DAY.isoformat()],
            env={**os.environ, **celery_stack.airflow_env()},
            check=True,
            capture_output=True,
            timeout=300,
        )
    finally:
        celery_stack.restart("scheduler")  # for the tests after this one
    in_process = read_predictions(store, cfg, SCORE_DAY)
    manifest = store.read_manifest(partition)

    # Part names are content-addressed (sha256 prefix) and the run_id column differs: compare stems.
    stems = [p["key"].rsplit("-", 1)[0] for p in manifest["parts"]]
    assert stems == [p["key"].rsplit("-", 1)[0] for p in celery_manifest["parts"]]
    assert [p["rows"] for p in manifest["parts"]] == [p["rows"] for p in celery_manifest["parts"]]
    assert len(in_process) == len(on_celery) == celery_manifest["rows"]
    assert in_process.drop(columns="run_id").equals(on_celery.drop(columns="run_id"))


def test_an_external_retrain_request_through_the_rest_api_trains_on_its_window(
    runs: dict[str, dict], celery_stack: stack_mod.LocalStack
) -> None:
    """What docs/quickstart.md tells an external system to do: an event on the retrain asset through
    ``POST /api/v2/assets/events`` with ``window_end`` and ``reason``. The scheduler starts an
    asset-triggered training run, which trains up to the event's day and records why."""
    from mlops_tasks.airflow.dag_factory import retrain_asset
    from mlops_tasks.config import load_pipeline
    from mlops_tasks.lineage import read_record

    cfg = load_pipeline("flights_delay")
    api = AirflowApi(celery_stack.airflow_url, celery_stack.api_token())
    dag_id = cfg.dag_id("training")
    known = {run["dag_run_id"] for run in api.runs(dag_id)}
    api.post_asset_event(retrain_asset(cfg).uri, {"window_end": "2013-01-06", "reason": "new labels"})

    started = api.wait_for_new_run(dag_id, known, timeout=120, run_type="asset_triggered")
    run = api.wait_for_run(dag_id, started["dag_run_id"], timeout=RUN_TIMEOUT, progress=lambda line: None)

    assert run["state"] == "success"
    record = read_record(celery_stack.store(cfg.storage.bucket), cfg)  # the newest version's
    assert record["dag_run_id"] == started["dag_run_id"]
    assert record["training_window"]["end"] == "2013-01-06"
    assert record["trigger"] == "asset:external: new labels"


def test_worker_task_logs_hold_no_connection_secret(
    runs: dict[str, dict], celery_stack: stack_mod.LocalStack
) -> None:
    logs = [path for path in (celery_stack.airflow_home / "logs").rglob("*") if path.is_file()]
    assert len(logs) >= len(runs["training"]["tis"])
    assert [str(p) for p in logs if stack_mod.LOCAL_SECRET_KEY.encode() in p.read_bytes()] == []


@pytest.mark.parametrize(
    "path", ["/api/v2/dags", "/api/v2/connections", "/api/v2/dags/flights_delay_training/dagRuns"]
)
def test_api_refuses_anonymous_requests(celery_stack: stack_mod.LocalStack, path: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(celery_stack.airflow_url + path, timeout=10)
    assert refused.value.code in (401, 403)
