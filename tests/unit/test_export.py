"""The exported graph computes what the torch network computes, from the contract's raw inputs,
whichever form the rows arrive in (pandas for evaluation, dictionary-encoded arrow for scoring)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pytest
import torch
from onnx import numpy_helper

from mlops_tasks import export, training
from mlops_tasks import features as F
from mlops_tasks.config import FeatureSpec, PipelineConfig, TargetSpec
from tests.unit.test_training import tiny_rows


@pytest.fixture
def network(example_config: PipelineConfig) -> tuple[training.TabularNet, training.NetSpec]:
    rows = tiny_rows()
    spec = training.fit_spec(rows, F.derive_label(rows, example_config.target), example_config)
    torch.manual_seed(0)
    return training.TabularNet(spec).eval(), spec


def awkward_rows() -> object:
    """Missing numbers, unseen and missing categories: all normal input."""
    rows = tiny_rows(50, seed=1)
    rows.loc[::3, "temp"] = np.nan
    rows.loc[::4, "carrier"] = "ZZ"
    rows.loc[::5, "dest"] = None
    return rows


def session(model: object) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_graph_with_folded_standardisation_scores_as_the_torch_network(
    example_config: PipelineConfig, network: tuple
) -> None:
    net, spec = network
    rows = awkward_rows()

    (onnx_score,) = session(export.build_onnx(net, spec)).run(
        [F.SCORE_OUTPUT], F.onnx_inputs(rows, example_config.features)
    )

    torch_score, _ = training.predict(net, spec, rows)
    np.testing.assert_allclose(onnx_score, torch_score, atol=1e-6)


def test_dictionary_encoded_arrow_batches_score_like_pandas_rows(
    example_config: PipelineConfig, network: tuple
) -> None:
    net, spec = network
    rows = awkward_rows()
    batch = pa.RecordBatch.from_pandas(rows, preserve_index=False)
    encoded = pa.RecordBatch.from_arrays(
        [c.dictionary_encode() if pa.types.is_string(c.type) else c for c in batch.columns],
        names=batch.schema.names,
    )
    scorer = session(export.build_onnx(net, spec))

    from_arrow = scorer.run([F.SCORE_OUTPUT], F.onnx_inputs(encoded, example_config.features))[0]

    from_pandas = scorer.run([F.SCORE_OUTPUT], F.onnx_inputs(rows, example_config.features))[0]
    np.testing.assert_array_equal(from_arrow, from_pandas)


def test_the_graph_centres_numbers_once_and_has_no_division_or_per_row_string_ops(network: tuple) -> None:
    graph = export.build_onnx(*network).graph

    ops = [node.op_type for node in graph.node]
    assert ops.count("Sub") == 1 and "Div" not in ops  # 1 / std is folded into the first Gemm
    label_encoders = [node for node in graph.node if node.op_type == "LabelEncoder"]
    assert {tuple(node.input) for node in label_encoders} == {(F.CATEGORICAL_VALUES_INPUT,)}


def synthetic_model(
    cfg: PipelineConfig, task: str, x: np.ndarray, target: np.ndarray
) -> tuple[training.TabularNet, training.NetSpec, pd.DataFrame]:
    """An untrained network on rows with numeric ``x``, a second unit-scale column and a category."""
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"x": x, "y": rng.normal(size=len(x)), "c": rng.choice(["a", "b"], len(x))})
    rows["dep_delay"] = target
    cfg = cfg.model_copy(
        update={
            "features": FeatureSpec(numeric=["x", "y"], categorical=["c"]),
            "target": TargetSpec(task=task, column="dep_delay") if task == "regression" else cfg.target,
        }
    )
    spec = training.fit_spec(*training.labelled_rows(rows, cfg), cfg)
    torch.manual_seed(0)
    return training.TabularNet(spec).eval(), spec, rows


def test_regression_parity_is_judged_on_the_target_scale(example_config: PipelineConfig) -> None:
    """Targets around 5e5 round to 0.03 in float32: that is no parity failure, a shift of the network's
    output by 1e-3 target standard deviations is."""
    rng = np.random.default_rng(1)
    net, spec, rows = synthetic_model(
        example_config, "regression", rng.normal(size=500), rng.normal(5e5, 1e5, 500)
    )
    model = export.build_onnx(net, spec)

    diff = export.check_parity(model.SerializeToString(), net, spec, rows, 1e-4)

    assert diff < 1e-5
    bias = next(t for t in model.graph.initializer if t.name == f"b{len(spec.hidden_layers) * 2}")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1e-3, bias.name))
    with pytest.raises(export.ParityError, match="difference 0.001 target standard deviations"):
        export.check_parity(model.SerializeToString(), net, spec, rows, 1e-4)


def test_a_feature_far_from_zero_for_its_spread_keeps_parity(example_config: PipelineConfig) -> None:
    """Values ~1e6 with std 5: folding the mean into the first bias lost 5e-4 of the probability."""
    rng = np.random.default_rng(2)
    x = 1e6 + rng.normal(size=500) * 5
    net, spec, rows = synthetic_model(example_config, "binary", x, rng.normal(10, 30, 500))

    diff = export.check_parity(export.build_onnx(net, spec).SerializeToString(), net, spec, rows, 1e-4)

    assert diff < 1e-6


def test_a_model_scoring_nan_fails_the_parity_check_though_both_sides_agree(
    example_config: PipelineConfig, network: tuple
) -> None:
    net, spec = network
    with torch.no_grad():
        net.mlp[0].bias[0] = float("nan")
    model = export.build_onnx(net, spec).SerializeToString()

    with pytest.raises(export.ParityError, match=r"non-finite score for 50 of 50 parity rows"):
        export.check_parity(model, net, spec, awkward_rows(), 1e-4)


def test_the_graph_scores_an_infinite_value_as_missing_and_ignores_a_constant_feature(
    example_config: PipelineConfig, network: tuple
) -> None:
    """Training fitted +-inf as missing and zeroed the weights of features constant in its rows
    (``precip``; ``wind_gust`` is empty): serving must agree, whatever those columns hold now."""
    net, spec = network
    scorer = session(export.build_onnx(net, spec))
    rows = awkward_rows()

    def scores(frame: pd.DataFrame) -> np.ndarray:
        return scorer.run([F.SCORE_OUTPUT], F.onnx_inputs(frame, example_config.features))[0]

    base = scores(rows.assign(temp=np.nan))
    np.testing.assert_array_equal(scores(rows.assign(temp=np.inf)), base)
    np.testing.assert_array_equal(scores(rows.assign(temp=-np.inf, precip=0.4, wind_gust=45.0)), base)
    assert np.isfinite(base).all()
