"""The S3 endpoint goes away for 12 s in the middle of a task's uploads: boto3's retries (S3Settings
max_attempts, backoff) and, if those run out, the task's own retries (``retries`` of the pipeline
config, as Airflow applies them) complete the task with the same bytes as a run without outage."""

from __future__ import annotations

import threading
import time

from mlops_tasks import inference
from mlops_tasks.errors import DataError
from mlops_tasks.storage import ObjectStore
from tests.conftest import make_store
from tests.integration.faults.conftest import OutageProxy
from tests.integration.faults.stage_runner import DAY, config, output_partition, run_stage, store_for
from tests.integration.faults.test_kill9 import contents, prepare

OUTAGE_SECONDS = 12


def run_with_task_retries(store: ObjectStore, model_path: str, retries: int) -> int:
    """Run the stage like Airflow runs a task with ``retries`` (exponential backoff from 2 s);
    returns the number of attempts it took."""
    for attempt in range(1, retries + 2):
        try:
            run_stage("score", store, model_path)
            return attempt
        except DataError:
            raise  # as PipelineOperator fails its task on bad input: no retry
        except Exception:
            if attempt > retries:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def test_scoring_survives_a_12s_s3_outage_mid_upload(
    s3_endpoint: str, s3_proxy: OutageProxy, model_path: str
) -> None:
    clean = make_store(s3_endpoint)
    faulty_direct = make_store(s3_endpoint)
    for store in (clean, faulty_direct):
        prepare("score", store)
    run_stage("score", clean, model_path)
    partition = output_partition("score")
    units = len(inference.plan_parts(clean, config(), DAY))

    faulty = store_for(s3_proxy.url, faulty_direct.settings.bucket)

    finished = threading.Event()

    def cut_after_first_part() -> None:
        while len(faulty_direct.list(partition)) < 1:
            if finished.wait(0.01):  # the run ended (failed) before its first part: no outage
                return
        s3_proxy.outage(OUTAGE_SECONDS)

    cutter = threading.Thread(target=cut_after_first_part, daemon=True)
    cutter.start()
    started = time.monotonic()
    try:
        attempts = run_with_task_retries(faulty, model_path, retries=config().retries)
    finally:
        finished.set()
    elapsed = time.monotonic() - started
    cutter.join(OUTAGE_SECONDS + 5)

    assert units >= 4
    assert elapsed >= OUTAGE_SECONDS  # the outage really happened during the run
    assert attempts <= config().retries + 1
    assert contents(faulty_direct, partition) == contents(clean, partition)
