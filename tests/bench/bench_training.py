"""Training cost and ONNX serving latency at example scale.

Trains on 250k example rows (flights with weather, all of 2013 sampled) with the configured model of
configs/flights_delay.yaml and 2 torch threads, through the production path (MLflow run, artifacts in
the embedded S3 endpoint), exports to ONNX, then measures onnxruntime latency of single-row calls and
10k-row batches. Target: training < 120 s.

    .venv/bin/python tests/bench/bench_training.py [--rows 250000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlops_tasks import export, tracking, training
from mlops_tasks.config import FeatureSpec, load_config
from mlops_tasks.evaluation import OnnxModel
from mlops_tasks.features import onnx_inputs
from tests.conftest import EXAMPLE_CONFIG
from tests.model_frames import example_rows, local_tracking_server


def latencies_ms(
    model: OnnxModel, rows: pd.DataFrame, features: FeatureSpec, size: int, calls: int
) -> np.ndarray:
    """Wall time of ``calls`` session runs of ``size``-row batches taken in turn from ``rows``; each
    batch's inputs are built beforehand (its categorical values are the batch's own distinct ones, as
    in serving), so only onnxruntime is timed."""
    starts = [(i * size) % max(len(rows) - size, 1) for i in range(calls)]
    batches = [onnx_inputs(rows.iloc[start : start + size], features) for start in starts]
    model.session.run(None, batches[0])  # warm-up
    times = []
    for batch in batches:
        began = time.perf_counter()
        model.session.run(None, batch)
        times.append((time.perf_counter() - began) * 1000)
    return np.asarray(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=250_000)
    args = parser.parse_args()
    cfg = load_config(EXAMPLE_CONFIG)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"threads": 2})})
    rows = example_rows(dt.date(2013, 1, 1), dt.date(2013, 12, 31), max_rows=args.rows, seed=0)
    train, evaluation = training.split_window(rows, cfg)
    print(f"model settings: {cfg.model.model_dump()}")
    with local_tracking_server() as uri:
        run = training.train(cfg, train, tracking_uri=uri, data_version="bench", trigger="bench")
        started = time.perf_counter()
        exported = export.export_run(cfg, run["run_id"], tracking_uri=uri, sample_frame=evaluation)
        export_seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            model = OnnxModel(
                tracking.download_run_artifact(uri, run["run_id"], tracking.ONNX_ARTIFACT, tmp), cfg
            )
            single = latencies_ms(model, rows, cfg.features, 1, 2000)
            batch = latencies_ms(model, rows, cfg.features, 10_000, 30)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = [
        ("training rows (after validation split)", f"{run['train_rows']}"),
        ("epochs run / best epoch", f"{run['epochs_run']} / {run['best_epoch']}"),
        ("training seconds (train(), incl. MLflow logging)", f"{run['seconds']:.1f}"),
        ("seconds per epoch", f"{run['seconds'] / run['epochs_run']:.2f}"),
        (
            "training rows per second (per epoch)",
            f"{run['train_rows'] * run['epochs_run'] / run['seconds']:.0f}",
        ),
        ("export + parity seconds", f"{export_seconds:.2f}"),
        ("ONNX bytes", f"{exported['onnx_bytes']}"),
        ("parity max abs diff", f"{exported['parity_max_abs_diff']:.2e}"),
        (
            "ONNX single-row p50 / p95 ms",
            f"{np.percentile(single, 50):.3f} / {np.percentile(single, 95):.3f}",
        ),
        (
            "ONNX 10k-row batch p50 / p95 ms",
            f"{np.percentile(batch, 50):.1f} / {np.percentile(batch, 95):.1f}",
        ),
        ("ONNX 10k-row batch rows per second", f"{10_000 / (np.percentile(batch, 50) / 1000):.0f}"),
        (
            "single-row vs 10k-batch per-row cost ratio",
            f"{np.percentile(single, 50) / (np.percentile(batch, 50) / 10_000):.0f}x",
        ),
        ("peak RSS MB (this process)", f"{peak_mb:.0f}"),
    ]
    width = max(len(k) for k, _ in table)
    print("\n".join(f"{k:<{width}}  {v:>16}" for k, v in table))


if __name__ == "__main__":
    main()
