"""Export a trained run to ONNX (the contract of :mod:`mlops_tasks.features`) and prove parity.

The graph is written directly with ``onnx.helper`` from the run's ``state_dict`` and preprocessing
JSON rather than traced with ``torch.onnx.export``: the network is a fixed, small set of layers
(embedding lookups, Linear, ReLU), so the direct graph is exact, takes milliseconds, has no exporter
version quirks, and produces identical bytes for identical weights. Preprocessing lives in the graph:

    numeric  [N,k] float32 -> ai.onnx.ml Imputer (NaN -> median) -> Sub (mean) --------------+
    categorical_values [D] string -> per column: ai.onnx.ml LabelEncoder (vocab -> 1..V,        +-> Concat
        unseen/"" -> 0) -> Gather (embedding table) -> [D, d]; Gather by categorical_codes[:, j] --+
    -> Gemm/Relu ... -> Sigmoid (binary) | Softmax + ReduceMax (multiclass) | affine (regression)

Of standardisation ``(x - mean) / std``, the division is folded into the first layer's weights
(computed in float64), which skips an elementwise pass over ``[N, k]``. The centring stays a ``Sub``
as in torch: folded into the bias as well, a feature far from zero relative to its spread (values
~1e6, std 5) would be two large float32 terms cancelling in the Gemm, losing the digits that matter.
The vocabulary lookup runs over the batch's distinct values (``D``), not its rows (see
:mod:`mlops_tasks.features`, contract 2).

Because the graph is not traced, the parity check is the guarantee: onnxruntime and torch must agree
on ``export.parity_rows`` real rows within ``export.parity_tolerance``, else :class:`ParityError` and
nothing is logged (so nothing can be registered). With ``export.quantize`` an int8 graph (scaling in
the graph, not folded) replaces it only if it passes the same check within
``export.quantize_score_tolerance`` and keeps the gate metric. Probabilities compare absolutely, a regression score
in units of the target's standard deviation (see :func:`check_parity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from mlflow.entities import Metric, RunTag
from onnx import TensorProto, helper, numpy_helper

from mlops_tasks import tracking
from mlops_tasks.config import PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.evaluation import HIGHER_IS_BETTER, OnnxModel, compute_metrics, label_targets, labelled_rows
from mlops_tasks.features import (
    CATEGORICAL_CODES_INPUT,
    CATEGORICAL_VALUES_INPUT,
    CONTRACT_VERSION,
    META_CLASSES,
    META_CONTRACT,
    META_FEATURES,
    META_TASK,
    NUMERIC_INPUT,
    PROBABILITIES_OUTPUT,
    SCORE_OUTPUT,
    onnx_inputs,
)
from mlops_tasks.training import NetSpec, TabularNet, load_run_model, predict

log = logging.getLogger(__name__)

OPSET = 17
ML_OPSET = 3
IR_VERSION = 9


class ParityError(DataError):
    """The ONNX model does not reproduce the torch model's outputs; it must not be served.
    ``diff`` is the difference measured (None when the torch model itself scores non-finite)."""

    def __init__(self, message: str, diff: float | None = None) -> None:
        super().__init__(message)
        self.diff = diff


class ExportDataError(DataError):
    """The rows given to the export cannot prove parity (none)."""


class ExportConflictError(DataError):
    """The run already holds a different ONNX model; a run's model is written once."""


def build_onnx(net: TabularNet, spec: NetSpec, *, scale_in_graph: bool = False) -> onnx.ModelProto:
    """The ONNX graph of a trained network, raw columns in, contract outputs out.

    The numeric features' scaling is folded into the first layer's weights (one op less per row);
    ``scale_in_graph`` divides them by their standard deviations before it instead, as training did:
    the graph to quantise, whose first layer's inputs must share one range (a per-tensor int8 scale
    set by a feature in the thousands rounds one in tenths to 0)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    value_info: list[onnx.ValueInfoProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    layers = [layer for layer in net.mlp if type(layer).__name__ != "Dropout"]  # identity at inference
    first_weight, first_bias = _weights(layers[0]) if scale_in_graph else _scaling_folded(layers[0], spec)
    parts: list[str] = []
    if spec.numeric:
        inputs.append(
            helper.make_tensor_value_info(NUMERIC_INPUT, TensorProto.FLOAT, ["N", len(spec.numeric)])
        )
        # ai.onnx.ml Imputer: one pass over [N, k]; IsNaN + Where took 2-3x as long in onnxruntime
        nodes.append(
            helper.make_node(
                "Imputer",
                [NUMERIC_INPUT],
                ["num_imputed"],
                domain="ai.onnx.ml",
                imputed_value_floats=[float(np.float32(m)) for m in spec.median],
                replaced_value_float=float("nan"),
            )
        )
        # ONNX shape inference has no rule for ai.onnx.ml ops; tools downstream (the int8 quantizer)
        # need the type of what the Imputer produces
        value_info.append(
            helper.make_tensor_value_info("num_imputed", TensorProto.FLOAT, ["N", len(spec.numeric)])
        )
        mean = const("num_mean", np.asarray(spec.mean, np.float32))
        nodes.append(helper.make_node("Sub", ["num_imputed", mean], ["num_centred"]))
        if scale_in_graph:
            std = const("num_std", np.asarray(spec.std, np.float32))
            nodes.append(helper.make_node("Div", ["num_centred", std], ["num_scaled"]))
        parts.append("num_scaled" if scale_in_graph else "num_centred")
    if spec.categorical:
        inputs += [
            helper.make_tensor_value_info(CATEGORICAL_VALUES_INPUT, TensorProto.STRING, ["D"]),
            helper.make_tensor_value_info(
                CATEGORICAL_CODES_INPUT, TensorProto.INT64, ["N", len(spec.categorical)]
            ),
        ]
        for i, (vocab, emb) in enumerate(zip(spec.vocab, net.embeddings, strict=True)):
            keys = vocab or [""]  # LabelEncoder needs one key; "" already means out-of-vocabulary
            values = list(range(1, len(vocab) + 1)) or [0]
            table = const(f"embedding_{i}", emb.weight.detach().numpy().astype(np.float32))
            nodes += [
                helper.make_node(
                    "LabelEncoder",
                    [CATEGORICAL_VALUES_INPUT],
                    [f"value_code_{i}"],
                    domain="ai.onnx.ml",
                    keys_strings=keys,
                    values_int64s=values,
                    default_int64=0,
                ),
                helper.make_node("Gather", [table, f"value_code_{i}"], [f"value_emb_{i}"], axis=0),
                helper.make_node(
                    "Gather",
                    [CATEGORICAL_CODES_INPUT, const(f"col_{i}", np.array(i, np.int64))],
                    [f"row_code_{i}"],
                    axis=1,
                ),
                helper.make_node("Gather", [f"value_emb_{i}", f"row_code_{i}"], [f"emb_{i}"], axis=0),
            ]
            parts.append(f"emb_{i}")
    nodes.append(helper.make_node("Concat", parts, ["h0"], axis=1))
    hidden = "h0"
    for j, layer in enumerate(layers):
        kind = type(layer).__name__  # by name: importing torch here would precede training's OpenMP setup
        if kind == "Linear":
            weight, bias = (first_weight, first_bias) if j == 0 else _weights(layer)
            nodes.append(
                helper.make_node(
                    "Gemm", [hidden, const(f"w{j}", weight), const(f"b{j}", bias)], [f"h{j + 1}"], transB=1
                )
            )
        elif kind == "ReLU":
            nodes.append(helper.make_node("Relu", [hidden], [f"h{j + 1}"]))
        else:
            raise TypeError(f"cannot export layer {kind}")
        hidden = f"h{j + 1}"
    outputs = [helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"])]
    axis1 = const("axis1", np.array([1], np.int64))
    if spec.task == "binary":
        nodes += [
            helper.make_node("Sigmoid", [hidden], ["p"]),
            helper.make_node("Squeeze", ["p", axis1], [SCORE_OUTPUT]),
        ]
    elif spec.task == "multiclass":
        nodes += [
            helper.make_node("Softmax", [hidden], [PROBABILITIES_OUTPUT], axis=1),
            helper.make_node("ReduceMax", [PROBABILITIES_OUTPUT], [SCORE_OUTPUT], axes=[1], keepdims=0),
        ]
        outputs.append(
            helper.make_tensor_value_info(
                PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["N", len(spec.classes or [])]
            )
        )
    else:
        nodes += [
            helper.make_node("Squeeze", [hidden, axis1], ["z"]),
            helper.make_node(
                "Mul", ["z", const("target_std", np.array(spec.target_std, np.float32))], ["zs"]
            ),
            helper.make_node(
                "Add", ["zs", const("target_mean", np.array(spec.target_mean, np.float32))], [SCORE_OUTPUT]
            ),
        ]
    graph = helper.make_graph(nodes, "mlops_tasks_model", inputs, outputs, inits, value_info=value_info)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="mlops_tasks",
        ir_version=IR_VERSION,
    )
    _set_metadata(model, spec)
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(linear: Any) -> tuple[np.ndarray, np.ndarray]:
    return linear.weight.detach().numpy().astype(np.float32), linear.bias.detach().numpy().astype(np.float32)


def _scaling_folded(first: Any, spec: NetSpec) -> tuple[np.ndarray, np.ndarray]:
    """The first Linear's (weight, bias) applied to centred, *unscaled* numeric columns: with
    ``x' = (x - mean) / std``, ``W x' + b = (W / std)(x - mean) + b``."""
    if type(first).__name__ != "Linear":
        raise TypeError(f"the network must start with a Linear layer, not {type(first).__name__}")
    weight = first.weight.detach().numpy().astype(np.float64)
    k = len(spec.numeric)
    weight[:, :k] /= np.asarray(spec.std, np.float64)
    return weight.astype(np.float32), first.bias.detach().numpy().astype(np.float32)


def _set_metadata(model: onnx.ModelProto, spec: NetSpec) -> None:
    meta = {
        META_FEATURES: json.dumps({"numeric": spec.numeric, "categorical": spec.categorical}),
        META_TASK: spec.task,
        META_CONTRACT: CONTRACT_VERSION,
    }
    if spec.classes is not None:
        meta[META_CLASSES] = json.dumps(spec.classes)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


def check_parity(
    model_bytes: bytes,
    net: TabularNet,
    spec: NetSpec,
    frame: pd.DataFrame,
    tolerance: float,
) -> float:
    """Max difference of onnxruntime vs torch outputs on ``frame``; ParityError above ``tolerance``.

    Probabilities (and so classification scores) compare absolutely. A regression score compares in
    units of the target's standard deviation, the scale the network computes in: float32 rounding of
    the score alone grows with the target's magnitude (0.06 around 5e5) and says nothing about the graph.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, onnx_inputs(frame, spec.features, "parity rows")), strict=True))
    score, proba = predict(net, spec, frame)
    broken = int((~np.isfinite(score)).sum())
    if broken:
        # NaN == NaN would pass the comparison below: a model scoring nothing must not pass as exact.
        raise ParityError(
            f"the torch model itself gives a non-finite score for {broken} of {len(frame)} parity rows "
            "(NaN/inf from its weights or preprocessing statistics); such a model cannot be served. "
            "Check the training run's losses and the feature values, then train again."
        )
    regression = spec.task == "regression"
    pairs = [(got[SCORE_OUTPUT], score, spec.target_std if regression else 1.0)]
    if proba is not None:
        pairs.append((got[PROBABILITIES_OUTPUT], proba, 1.0))
    diff = 0.0
    for onnx_out, torch_out, scale in pairs:
        a, b = np.asarray(onnx_out, np.float64), np.asarray(torch_out, np.float64)
        if a.shape != b.shape or (np.isnan(a) != np.isnan(b)).any():
            diff = float("inf")
            break
        if a.size:
            diff = max(diff, float(np.nanmax(np.abs(a - b), initial=0.0)) / scale)
    if not diff <= tolerance:
        unit = " target standard deviations" if regression else ""
        raise ParityError(
            f"ONNX export does not match the torch model: max abs difference {diff:.3g}{unit} over "
            f"{len(frame)} rows exceeds export.parity_tolerance {tolerance:g}; the model is not exported or registered",
            diff,
        )
    return diff


def _primary_metric(path: Path, cfg: PipelineConfig, rows: pd.DataFrame, label: pd.Series) -> float | None:
    model = OnnxModel(path, cfg)
    score, proba = model.score(rows)
    return compute_metrics(model.task, label_targets(label, model.task, model.classes), score, proba).get(
        cfg.gate.primary_metric
    )


def _quantize(
    fp32_path: Path, cfg: PipelineConfig, net: TabularNet, spec: NetSpec, sample: pd.DataFrame
) -> tuple[Path, dict]:
    """Dynamic int8 weights, kept only if, on the sample, its outputs stay within
    ``export.quantize_score_tolerance`` of the torch model's (the parity check of the file that
    would be served) and the primary metric drops less than ``export.quantize_metric_tolerance``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rows, label = labelled_rows(sample, cfg)
    if rows.empty:  # the sample days' labels have not arrived: int8 cannot be judged, so it is not kept
        return fp32_path, {"fp32_metric": None, "int8_metric": None, "int8_max_abs_diff": None, "kept": False}
    scaled_path = fp32_path.with_name("model.scaled.onnx")
    scaled_path.write_bytes(build_onnx(net, spec, scale_in_graph=True).SerializeToString())
    int8_path = fp32_path.with_name("model.int8.onnx")
    quantize_dynamic(scaled_path, int8_path, weight_type=QuantType.QInt8)
    model = onnx.load(int8_path)
    _set_metadata(model, spec)
    onnx.save(model, int8_path)
    parity_rows, tolerance = sample.head(cfg.export.parity_rows), cfg.export.quantize_score_tolerance
    try:
        diff = check_parity(int8_path.read_bytes(), net, spec, parity_rows, tolerance)
        close = True
    except ParityError as exc:
        diff, close = exc.diff, False
        log.info(
            "int8 model not kept, the fp32 one is exported: max abs difference %s vs torch "
            "exceeds export.quantize_score_tolerance %g",
            diff,
            tolerance,
        )
    before = _primary_metric(fp32_path, cfg, rows, label)
    after = _primary_metric(int8_path, cfg, rows, label)
    info = {"fp32_metric": before, "int8_metric": after, "int8_max_abs_diff": diff}
    if not close or before is None or after is None:
        return fp32_path, {**info, "kept": False}
    drop = before - after if HIGHER_IS_BETTER[cfg.gate.primary_metric] else after - before
    kept = drop < cfg.export.quantize_metric_tolerance
    return (int8_path if kept else fp32_path), {**info, "kept": kept}


def _logged_onnx_sha256(client: Any, tracking_uri: str, run_id: str, dest: Path) -> str | None:
    """sha256 of the run's logged ``model/model.onnx``, or None when it has none yet."""
    if tracking.ONNX_ARTIFACT not in {a.path for a in client.list_artifacts(run_id, "model")}:
        return None
    path = tracking.download_run_artifact(tracking_uri, run_id, tracking.ONNX_ARTIFACT, dest)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_run(
    cfg: PipelineConfig, run_id: str, *, tracking_uri: str, sample_frame: pd.DataFrame
) -> dict[str, Any]:
    """Rebuild the run's network, export, check parity, optionally quantise, log ``model/model.onnx``.

    The ONNX file is written once per run: a retry producing the same bytes logs nothing new, other
    bytes (changed export settings) raise :class:`ExportConflictError`. Otherwise re-exporting the
    champion's run would swap the served model behind the registry's and the gate's back.
    """
    if sample_frame.empty:
        raise ExportDataError(
            f"run {run_id}: the sample rows for the parity check are empty; nothing exported"
        )
    client = tracking.client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mlops-export-") as tmp:
        net, spec = load_run_model(tracking_uri, run_id, Path(tmp) / "run")
        parity_frame = sample_frame.head(cfg.export.parity_rows)
        model = build_onnx(net, spec)
        data = model.SerializeToString()
        diff = check_parity(data, net, spec, parity_frame, cfg.export.parity_tolerance)
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        path = out_dir / "model.onnx"
        path.write_bytes(data)
        quant: dict[str, Any] = {"kept": False}
        if cfg.export.quantize:
            chosen, quant = _quantize(path, cfg, net, spec, sample_frame)
            data = chosen.read_bytes()
            path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        # The parity of the file logged and served: the int8 model's where it was kept (the fp32
        # graph's stays beside it), not the fp32 graph's 1e-7 for a file 1e-3 off.
        served_diff = quant["int8_max_abs_diff"] if quant["kept"] else diff
        now = int(time.time() * 1000)
        tags = [RunTag("onnx_sha256", sha), RunTag("onnx_quantized", str(quant["kept"]).lower())]
        metrics = [
            Metric("parity_max_abs_diff", served_diff, now, 0),
            Metric("onnx_bytes", len(data), now, 0),
        ]
        if quant["kept"]:
            metrics.append(Metric("fp32_parity_max_abs_diff", diff, now, 0))
        with tracking.reachable(tracking_uri, f"log the ONNX model of run {run_id}"):
            logged = _logged_onnx_sha256(client, tracking_uri, run_id, Path(tmp) / "logged")
            if logged is not None and logged != sha:
                raise ExportConflictError(
                    f"run {run_id} already holds a different {tracking.ONNX_ARTIFACT} (sha256 "
                    f"{logged[:12]}, this export {sha[:12]}): a run's ONNX model is written once, since "
                    "the registry serves and the gate judged that file. The export settings changed "
                    "since (e.g. export.quantize); train a new run (a new DAG run, or change the "
                    "training config) to export with them, or restore the settings to retry this one."
                )
            if logged is None:
                client.log_artifact(run_id, str(path), "model")
            run = client.get_run(run_id)
            # A retry after the upload (the same bytes): record only what the earlier attempt missed.
            if run.data.tags.get("onnx_sha256") != sha:
                client.log_batch(run_id, metrics=metrics, tags=tags)
            artifact_uri = run.info.artifact_uri
    return {
        "run_id": run_id,
        "onnx_artifact_uri": f"{artifact_uri}/{tracking.ONNX_ARTIFACT}",
        "onnx_bytes": len(data),
        "onnx_sha256": sha,
        "parity_max_abs_diff": served_diff,
        "fp32_parity_max_abs_diff": diff,
        "parity_rows": len(parity_frame),
        "quantized": bool(quant["kept"]),
        "quantization": quant if cfg.export.quantize else None,
    }
