"""The model inputs are the same arrays whether rows arrive as pandas (training, evaluation) or as
arrow batches (batch inference): no training/serving skew."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_tasks import features as F
from mlops_tasks.config import FeatureSpec

FEATURES = FeatureSpec(numeric=["i", "f", "b", "big", "s_num", "d"], categorical=["s", "cat", "n", "empty"])


def table() -> pa.Table:
    """Every column type curated data can carry, with missing values, in two chunks."""
    first = pa.table(
        {
            "i": pa.array([1, None, 3], pa.int64()),
            "f": pa.array([0.5, float("nan"), None], pa.float64()),
            "b": pa.array([True, False, None]),
            "big": pa.array([2**40 + 1, -(2**31), 16_777_217], pa.int64()),
            "s_num": pa.array(["1.5", None, "2"]),
            "d": pa.array([None, None, None], pa.null()),
            "s": pa.array(["JFK", None, ""]),
            "cat": pa.array(["AA", None, "B6"]).dictionary_encode(),
            "n": pa.array([7, None, 9], pa.int32()),
            "empty": pa.array([None, None, None], pa.string()),
        }
    )
    second = first.slice(0, 2).replace_schema_metadata(None)
    # The second chunk's dictionary differs (another part of the day): decoded per chunk.
    second = second.set_column(7, "cat", pa.chunked_array([pa.array(["UA", "AA"]).dictionary_encode()]))
    return pa.concat_tables([first, second])


def test_arrow_and_pandas_inputs_are_identical() -> None:
    data = table()
    from_arrow = F.onnx_inputs(data, FEATURES)
    from_pandas = F.onnx_inputs(data.to_pandas(), FEATURES)
    np.testing.assert_array_equal(from_arrow[F.NUMERIC_INPUT], from_pandas[F.NUMERIC_INPUT])
    assert from_arrow[F.NUMERIC_INPUT].dtype == np.float32
    assert from_arrow[F.CATEGORICAL_INPUT].tolist() == from_pandas[F.CATEGORICAL_INPUT].tolist()
    assert from_arrow[F.CATEGORICAL_INPUT][:, 1].tolist() == ["AA", "", "B6", "UA", "AA"]
    for batch in data.to_batches():
        assert F.onnx_inputs(batch, FEATURES)[F.CATEGORICAL_INPUT].shape == (batch.num_rows, 4)


@pytest.mark.parametrize("as_arrow", [True, False], ids=["arrow", "pandas"])
def test_a_non_numeric_value_in_a_numeric_feature_names_source_and_column(as_arrow: bool) -> None:
    rows = pd.DataFrame({"i": ["1", "n/a"], "s": ["a", "b"]})
    data = pa.Table.from_pandas(rows) if as_arrow else rows
    with pytest.raises(
        F.FeatureError, match=r"part-00001.parquet: column 'i' must be numeric; 1 value\(s\).*'n/a'"
    ):
        F.onnx_inputs(data, FeatureSpec(numeric=["i"], categorical=["s"]), "part-00001.parquet")


def test_missing_feature_columns_are_named() -> None:
    with pytest.raises(F.FeatureError, match=r"curated: feature columns \['s'\] are missing"):
        F.onnx_inputs(pa.table({"i": [1]}), FeatureSpec(numeric=["i"], categorical=["s"]), "curated")
