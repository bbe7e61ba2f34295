"""One stage of the pipeline as a separate process, so a test can ``kill -9`` it mid-write.

``python -m tests.integration.faults.stage_runner <ingest|score> <endpoint> <bucket> [model.onnx]``
(the same :func:`run_stage` also runs in the test process for clean runs and retries).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

from mlops_tasks import stack
from mlops_tasks.config import PipelineConfig, load_config
from mlops_tasks.storage import ObjectStore, S3Settings, partition_prefix

EXAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "flights_delay.yaml"

DAY = dt.date(2013, 3, 1)
IDENTITY = {
    "model_name": "flights_delay",
    "model_version": "1",
    "run_id": "scheduled__2013-03-01T00:00:00+00:00",
}
OUTPUT_AREA = {"ingest": "staging", "score": "predictions"}


def config() -> PipelineConfig:
    cfg = load_config(EXAMPLE_CONFIG)
    small = cfg.inference.model_copy(update={"part_rows": 200, "batch_rows": 128, "intra_op_threads": 1})
    return cfg.model_copy(update={"inference": small})


def store_for(endpoint: str, bucket: str, max_attempts: int = 8) -> ObjectStore:
    return ObjectStore(
        S3Settings(
            bucket=bucket,
            endpoint_url=endpoint,
            aws_access_key_id=stack.LOCAL_ACCESS_KEY,
            aws_secret_access_key=stack.LOCAL_SECRET_KEY,
            max_attempts=max_attempts,
        )
    )


def output_partition(step: str) -> str:
    return partition_prefix(config().prefix, OUTPUT_AREA[step], DAY)


def run_stage(step: str, store: ObjectStore, model_path: str | None = None) -> dict[str, Any]:
    """What the DAG's task(s) for ``step`` do for DAY: ingest the day, or plan + score + publish."""
    from mlops_tasks import inference
    from mlops_tasks.ingestion import ingest_day

    cfg = config()
    if step == "ingest":
        return ingest_day(store, cfg, DAY)
    results = [
        inference.score_part(store, cfg, unit, model_path=model_path, output_area="predictions", **IDENTITY)
        for unit in inference.plan_parts(store, cfg, DAY)
    ]
    return inference.publish_predictions(store, cfg, DAY, results, output_area="predictions", **IDENTITY)


if __name__ == "__main__":
    step, endpoint, bucket, *model = sys.argv[1:]
    run_stage(step, store_for(endpoint, bucket), model[0] if model else None)
