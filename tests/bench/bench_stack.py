"""Local stack start/stop times and example seeding throughput (sequential vs threaded PUTs).

Run: .venv/bin/python tests/bench/bench_stack.py
"""

from __future__ import annotations

import datetime as dt
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlops_tasks import example
from mlops_tasks.config import load_config
from mlops_tasks.stack import LocalStack

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
YEAR = (dt.date(2013, 1, 1), dt.date(2013, 12, 31))


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    cfg = load_config(REPO / "configs" / "flights_delay.yaml")
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        start_s, stack = timed(lambda: LocalStack(Path(tmp) / "s3-mlflow").start())
        rows.append(("start S3 + MLflow", start_s, ""))
        store = stack.store(cfg.storage.bucket)
        parse_s, _ = timed(lambda: (example._csv_by_day("flights"), example._csv_by_day("weather")))
        rows.append(("split shipped CSVs by day (once per process)", parse_s, ""))
        seq_s, summary = timed(lambda: example.seed_landing(store, cfg, *YEAR, threads=1))
        par_s, _ = timed(lambda: example.seed_landing(store, cfg, *YEAR))
        mb = summary["bytes"] / 1e6
        rows.append(("seed 365 days, 1 thread", seq_s, f"{mb / seq_s:.1f} MB/s"))
        rows.append((f"seed 365 days, {example.SEED_THREADS} threads", par_s, f"{seq_s / par_s:.2f}x faster"))
        stop_s, _ = timed(stack.stop)
        rows.append(("stop S3 + MLflow", stop_s, ""))

        full_s, full = timed(lambda: LocalStack(Path(tmp) / "full", airflow=True).start())
        rows.append(
            ("start S3 + MLflow + Airflow (fresh state dir)", full_s, f"{full_s / start_s:.1f}x S3+MLflow")
        )
        parsed_s, pending = timed(full.wait_dags_parsed)
        rows.append(("dag-processor has parsed dags/", parsed_s, f"pending: {pending or 'none'}"))
        stop_full_s, _ = timed(full.stop)
        rows.append(("stop the full stack", stop_full_s, ""))
        restart_s, again = timed(lambda: LocalStack(Path(tmp) / "full", airflow=True).start())
        rows.append(("restart the full stack (existing state dir)", restart_s, ""))
        again.stop()

    print(f"{summary['objects']} objects, {summary['rows']} flight rows, {mb:.1f} MB per seeding\n")
    print(f"{'step':<50} {'seconds':>8}  note")
    for name, seconds, note in rows:
        print(f"{name:<50} {seconds:>8.2f}  {note}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process (seeding included): {peak:.0f} MB")


if __name__ == "__main__":
    main()
