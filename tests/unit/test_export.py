"""The exported graph computes what the torch network computes, from the contract's raw inputs,
whichever form the rows arrive in (pandas for evaluation, dictionary-encoded arrow for scoring)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import torch

from mlops_tasks import export, training
from mlops_tasks import features as F
from mlops_tasks.config import PipelineConfig
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


def test_the_graph_has_no_standardisation_or_per_row_string_ops(network: tuple) -> None:
    graph = export.build_onnx(*network).graph

    ops = [node.op_type for node in graph.node]
    assert "Sub" not in ops and "Div" not in ops  # folded into the first Gemm
    label_encoders = [node for node in graph.node if node.op_type == "LabelEncoder"]
    assert {tuple(node.input) for node in label_encoders} == {(F.CATEGORICAL_VALUES_INPUT,)}
