"""Benchmark of the data stage against a real (moto) S3 endpoint.

(a) ingest of a full year of the example (365 days x flights.csv + weather.csv), day by day;
(b) validation of 1,000,000 rows x the example schema (the year's staged rows replicated with fresh
    keys): the whole validate step (GX suite + row split + curated/quarantine/report writes) side by
    side with GX alone on the same frame. Each measurement runs in its own child process so peak RSS
    (ru_maxrss) is its own.

Run: .venv/bin/python tests/bench/bench_data_stage.py
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import EXAMPLE_CONFIG, make_store  # noqa: E402

from mlops_tasks.config import PipelineConfig, load_config  # noqa: E402

ROWS = 1_000_000
BENCH_DAY = dt.date(2014, 1, 1)  # the replicated frame's staged partition
YEAR = (dt.date(2013, 1, 1), dt.date(2013, 12, 31))


def bench_config() -> PipelineConfig:
    """The example config with room for a 1M-row day (its max_rows is 5000)."""
    cfg = load_config(EXAMPLE_CONFIG)
    return cfg.model_copy(update={"validation": cfg.validation.model_copy(update={"max_rows": 2 * ROWS})})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def ingest_year(store) -> dict:
    from mlops_tasks import example
    from mlops_tasks.ingestion import ingest_day

    cfg = bench_config()
    start = time.perf_counter()
    example.seed_landing(store, cfg, *YEAR)
    seeded = time.perf_counter() - start
    days = [YEAR[0] + dt.timedelta(n) for n in range((YEAR[1] - YEAR[0]).days + 1)]
    start = time.perf_counter()
    rows = sum(ingest_day(store, cfg, day)["rows"] for day in days)
    return {"days": len(days), "rows": rows, "seed_s": seeded, "ingest_s": time.perf_counter() - start}


def stage_million(store) -> int:
    """Replicate the year's staged rows to 1M rows with fresh flight numbers; stage them as one day."""
    import io

    import pandas as pd

    from mlops_tasks.ingestion import to_parquet_bytes
    from mlops_tasks.storage import partition_prefix, publish_manifest, write_part

    cfg = bench_config()
    keys = [
        k
        for d in store.list_partition_dates(f"{cfg.prefix}/staging/")
        for k in store.read_manifest(partition_prefix(cfg.prefix, "staging", d))["data_parts"]
    ]
    year = pd.concat([pd.read_parquet(io.BytesIO(store.get_bytes(k))) for k in keys], ignore_index=True)
    copies = []
    for k in range(-(-ROWS // len(year))):
        copy = year.copy()
        copy["flight"] = (copy["flight"] - 1 + 3331 * k) % 9999 + 1
        copies.append(copy)
    frame = pd.concat(copies, ignore_index=True).head(ROWS)
    frame["_day"] = frame["_day"].astype("string")
    partition = partition_prefix(cfg.prefix, "staging", BENCH_DAY)
    part = write_part(store, partition, "data.parquet", to_parquet_bytes(frame), rows=len(frame))
    publish_manifest(store, partition, [part], day=BENCH_DAY.isoformat(), data_parts=[part["key"]])
    return int(frame.duplicated(list(cfg.data.key), keep=False).sum())


def child(mode: str, endpoint: str, bucket: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import great_expectations  # noqa: F401  (import cost is not part of either figure)

    from mlops_tasks import validation
    from mlops_tasks.storage import partition_prefix

    store = make_store(endpoint, bucket)
    cfg = bench_config()
    out: dict = {"mode": mode}
    if mode == "validate":
        start = time.perf_counter()
        result = validation.validate_day(store, cfg, BENCH_DAY)
        out.update(seconds=time.perf_counter() - start, bad_rows=result["bad_rows"], passed=result["passed"])
    else:
        manifest = store.read_manifest(partition_prefix(cfg.prefix, "staging", BENCH_DAY))
        frame = validation.staged_frame(validation.read_staged(store, manifest))
        out["rss_after_load_mb"] = current_rss_mb()
        start = time.perf_counter()
        results = validation.run_gx(frame, validation.build_rules(cfg))
        out.update(seconds=time.perf_counter() - start, expectations=len(results))
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def measure(mode: str, endpoint: str, bucket: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, endpoint, bucket], capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"measurement '{mode}' failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from mlops_tasks import stack

    service = stack.start_s3(Path(tempfile.mkdtemp(prefix="bench-s3-")))
    try:
        store = make_store(service.url)
        year = ingest_year(store)
        duplicates = stage_million(store)
        gx_only = measure("gx", service.url, store.bucket)
        whole = measure("validate", service.url, store.bucket)
    finally:
        service.stop()
    print("\n(a) ingest, full example year (365 x flights.csv + weather.csv), sequential, moto S3")
    print(f"{'step':<28}{'seconds':>10}{'rows':>10}{'ms/day':>10}")
    print(f"{'seed landing (PUTs)':<28}{year['seed_s']:>10.1f}{'':>10}{'':>10}")
    print(
        f"{'ingest_day x 365':<28}{year['ingest_s']:>10.1f}{year['rows']:>10}{year['ingest_s'] / 365 * 1e3:>10.0f}"
    )
    print(f"\n(b) validation, {ROWS:,} rows x example schema ({duplicates} rows with a duplicated key)")
    print(f"{'measurement':<34}{'seconds':>10}{'peak RSS MB':>14}{'ratio s':>10}")
    print(
        f"{'GX suite alone (' + str(gx_only['expectations']) + ' expectations)':<34}"
        f"{gx_only['seconds']:>10.2f}{gx_only['peak_rss_mb']:>14.0f}{1:>10.2f}"
    )
    print(
        f"{'validate_day (GX+split+writes)':<34}{whole['seconds']:>10.2f}{whole['peak_rss_mb']:>14.0f}"
        f"{whole['seconds'] / gx_only['seconds']:>10.2f}"
    )
    print(
        f"(GX-alone process held {gx_only['rss_after_load_mb']:.0f} MB after loading the frame; "
        f"validate_day: {whole['bad_rows']} rows quarantined, passed={whole['passed']})"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
    else:
        main()
