"""Scoring fixtures: curated partitions shaped like the example's, and small ONNX models that follow
the contract in :mod:`mlops_tasks.features`, built with onnx.helper.

They stand in for the exported champion in tests: raw inputs ``numeric`` (float32, NaN = missing)
and the dictionary-encoded categoricals (``categorical_values`` + ``categorical_codes``) go through
in-graph imputation, scaling and an ``ai.onnx.ml.LabelEncoder`` + embedding lookup per categorical
column, then an MLP, then the contract's ``score`` (and ``probabilities`` for multiclass) outputs
and metadata. ``build_model(..., contract=1)`` builds a model of mlops_tasks 0.1 (categoricals as
one ``[N, m]`` string tensor), which scorers must keep serving.

:class:`MlpParams` holds every weight as numpy, so a test or benchmark can put the very same
weights into another graph and compare like with like.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper

from mlops_tasks import features as F
from mlops_tasks.config import FeatureSpec, PipelineConfig, TargetSpec
from mlops_tasks.storage import ObjectStore, partition_prefix, publish_manifest, write_part

OPSET = 17
ML_OPSET = 3
EXAMPLE_VOCAB = {
    "carrier": ["9E", "AA", "B6", "DL", "EV", "MQ", "UA", "US", "WN"],
    "origin": ["EWR", "JFK", "LGA"],
    "dest": ["ATL", "BOS", "CLT", "DEN", "DFW", "LAX", "MCO", "MIA", "ORD", "SFO"],
}


def multiclass(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` predicting ``dep_delay`` as classes (the labels come from the model's metadata)."""
    return cfg.model_copy(update={"target": TargetSpec(task="multiclass", column="dep_delay")})


def curated_frame(day: dt.date, rows: int, seed: int = 0, first_flight: int = 1) -> pd.DataFrame:
    """Seeded rows with every column of the example config plus the lineage columns of ingestion;
    keys are unique (flight numbers count up from ``first_flight``)."""
    rng = np.random.default_rng(seed)
    hour = rng.integers(5, 23, rows)
    minute = rng.integers(0, 60, rows)
    sched = hour * 100 + minute
    delay = np.round(rng.gamma(1.0, 15.0, rows) - 8, 0)
    frame = pd.DataFrame(
        {
            "year": day.year,
            "month": day.month,
            "day": day.day,
            "dep_time": ((sched + delay) % 2400).astype(float),
            "sched_dep_time": sched,
            "dep_delay": delay,
            "carrier": rng.choice([*EXAMPLE_VOCAB["carrier"], "HA"], rows),
            "flight": np.arange(first_flight, first_flight + rows),
            "origin": pd.Categorical(rng.choice(EXAMPLE_VOCAB["origin"], rows)),
            "dest": rng.choice([*EXAMPLE_VOCAB["dest"], "XNA"], rows),
            "distance": rng.uniform(100, 2500, rows).round(),
            "hour": hour,
            "minute": minute,
            "time_hour": pd.Timestamp(day) + pd.to_timedelta(hour, unit="h"),
        }
    )
    weather = {"temp": (20, 80), "dewp": (0, 60), "humid": (20, 100), "wind_dir": (0, 360)}
    weather |= {"wind_speed": (0, 30), "wind_gust": (0, 40), "precip": (0, 0.5), "pressure": (990, 1040)}
    for col, (lo, hi) in {**weather, "visib": (0, 10)}.items():
        frame[col] = rng.uniform(lo, hi, rows)
    frame.loc[rng.random(rows) < 0.05, "wind_gust"] = np.nan  # missing values the graph imputes
    frame["_day"] = day
    frame["_source_file"] = f"landing/date={day.isoformat()}/flights.csv"
    frame["_source_line"] = np.arange(2, rows + 2)
    frame["_ingest_error"] = None
    return frame


def publish_curated(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, frames: list[pd.DataFrame], row_group_size: int
) -> list[str]:
    """Publish ``frames`` as the day's curated parts (one part each), like ingestion does."""
    partition = partition_prefix(cfg.prefix, "curated", day)
    parts = []
    for i, frame in enumerate(frames):
        buffer = io.BytesIO()
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False), buffer, row_group_size=row_group_size
        )
        parts.append(write_part(store, partition, f"part-{i:05d}.parquet", buffer.getvalue(), len(frame)))
    return [p["key"] for p in publish_manifest(store, partition, parts)["parts"]]


@dataclass
class MlpParams:
    """Weights of the reference model. ``vocab[c]`` maps to embedding rows 1..n; row 0 is OOV."""

    mean: np.ndarray  # [n_numeric] imputation value and centre
    std: np.ndarray  # [n_numeric]
    vocab: dict[str, list[str]]
    embeddings: dict[str, np.ndarray]  # column -> [len(vocab)+1, dim]
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W [in, out], b [out]); ReLU between layers


def random_params(
    features: FeatureSpec,
    vocab: dict[str, list[str]],
    hidden: list[int],
    outputs: int = 1,
    embedding_dim: int = 4,
    seed: int = 0,
) -> MlpParams:
    """Seeded random weights of an MLP of the given shape (the size of a real exported model)."""
    rng = np.random.default_rng(seed)
    n_num = len(features.numeric)
    embeddings = {
        c: rng.normal(0, 0.5, (len(vocab[c]) + 1, embedding_dim)).astype(np.float32)
        for c in features.categorical
    }
    width = n_num + embedding_dim * len(features.categorical)
    layers = []
    for size in [*hidden, outputs]:
        w = rng.normal(0, 1 / np.sqrt(width), (width, size)).astype(np.float32)
        layers.append((w, rng.normal(0, 0.1, size).astype(np.float32)))
        width = size
    return MlpParams(
        mean=rng.normal(0, 1, n_num).astype(np.float32),
        std=rng.uniform(0.5, 2, n_num).astype(np.float32),
        vocab=vocab,
        embeddings=embeddings,
        layers=layers,
    )


def threshold_params(features: FeatureSpec, column: str, threshold: float, steepness: float) -> MlpParams:
    """A linear model whose binary score is ``sigmoid(steepness * (column - threshold))``: its
    predictions are known in advance, which makes shadow-comparison numbers checkable by hand."""
    index = features.numeric.index(column)
    n_num = len(features.numeric)
    mean = np.zeros(n_num, dtype=np.float32)
    mean[index] = threshold
    width = n_num + len(features.categorical)
    w = np.zeros((width, 1), dtype=np.float32)
    w[index, 0] = steepness
    return MlpParams(
        mean=mean,
        std=np.ones(n_num, dtype=np.float32),
        vocab={c: ["_"] for c in features.categorical},
        embeddings={c: np.zeros((2, 1), dtype=np.float32) for c in features.categorical},
        layers=[(w, np.zeros(1, dtype=np.float32))],
    )


def build_model(
    path: Path,
    features: FeatureSpec,
    params: MlpParams,
    task: str = "binary",
    classes: list | None = None,
    contract: int = 2,
) -> Path:
    """Write the ONNX model of ``params`` to ``path`` and return it; ``contract=1`` builds a model
    of mlops_tasks 0.1 (categoricals as one [N, m] string input)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    parts: list[str] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    if features.numeric:
        n = len(features.numeric)
        inputs.append(helper.make_tensor_value_info(F.NUMERIC_INPUT, TensorProto.FLOAT, ["N", n]))
        nodes += [
            helper.make_node("IsNaN", [F.NUMERIC_INPUT], ["num_isnan"]),
            helper.make_node("Where", ["num_isnan", const("mean", params.mean), F.NUMERIC_INPUT], ["num_f"]),
            helper.make_node("Sub", ["num_f", "mean"], ["num_c"]),
            helper.make_node("Div", ["num_c", const("std", params.std)], ["num_s"]),
        ]
        parts.append("num_s")
    if features.categorical:
        n = len(features.categorical)
        if contract == 1:
            inputs.append(
                helper.make_tensor_value_info(F.LEGACY_CATEGORICAL_INPUT, TensorProto.STRING, ["N", n])
            )
        else:
            inputs += [
                helper.make_tensor_value_info(F.CATEGORICAL_VALUES_INPUT, TensorProto.STRING, ["D"]),
                helper.make_tensor_value_info(F.CATEGORICAL_CODES_INPUT, TensorProto.INT64, ["N", n]),
            ]
        for j, col in enumerate(features.categorical):
            vocab = params.vocab[col]
            column = const(f"col{j}", np.array(j, np.int64))
            # contract 1 looks every row's string up; contract 2 the batch's distinct values, then
            # picks each row's by its code
            strings = (
                [helper.make_node("Gather", [F.LEGACY_CATEGORICAL_INPUT, column], [f"cat{j}"], axis=1)]
                if contract == 1
                else []
            )
            lookup = f"cat{j}" if contract == 1 else F.CATEGORICAL_VALUES_INPUT
            embedded = f"e{j}" if contract == 1 else f"value_e{j}"
            nodes += [
                *strings,
                helper.make_node(
                    "LabelEncoder",
                    [lookup],
                    [f"idx{j}"],
                    domain="ai.onnx.ml",
                    keys_strings=vocab,
                    values_int64s=list(range(1, len(vocab) + 1)),
                    default_int64=0,
                ),
                helper.make_node("Gather", [const(f"emb{j}", params.embeddings[col]), f"idx{j}"], [embedded]),
            ]
            if contract != 1:
                nodes += [
                    helper.make_node("Gather", [F.CATEGORICAL_CODES_INPUT, column], [f"code{j}"], axis=1),
                    helper.make_node("Gather", [embedded, f"code{j}"], [f"e{j}"]),
                ]
            parts.append(f"e{j}")
    nodes.append(helper.make_node("Concat", parts, ["h0"], axis=1))
    h = "h0"
    for i, (w, b) in enumerate(params.layers):
        nodes.append(helper.make_node("Gemm", [h, const(f"w{i}", w), const(f"b{i}", b)], [f"z{i}"]))
        h = f"z{i}"
        if i < len(params.layers) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"a{i}"]))
            h = f"a{i}"
    outputs = [helper.make_tensor_value_info(F.SCORE_OUTPUT, TensorProto.FLOAT, ["N"])]
    if task == "binary":
        nodes += [
            helper.make_node("Sigmoid", [h], ["p"]),
            helper.make_node("Squeeze", ["p", const("axes", np.array([1], np.int64))], [F.SCORE_OUTPUT]),
        ]
    elif task == "regression":
        nodes.append(
            helper.make_node("Squeeze", [h, const("axes", np.array([1], np.int64))], [F.SCORE_OUTPUT])
        )
    else:
        nodes += [
            helper.make_node("Softmax", [h], [F.PROBABILITIES_OUTPUT], axis=1),
            helper.make_node("ReduceMax", [F.PROBABILITIES_OUTPUT], [F.SCORE_OUTPUT], axes=[1], keepdims=0),
        ]
        width = params.layers[-1][0].shape[1]
        outputs.append(helper.make_tensor_value_info(F.PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["N", width]))
    graph = helper.make_graph(nodes, "mlops_tasks_fixture", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    )
    model.ir_version = 8
    meta = {
        F.META_FEATURES: json.dumps({"numeric": features.numeric, "categorical": features.categorical}),
        F.META_TASK: task,
        **({F.META_CONTRACT: F.CONTRACT_VERSION} if contract != 1 else {}),
    }
    if classes is not None:
        meta[F.META_CLASSES] = json.dumps(classes)
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
