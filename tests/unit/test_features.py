"""The model inputs are the same arrays whether rows arrive as pandas (training, evaluation) or as
arrow batches (batch inference): no training/serving skew."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlops_tasks import features as F
from mlops_tasks.config import FeatureSpec, TargetSpec

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
    strings = F.categorical_strings(from_arrow)
    assert strings.tolist() == F.categorical_strings(from_pandas).tolist()
    assert strings[:, 1].tolist() == ["AA", "", "B6", "UA", "AA"]
    for batch in data.to_batches():
        assert F.categorical_strings(F.onnx_inputs(batch, FEATURES)).shape == (batch.num_rows, 4)


@pytest.mark.parametrize("offset", [0, 3, 8, 13])
def test_numbers_with_missing_values_in_a_slice_of_a_batch_convert_as_pandas_converts_them(
    offset: int,
) -> None:
    # batch inference slices scoring batches out of bigger decoded batches: the slice's values and
    # validity bits start mid-buffer
    rng = np.random.default_rng(offset)
    floats = [None if rng.random() < 0.3 else float(v) for v in rng.normal(size=100)]
    ints = [None if rng.random() < 0.3 else int(v) for v in rng.integers(-(2**40), 2**40, size=100)]
    features = FeatureSpec(numeric=["f", "i"], categorical=[])
    batch = pa.record_batch({"f": pa.array(floats, pa.float64()), "i": pa.array(ints, pa.int64())})
    sliced = batch.slice(offset, 50)

    from_arrow = F.onnx_inputs(sliced, features)[F.NUMERIC_INPUT]

    np.testing.assert_array_equal(from_arrow, F.onnx_inputs(sliced.to_pandas(), features)[F.NUMERIC_INPUT])
    assert np.isnan(from_arrow[:, 0]).tolist() == [v is None for v in floats[offset : offset + 50]]


def test_categoricals_are_dictionary_encoded_so_strings_are_not_handled_per_row() -> None:
    rows = 10_000
    carriers = pa.array(["AA", "UA", None, "B6"] * (rows // 4)).dictionary_encode()
    inputs = F.onnx_inputs(pa.table({"carrier": carriers}), FeatureSpec(numeric=[], categorical=["carrier"]))

    values, codes = inputs[F.CATEGORICAL_VALUES_INPUT], inputs[F.CATEGORICAL_CODES_INPUT]
    assert values.tolist() == ["AA", "UA", "B6", ""]  # the dictionary, then "" for missing rows
    assert codes.dtype == np.int64 and codes.shape == (rows, 1)
    assert values[codes[:4, 0]].tolist() == ["AA", "UA", "", "B6"]


def test_each_column_indexes_its_own_slice_of_the_shared_values() -> None:
    frame = pd.DataFrame({"origin": ["JFK", "LGA", "JFK"], "dest": ["LGA", "LGA", None]})
    inputs = F.onnx_inputs(frame, FeatureSpec(numeric=[], categorical=["origin", "dest"]))

    assert F.categorical_strings(inputs).tolist() == [["JFK", "LGA"], ["LGA", "LGA"], ["JFK", ""]]
    origin_slice = {inputs[F.CATEGORICAL_VALUES_INPUT][c] for c in inputs[F.CATEGORICAL_CODES_INPUT][:, 0]}
    assert origin_slice == {"JFK", "LGA"}
    assert inputs[F.CATEGORICAL_CODES_INPUT][:, 1].min() > inputs[F.CATEGORICAL_CODES_INPUT][:, 0].max()


def test_take_rows_keeps_the_shared_values_and_selects_rows() -> None:
    inputs = F.onnx_inputs(table(), FEATURES)

    taken = F.take_rows(inputs, np.array([4, 0]))

    assert taken[F.CATEGORICAL_VALUES_INPUT] is inputs[F.CATEGORICAL_VALUES_INPUT]
    assert F.categorical_strings(taken).tolist() == F.categorical_strings(inputs)[[4, 0]].tolist()
    np.testing.assert_array_equal(taken[F.NUMERIC_INPUT], inputs[F.NUMERIC_INPUT][[4, 0]])


def test_a_contract_1_model_gets_the_categoricals_as_one_string_tensor() -> None:
    inputs = F.onnx_inputs(table(), FEATURES)

    legacy = F.session_inputs(inputs, legacy=True)

    assert set(legacy) == {F.NUMERIC_INPUT, F.LEGACY_CATEGORICAL_INPUT}
    assert legacy[F.LEGACY_CATEGORICAL_INPUT].tolist() == F.categorical_strings(inputs).tolist()
    assert F.session_inputs(inputs, legacy=False) is inputs


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


@pytest.mark.parametrize("as_arrow", [True, False], ids=["arrow", "pandas"])
def test_an_integer_category_gives_the_same_strings_whether_or_not_its_batch_holds_a_null(
    as_arrow: bool,
) -> None:
    # pandas makes an int64 column with a null float64: 5 must still be "5", or a vocabulary learned
    # on one batch sends the next batch's values out of vocabulary
    features = FeatureSpec(numeric=[], categorical=["station"])
    with_null = pa.table({"station": pa.array([5, 7, None], pa.int64())})
    without = pa.table({"station": pa.array([5, 7, 7], pa.int64())})

    def strings(data: pa.Table) -> list[str]:
        inputs = F.onnx_inputs(data if as_arrow else data.to_pandas(), features)
        return F.categorical_strings(inputs)[:, 0].tolist()

    assert strings(with_null) == ["5", "7", ""]
    assert strings(without) == ["5", "7", "7"]


def test_an_arrow_integer_category_keeps_its_exact_value() -> None:
    inputs = F.onnx_inputs(
        pa.table({"id": pa.array([2**60 + 1, None], pa.int64())}), FeatureSpec(numeric=[], categorical=["id"])
    )
    assert F.categorical_strings(inputs)[:, 0].tolist() == [str(2**60 + 1), ""]


def test_category_strings_render_whole_numbers_as_integers_and_everything_else_as_pandas_does() -> None:
    cases = [
        (pd.Series([1.0, 2.5, None, -0.0, float("inf")]), ["1", "2.5", None, "0", "inf"]),
        (pd.Series(np.array([0.1, 3.0], dtype=np.float32)), ["0.1", "3"]),
        (pd.Series([1, None], dtype="Int64"), ["1", None]),
        (pd.Series([5.0, 7.0, None]).astype("category"), ["5", "7", None]),
        (pd.Series([5, "5", 5.0, 2.5, None], dtype=object), ["5", "5", "5", "2.5", None]),
        (pd.Series([True, None], dtype="boolean"), ["True", None]),
        (pd.Series(["JFK", "", None], dtype="string"), ["JFK", "", None]),
    ]
    for values, expected in cases:
        strings = F.category_strings(values)
        assert isinstance(strings.dtype, pd.StringDtype)
        assert [None if pd.isna(s) else s for s in strings] == expected, values.dtype


def test_class_labels_of_a_0_1_column_do_not_depend_on_a_missing_label() -> None:
    # one missing label makes the parquet column float64: the classes must stay "0"/"1"
    target = TargetSpec(task="binary", column="y")
    as_int = F.derive_label(pd.DataFrame({"y": [0, 1, 1]}), target)
    as_float = F.derive_label(pd.DataFrame({"y": [0.0, 1.0, 1.0, np.nan]}), target)

    assert as_int.tolist() == ["0", "1", "1"]
    assert as_float[:3].tolist() == as_int.tolist()
    assert pd.isna(as_float[3])


@pytest.mark.parametrize("as_arrow", [True, False], ids=["arrow", "pandas"])
def test_infinite_numbers_are_missing_like_nan(as_arrow: bool) -> None:
    """The graph imputes only NaN; an inf (or a float64 beyond float32) would score NaN downstream."""
    rows = pd.DataFrame(
        {"x": [1.5, np.inf, -np.inf, 1e300, None], "k": pd.array([1, 2, 3, 4, None], "Int64")}
    )
    data = pa.Table.from_pandas(rows, preserve_index=False) if as_arrow else rows

    numeric = F.onnx_inputs(data, FeatureSpec(numeric=["x", "k"]))[F.NUMERIC_INPUT]

    assert numeric[:, 0].tolist()[0] == 1.5 and np.isnan(numeric[1:, 0]).all()
    assert numeric[:4, 1].tolist() == [1.0, 2.0, 3.0, 4.0] and np.isnan(numeric[4, 1])


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(pd.to_datetime(["2013-01-01", None])),
        pd.Series(pd.to_datetime(["2013-01-01", None], utc=True)),
        pd.Series(pd.to_timedelta(["1h", None])),
    ],
    ids=["datetime", "datetime-utc", "timedelta"],
)
@pytest.mark.parametrize("as_arrow", [True, False], ids=["arrow", "pandas"])
def test_a_date_or_duration_column_is_refused_as_a_numeric_feature(values: pd.Series, as_arrow: bool) -> None:
    """As numbers, a missing date (NaT) would be -9.2e18 rather than missing."""
    rows = pd.DataFrame({"t": values})
    data = pa.Table.from_pandas(rows, preserve_index=False) if as_arrow else rows
    with pytest.raises(
        F.FeatureError, match=r"training rows: column 't' holds .*not a numeric feature; derive"
    ):
        F.onnx_inputs(data, FeatureSpec(numeric=["t"]), "training rows")


def test_an_infinite_label_is_missing() -> None:
    frame = pd.DataFrame({"y": [20.0, np.inf, -np.inf, 1e39, 5.0]})
    late = F.derive_label(frame, TargetSpec(task="binary", column="y", positive_when={"greater_than": 15}))
    amount = F.derive_label(frame, TargetSpec(task="regression", column="y"))

    assert late.isna().tolist() == [False, True, True, False, False]  # 1e39 is a finite float64
    assert amount.isna().tolist() == [False, True, True, True, False]  # ... but inf as float32


@pytest.mark.parametrize("first_values", [120, 200])
def test_dictionary_categoricals_with_int8_indices_keep_every_column_s_values(first_values: int) -> None:
    """Parquet written from pandas Categoricals reads back with int8 indices: the next column's codes,
    offset past the first column's values, wrapped (another column's value, silently) or overflowed."""
    import io

    import pyarrow.parquet as pq

    frame = pd.DataFrame(
        {
            "a": pd.Categorical([f"v{i % first_values}" for i in range(400)]),
            "b": pd.Categorical([f"w{i % 20}" for i in range(400)]),
        }
    )
    data = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    batch = next(pq.ParquetFile(pa.BufferReader(data.getvalue())).iter_batches(columns=["a", "b"]))
    assert batch.schema.field("b").type.index_type == pa.int8()
    spec = FeatureSpec(numeric=[], categorical=["a", "b"])

    decoded = F.categorical_strings(F.onnx_inputs(batch, spec, "t"))

    assert (decoded == frame.astype(str).to_numpy()).all()
    assert (decoded == F.categorical_strings(F.onnx_inputs(frame, spec, "t"))).all()


def test_an_infinite_class_label_is_missing_not_a_class() -> None:
    """A corrupt inf became class "inf": binary training failed with "3 classes", multiclass learned it."""
    for task in ("binary", "multiclass"):
        label = F.derive_label(
            pd.DataFrame({"y": [0.0, 1.0, np.inf, -np.inf]}), TargetSpec(task=task, column="y")
        )
        assert label.tolist() == ["0", "1", pd.NA, pd.NA], task
