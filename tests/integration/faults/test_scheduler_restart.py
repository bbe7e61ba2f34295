"""A scheduler crash in the middle of a DAG run, on the local stack (LocalExecutor: task processes are
children of the scheduler). Batch inference of one day is triggered through the REST API and the
scheduler is killed with ``kill -9`` while mapped scoring tasks run:

* only the scheduler process: its executor workers (the task supervisors) are orphaned; some go on
  and report their tasks' states to the api-server, some die with it (observed both ways);
* its whole process group, as a container restart does: the supervisors die with it.

A new scheduler is started once the api-server reports the old one unhealthy, as a liveness probe
would see it: only then does Airflow treat the old scheduler as dead
(``[scheduler] scheduler_health_check_threshold``, 30 s), and the new one resets the dead one's queued
and running task instances at its start and runs them again. Started earlier, it would leave them to
its next orphan check (``orphaned_tasks_check_interval``, 300 s) or the task heartbeat timeout (300 s).

Either way the run must succeed with complete, duplicate-free predictions equal to an in-process
scoring of the same units with the same model.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops_tasks import inference, registry, tracking
from mlops_tasks.airflow_client import AirflowApi
from mlops_tasks.config import PipelineConfig, load_config
from mlops_tasks.example import seed_landing
from mlops_tasks.stack import LocalStack, airflow_health
from mlops_tasks.storage import MANIFEST_NAME, partition_prefix
from tests.e2e.conftest import small_config

pytestmark = pytest.mark.slow

SCHEDULER_ONLY_DAY, WHOLE_GROUP_DAY = dt.date(2013, 3, 1), dt.date(2013, 3, 2)


@dataclass
class Env:
    stack: LocalStack
    cfg: PipelineConfig
    api: AirflowApi
    version: str  # the champion's registry version


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("scheduler-restart")
    config_dir = small_config(tmp, inference={"part_rows": 200, "schedule": None})
    with LocalStack(tmp / "stack", airflow=True, config_dir=config_dir, timeout=240) as stack:
        cfg = load_config(config_dir / "flights_delay.yaml")
        seed_landing(stack.store(cfg.storage.bucket), cfg, SCHEDULER_ONLY_DAY, WHOLE_GROUP_DAY)
        version = register_champion(stack, cfg, model_path, tmp)
        assert stack.wait_dags_parsed() == []
        api = AirflowApi(stack.airflow_url, stack.api_token())
        api.unpause(cfg.dag_id("batch_inference"))
        yield Env(stack, cfg, api, version)


def register_champion(stack: LocalStack, cfg: PipelineConfig, model_path: str, tmp: Path) -> str:
    """A run holding ``model_path`` as its ONNX export, registered and promoted; returns the version."""
    client = tracking.client(stack.mlflow_url)
    run = client.create_run(client.create_experiment(cfg.experiment_name))
    export = tmp / "model.onnx"
    shutil.copyfile(model_path, export)
    client.log_artifact(run.info.run_id, str(export), "model")
    client.set_terminated(run.info.run_id)
    metric = cfg.gate.primary_metric
    decision = {
        "promote": True,
        "reason": "fault-test champion",
        "primary_metric": metric,
        "challenger": {"metrics": {metric: 0.7}},
        "champion_version": None,
    }
    return registry.register(
        cfg, run.info.run_id, tracking_uri=stack.mlflow_url, decision=decision, data_version="fault-test"
    )["version"]


def group_pids(pgid: int) -> list[int]:
    """The live processes of a process group (from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        time.sleep(0.5)


def run_through_a_scheduler_crash(env: Env, day: dt.date, *, whole_group: bool) -> dict:
    """Trigger the day's batch inference, ``kill -9`` the scheduler (or its process group) while a
    scoring task runs, start a new scheduler, wait for the run. Returns what happened."""
    dag_id = env.cfg.dag_id("batch_inference")
    run_id = env.api.trigger(dag_id, day.isoformat())
    at_kill: dict[str, str | None] = {}

    def scoring() -> bool:
        at_kill.clear()
        at_kill.update(
            {
                f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
                for ti in env.api.task_instances(dag_id, run_id)
            }
        )
        return any(task.startswith("score[") and state == "running" for task, state in at_kill.items())

    wait_for(scoring, 180, "no scoring task was running")
    old = env.stack.services["scheduler"]
    pgid = old.process.pid  # the stack starts each component as a process group leader
    try:
        if whole_group:
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(old.process.pid, signal.SIGKILL)
        assert old.process.wait(10) == -signal.SIGKILL
        killed_at = time.monotonic()
        if whole_group:  # its members take a moment to die
            wait_for(lambda: not group_pids(pgid), 15, "the killed process group did not die")
        left = group_pids(pgid)
        wait_for(
            lambda: airflow_health(env.stack.airflow_url).get("scheduler") == "unhealthy",
            120,
            "the api-server did not report the killed scheduler unhealthy",
        )
        restart_after = time.monotonic() - killed_at
        env.stack.restart("scheduler")  # the dead one's stop() is a no-op; a new one starts
        progress: list[str] = []
        run = env.api.wait_for_run(dag_id, run_id, timeout=240, progress=progress.append)
        still_left = group_pids(pgid)
    finally:
        # What the killed scheduler left in its group (stack.stop() leaves a service killed by others).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    tis = env.api.task_instances(dag_id, run_id)
    observed = {
        "in_flight": sorted(t for t, s in at_kill.items() if s in ("queued", "running")),
        "processes_left_at_kill": len(left),
        "processes_left_after_run": len(still_left),
        "restarted_after_s": round(restart_after),
        "run_done_after_kill_s": round(time.monotonic() - killed_at),
        "tried_again": sorted(f"{ti['task_id']}[{ti['map_index']}]" for ti in tis if ti["try_number"] > 1),
    }
    print(f"\n{'whole group' if whole_group else 'scheduler only'}: {observed}\n" + "\n".join(progress))
    assert run["state"] == "success", (observed, progress)
    assert any(task.startswith("score[") for task in observed["in_flight"]), observed
    return observed


def assert_complete_predictions(env: Env, day: dt.date, model_path: str) -> None:
    """Published, one part per planned unit and nothing else, every curated row exactly once, equal
    to an in-process scoring of the same units with the same model."""
    store = env.stack.store(env.cfg.storage.bucket)
    partition = partition_prefix(env.cfg.prefix, "predictions", day)
    manifest = store.read_manifest(partition)
    units = inference.plan_parts(store, env.cfg, day)
    assert manifest["model_version"] == env.version and len(manifest["parts"]) == len(units) >= 4
    listed = {p["key"] for p in manifest["parts"]} | {partition + MANIFEST_NAME}
    assert {o.key for o in store.list(partition)} == listed  # no part of a killed attempt left over
    on_stack = inference.read_predictions(store, env.cfg, day)
    curated = store.read_manifest(partition_prefix(env.cfg.prefix, "curated", day))
    assert len(on_stack) == manifest["rows"] == curated["rows"]

    # The reference run publishes to the shadow area, which nothing else writes here (no challenger).
    cfg, area = env.cfg, "predictions_shadow"
    identity = {"model_name": cfg.registered_model_name, "model_version": env.version, "run_id": "reference"}
    results = [
        inference.score_part(store, cfg, unit, model_path=model_path, output_area=area, **identity)
        for unit in units
    ]
    inference.publish_predictions(store, cfg, day, results, output_area=area, **identity)
    reference = inference.read_predictions(store, cfg, day, area)
    assert on_stack.drop(columns="run_id").equals(reference.drop(columns="run_id"))


@pytest.mark.timeout(900)  # above the sum of the waits inside, so their messages say what hung
def test_scheduler_process_killed_mid_run_a_new_scheduler_completes_the_run(
    env: Env, model_path: str
) -> None:
    run_through_a_scheduler_crash(env, SCHEDULER_ONLY_DAY, whole_group=False)
    assert_complete_predictions(env, SCHEDULER_ONLY_DAY, model_path)


@pytest.mark.timeout(900)  # above the sum of the waits inside, so their messages say what hung
def test_scheduler_killed_with_its_task_supervisors_mid_run_a_new_scheduler_reruns_them_and_completes_the_run(
    env: Env, model_path: str
) -> None:
    observed = run_through_a_scheduler_crash(env, WHOLE_GROUP_DAY, whole_group=True)
    assert observed["processes_left_at_kill"] == 0
    assert observed["tried_again"], observed  # the dead scheduler's task instances were reset and rerun
    assert_complete_predictions(env, WHOLE_GROUP_DAY, model_path)
