"""``kill -9`` of a task process mid-write, then the retry: the final outputs are byte-identical to a
clean run, readers never see a partial partition, and no row is duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from mlops_tasks.example import seed_landing
from mlops_tasks.storage import MANIFEST_NAME, ObjectStore
from tests.conftest import REPO, make_store
from tests.integration.faults.stage_runner import DAY, config, output_partition, run_stage
from tests.integration.onnx_fixtures import (
    curated_frame,
    publish_curated,
)


def contents(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {o.key: store.get_bytes(o.key) for o in store.list(prefix)}


def prepare(step: str, store: ObjectStore) -> None:
    if step == "ingest":
        seed_landing(store, config(), DAY, DAY)
    else:
        frames = [curated_frame(DAY, 500), curated_frame(DAY, 400, seed=1, first_flight=1000)]
        publish_curated(store, config(), DAY, frames, row_group_size=100)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the stage finished before the kill point"
        assert time.monotonic() < deadline, "kill point not reached in time"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(10) == -signal.SIGKILL


@pytest.mark.parametrize(
    ("step", "parts_before_kill"),
    [("ingest", 1), ("score", 1), ("score", 3)],
    ids=["ingest-first-part", "score-first-part", "score-third-part"],
)
def test_killed_stage_retried_is_byte_identical_to_a_clean_run(
    s3_endpoint: str, model_path: str, step: str, parts_before_kill: int
) -> None:
    clean, faulty = make_store(s3_endpoint), make_store(s3_endpoint)
    partition = output_partition(step)
    for store in (clean, faulty):
        prepare(step, store)
    run_stage(step, clean, model_path)
    expected = contents(clean, partition)

    argv = [sys.executable, "-m", "tests.integration.faults.stage_runner", step, s3_endpoint]
    process = subprocess.Popen(
        [*argv, faulty.settings.bucket, model_path],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kill_when(process, lambda: len(faulty.list(partition)) >= parts_before_kill)

    # Readers see no partition, or (killed just after the manifest PUT) a complete one.
    killed = faulty.read_manifest(partition)
    assert killed is None or all(faulty.exists(p["key"]) for p in killed["parts"])
    run_stage(step, faulty, model_path)  # the retry
    after = contents(faulty, partition)
    assert after == expected
    manifest = faulty.read_manifest(partition)
    assert sorted(after) == sorted([p["key"] for p in manifest["parts"]] + [partition + MANIFEST_NAME])
