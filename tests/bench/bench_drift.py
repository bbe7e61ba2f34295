"""Benchmark: Evidently DataDriftPreset on everything vs the shipped drift strategy, side by side.

Data: the example's flights joined with the origin's hourly weather, resampled (seeded, with
replacement) to 300,000 reference rows and 1,000,000 current rows x the example's 15 features.

* ``evidently_full``: every row read, then ``drift.evidently_report`` with sampling disabled -
  Evidently 0.7 DataDriftPreset over all rows (same per-column tests and thresholds), decision from
  its summary.
* ``shipped``: what the drift monitor does - ``drift.sample_parts`` reads the parts one at a time
  keeping a seeded sample of ``drift.sample_rows`` rows per side, the fast per-column statistics
  make the decision, and the Evidently report renders ``drift.report_rows`` of them.

Frames are built once per scenario and stored as parquet parts the way the lifecycle stores them
(the reference as 10 parts, the current window as 7 daily parts; categoricals dictionary-encoded);
each (strategy, scenario) runs in a fresh subprocess. "import s" is importing Evidently (once per
check, whatever the strategy), "read s" reading the parts, "drift s" the drift work; peak RSS is the child's ``VmHWM`` (``ru_maxrss`` would carry over the parent's peak).

Run: ``.venv/bin/python tests/bench/bench_drift.py`` (several minutes on 2 cores).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_ROWS = 300_000
CURRENT_ROWS = 1_000_000
SCENARIOS = {
    # name: (months the current rows come from, shift added to current columns, expected retrain)
    "winter_vs_summer": ([6, 7, 8], {}, True),
    "winter_vs_winter": ([12], {}, False),
    "synthetic_shift": ([1, 2], {"temp": 20.0, "humid": -25.0}, True),
}
# The example's tuned thresholds (see tests/integration/test_drift.py) and the proposed sample size:
# 20,000 rows per side estimate these distances to about 0.01, far from the 1.0 / 0.2 thresholds.
EXAMPLE_DRIFT_KNOBS = {
    "wasserstein_threshold": 1.0,
    "jensenshannon_threshold": 0.2,
    "sample_rows": 20_000,
    "report_rows": 5_000,
}
PARTS = {"reference": 10, "current": 7}
DAY = dt.date(2013, 7, 1)


def _config(sample_rows: int | None):
    from mlops_tasks.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "flights_delay.yaml")
    knobs = dict(EXAMPLE_DRIFT_KNOBS)
    if sample_rows is not None:
        knobs["sample_rows"] = knobs["report_rows"] = sample_rows
    return cfg.model_copy(update={"drift": cfg.drift.model_copy(update=knobs)})


def write_frames(scenario: str, directory: Path) -> None:
    import numpy as np

    from mlops_tasks import example

    months, shift, _ = SCENARIOS[scenario]
    cfg = _config(None)
    weather = example.weather().drop(columns=["year", "month", "day", "hour"])
    flights = example.flights()
    merged = flights.merge(weather, on=["origin", "time_hour"], how="left")[cfg.features.all]
    merged[cfg.features.categorical] = merged[cfg.features.categorical].astype("category")
    rng = np.random.default_rng(2013)
    winter = merged[flights["month"].isin([1, 2]).to_numpy()]
    pool = merged[flights["month"].isin(months).to_numpy()]
    reference = winter.iloc[rng.integers(0, len(winter), REFERENCE_ROWS)].reset_index(drop=True)
    current = pool.iloc[rng.integers(0, len(pool), CURRENT_ROWS)].reset_index(drop=True)
    for column, delta in shift.items():
        current[column] = current[column] + delta
    for side, frame in (("reference", reference), ("current", current)):
        for i, piece in enumerate(np.array_split(np.arange(len(frame)), PARTS[side])):
            frame.iloc[piece].reset_index(drop=True).to_parquet(
                directory / f"{scenario}-{side}-{i:02d}.parquet"
            )


def _parts(directory: Path, scenario: str, side: str) -> list:
    import pandas as pd
    import pyarrow.parquet as pq

    from mlops_tasks import drift

    paths = sorted(directory.glob(f"{scenario}-{side}-*.parquet"))
    return [
        drift.Part(rows=pq.read_metadata(p).num_rows, load=lambda p=p: pd.read_parquet(p), name=str(p))
        for p in paths
    ]


def _vm_hwm_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def child(strategy: str, scenario: str, directory: Path) -> dict:
    import pandas as pd

    from mlops_tasks import drift

    # Imported apart (both strategies pay it once per check, whatever the rows): timed on its own.
    start = time.perf_counter()
    import evidently.presets  # noqa: F401

    import_seconds = time.perf_counter() - start
    start = time.perf_counter()
    parts = {side: _parts(directory, scenario, side) for side in PARTS}
    if strategy == "evidently_full":
        cfg = _config(10**9)
        reference, current = (pd.concat([p.load() for p in parts[side]], ignore_index=True) for side in PARTS)
        rows = {}
    else:
        cfg = _config(None)
        (reference, reference_rows), (current, current_rows) = (
            drift.sample_parts(parts[side], cfg.drift.sample_rows, cfg.drift.seed) for side in PARTS
        )
        rows = {"reference_rows": reference_rows, "current_rows": current_rows}
    read_seconds = time.perf_counter() - start
    rss_data_mb = _vm_hwm_mb()
    start = time.perf_counter()
    html, summary = drift.evidently_report(cfg, reference, current, day=DAY, **rows)
    if strategy == "shipped":
        summary = drift.compare(cfg, reference, current, **rows)
    decision = drift.decide(cfg, summary, day=DAY, state=None)
    return {
        "import_seconds": import_seconds,
        "read_seconds": read_seconds,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": _vm_hwm_mb(),
        "rss_after_data_mb": rss_data_mb,
        "retrain": decision["retrain"],
        "drifted": decision["drifted_columns"],
        "html_mb": len(html) / 1e6,
    }


def run_child(strategy: str, scenario: str, directory: Path) -> dict:
    command = [sys.executable, __file__, "--child", strategy, scenario, str(directory)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{strategy}/{scenario} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        for scenario in SCENARIOS:
            write_frames(scenario, Path(tmp))
            for strategy in ("evidently_full", "shipped"):
                results[scenario, strategy] = run_child(strategy, scenario, Path(tmp))
                print(
                    f"  done {scenario} {strategy}: {results[scenario, strategy]['seconds']:.1f}s", flush=True
                )

    features = len(_config(None).features.all)
    print(
        f"\nreference {REFERENCE_ROWS:,} rows, current {CURRENT_ROWS:,} rows x {features} features; "
        "fresh process each\n"
    )
    header = (
        f"{'scenario':18s} {'strategy':15s} {'import s':>8s} {'read s':>7s} {'drift s':>8s} {'peak RSS MB':>12s} "
        f"{'RSS after data':>15s} "
        f"{'html MB':>8s} {'retrain':>8s} {'expected':>9s}  drifted columns"
    )
    print(header)
    print("-" * len(header))
    for (scenario, strategy), r in results.items():
        print(
            f"{scenario:18s} {strategy:15s} {r['import_seconds']:8.1f} {r['read_seconds']:7.1f} {r['seconds']:8.1f} "
            f"{r['peak_rss_mb']:12.0f} "
            f"{r['rss_after_data_mb']:15.0f} {r['html_mb']:8.1f} {r['retrain']!s:>8s} "
            f"{SCENARIOS[scenario][2]!s:>9s}  {','.join(r['drifted'])}"
        )
    print("\nratios (evidently_full / shipped)")
    for scenario in SCENARIOS:
        full, shipped = results[scenario, "evidently_full"], results[scenario, "shipped"]
        same = "same decision" if full["retrain"] == shipped["retrain"] else "DIFFERENT DECISION"
        total = {k: r["read_seconds"] + r["seconds"] for k, r in (("full", full), ("shipped", shipped))}
        whole = {k: total[k] + r["import_seconds"] for k, r in (("full", full), ("shipped", shipped))}
        print(
            f"{scenario:18s} drift time x{full['seconds'] / shipped['seconds']:.1f}   "
            f"read+drift x{total['full'] / total['shipped']:.1f}   "
            f"import+read+drift x{whole['full'] / whole['shipped']:.1f}   "
            f"peak RSS x{full['peak_rss_mb'] / shipped['peak_rss_mb']:.1f}   {same}"
        )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], Path(sys.argv[4]))))
    else:
        main()
