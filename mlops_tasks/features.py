"""The one contract between curated data, the trained model, its ONNX export and every scorer.

ONNX model contract 2 (written by :mod:`mlops_tasks.export`, read by evaluation, inference, drift):

* input ``numeric``: float32 ``[N, len(features.numeric)]`` in config order; NaN means missing
  (imputation and scaling happen inside the graph); +-inf is missing as well and given as NaN;
* categorical columns arrive dictionary-encoded, as arrow and parquet already hold them: input
  ``categorical_values`` string ``[D]`` lists the raw values, and input ``categorical_codes`` int64
  ``[N, len(features.categorical)]`` (config order) says which of them each row has, so row ``i``'s
  value of column ``j`` is ``categorical_values[categorical_codes[i, j]]``. A value the training
  data did not have (or missing, encoded as "") maps to the out-of-vocabulary slot. The graph looks
  the ``D`` values up in its vocabularies (``D`` is the number of distinct values in the batch, not
  ``N``), so the lookup stays in the graph while no string is handled per row. Values are
  rendered by :func:`category_strings`: a whole number is "5" whether its column holds int64 or
  float64 (pandas makes an integer column with a null float64), so a value's string never depends
  on whether its batch holds a null;
* an input is absent when its feature list is empty;
* output ``score``: float32 ``[N]``: P(positive) for binary, the prediction for regression, the
  probability of the predicted class for multiclass; multiclass also outputs ``probabilities``
  float32 ``[N, C]``;
* metadata_props: ``mlops_tasks.features`` (JSON {"numeric": [...], "categorical": [...]}),
  ``mlops_tasks.task``, ``mlops_tasks.classes`` (JSON list, classification only),
  ``mlops_tasks.contract`` ("2").

Contract 1 (models exported by mlops_tasks 0.1) took the categoricals as one string tensor
``categorical`` ``[N, m]``: converting N x m Python strings into onnxruntime strings and looking
each up made scoring 1.6-1.75x slower than contract 2 (docs/benchmarks.md). Such models still score:
:func:`session_inputs` hands them the strings they expect.

Because preprocessing lives in the graph and the inputs are raw columns, serving cannot skew from
training: the same function below builds the inputs everywhere.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mlops_tasks.errors import DataError

if TYPE_CHECKING:
    import onnxruntime as ort
    import pandas as pd
    import pyarrow as pa

    from mlops_tasks.config import FeatureSpec, TargetSpec

NUMERIC_INPUT = "numeric"
CATEGORICAL_VALUES_INPUT = "categorical_values"
CATEGORICAL_CODES_INPUT = "categorical_codes"
LEGACY_CATEGORICAL_INPUT = "categorical"  # contract 1: [N, m] strings
SCORE_OUTPUT = "score"
PROBABILITIES_OUTPUT = "probabilities"
META_FEATURES = "mlops_tasks.features"
META_TASK = "mlops_tasks.task"
META_CLASSES = "mlops_tasks.classes"
META_CONTRACT = "mlops_tasks.contract"
CONTRACT_VERSION = "2"


class FeatureError(DataError):
    """Input rows do not carry the columns/types the model needs; the message names them."""


def onnx_inputs(
    frame: pd.DataFrame | pa.Table | pa.RecordBatch, features: FeatureSpec, source: str = "input"
) -> dict[str, np.ndarray]:
    """Raw feature columns of ``frame`` as the model's ONNX inputs (see module docstring).

    Arrow tables/batches (what batch inference streams) convert column by column without a pandas
    frame: numbers cast in C++, dictionary-encoded strings keep their dictionary (one Python string
    per distinct value). Any other column type goes through the pandas rules; both kinds of input
    give equal numbers and equal strings (:func:`categorical_strings`).
    """
    arrow = hasattr(frame, "schema")  # asked once: arrow's attribute lookups cost microseconds
    names = frame.schema.names if arrow else list(frame.columns)
    missing = [c for c in features.all if c not in names]
    if missing:
        raise FeatureError(f"{source}: feature columns {missing} are missing (has {names})")
    rows = len(frame)
    inputs: dict[str, np.ndarray] = {}
    if features.numeric:
        numeric = np.empty((rows, len(features.numeric)), dtype=np.float32)
        for i, col in enumerate(features.numeric):
            _fill_numeric(numeric[:, i], _column(frame, col, arrow), col, source)
        # +-inf (a broken sensor, a float64 beyond float32) is missing too: the graph imputes only NaN,
        # and one inf in training would make a feature's mean inf and every scaled row NaN.
        infinite = np.isinf(numeric)
        if infinite.any():
            numeric[infinite] = np.nan
        inputs[NUMERIC_INPUT] = numeric
    if features.categorical:
        codes = np.empty((rows, len(features.categorical)), dtype=np.int64)
        values: list[np.ndarray] = []
        offset = 0
        for i, col in enumerate(features.categorical):
            column_values, codes[:, i] = _categorical(_column(frame, col, arrow), offset)
            values.append(column_values)
            offset += len(column_values)
        inputs[CATEGORICAL_VALUES_INPUT] = np.concatenate(values)
        inputs[CATEGORICAL_CODES_INPUT] = codes
    return inputs


def categorical_strings(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The categorical inputs decoded: object array ``[N, m]`` of each row's raw value ("" = missing)."""
    return inputs[CATEGORICAL_VALUES_INPUT][inputs[CATEGORICAL_CODES_INPUT]]


def take_rows(inputs: dict[str, np.ndarray], rows: slice | np.ndarray) -> dict[str, np.ndarray]:
    """``inputs`` of only the selected rows (the dictionary of values is shared, not row-aligned)."""
    return {name: arr if name == CATEGORICAL_VALUES_INPUT else arr[rows] for name, arr in inputs.items()}


def is_legacy_session(session: ort.InferenceSession) -> bool:
    """Whether an onnxruntime session holds a contract-1 model (categoricals as [N, m] strings)."""
    return any(i.name == LEGACY_CATEGORICAL_INPUT for i in session.get_inputs())


def session_inputs(inputs: dict[str, np.ndarray], legacy: bool) -> dict[str, np.ndarray]:
    """``inputs`` in the form the model takes: as they are (contract 2), or for a contract-1 model
    (``legacy``, see :func:`is_legacy_session`) with the categoricals as one string tensor."""
    if not legacy or CATEGORICAL_CODES_INPUT not in inputs:
        return inputs
    converted = {
        k: v for k, v in inputs.items() if k not in (CATEGORICAL_VALUES_INPUT, CATEGORICAL_CODES_INPUT)
    }
    converted[LEGACY_CATEGORICAL_INPUT] = categorical_strings(inputs)
    return converted


def _column(
    frame: pd.DataFrame | pa.Table | pa.RecordBatch, col: str, arrow: bool
) -> pd.Series | list[pa.Array]:
    """A pandas column, or an arrow column as its chunks (chunks may carry different dictionaries)."""
    if not arrow:
        return frame[col]
    import pyarrow as pa

    values = frame.column(col)
    return values.chunks if isinstance(values, pa.ChunkedArray) else [values]


def _fill_numeric(out: np.ndarray, values: pd.Series | list[pa.Array], col: str, source: str) -> None:
    """Write one numeric feature into ``out`` (its float32 column of the input), missing as NaN.

    Arrow integers and floats convert chunk by chunk straight into ``out``, rounded on assignment
    as astype rounds; anything else goes through :func:`_numeric`."""
    import pandas as pd

    if not isinstance(values, pd.Series):
        import pyarrow as pa

        if all(pa.types.is_integer(c.type) or pa.types.is_floating(c.type) for c in values):
            start = 0
            for chunk in values:
                _fill_arrow_numbers(out[start : start + len(chunk)], chunk)
                start += len(chunk)
            return
    out[:] = _numeric(values, col, source)


def _fill_arrow_numbers(out: np.ndarray, chunk: pa.Array) -> None:
    """An arrow integer/float array into ``out``: its values buffer converts in place (no copy for
    a chunk without nulls), then the null slots become NaN. Arrow's own conversion would first copy
    the chunk to float64 with NaN filled in: a quarter of the time of building the inputs."""
    if not chunk.null_count:
        out[:] = chunk.to_numpy()
        return
    validity, data = chunk.buffers()[:2]
    n, offset = len(chunk), chunk.offset
    with np.errstate(all="ignore"):  # null slots hold arbitrary bits until overwritten below
        out[:] = np.frombuffer(data, dtype=chunk.type.to_pandas_dtype(), count=offset + n)[offset:]
    bits = np.frombuffer(validity, np.uint8, count=(offset + n + 7) // 8)[offset // 8 :]
    valid = np.unpackbits(bits, bitorder="little")[offset % 8 : offset % 8 + n]
    out[valid == 0] = np.nan


def _numeric(values: pd.Series | list[pa.Array], col: str, source: str) -> np.ndarray:
    import pandas as pd

    if not isinstance(values, pd.Series):
        import pyarrow as pa
        import pyarrow.compute as pc

        if all(pa.types.is_boolean(c.type) for c in values):
            return _joined(
                [pc.cast(c, pa.float32()).to_numpy(zero_copy_only=False) for c in values], np.float32
            )
        values = pa.chunked_array(values).to_pandas().rename(col)
    if values.dtype.kind in "mM":
        # As numbers they are nanoseconds, and a missing one (NaT) the smallest int64, not NaN.
        raise FeatureError(
            f"{source}: column '{col}' holds {values.dtype} values (dates or durations), which are not a "
            "numeric feature; derive a number from it in the data (e.g. the hour, or days since an event) "
            "and list that under features.numeric instead"
        )
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        converted = pd.to_numeric(values, errors="coerce")
        bad = converted.isna() & values.notna()
        if bad.any():
            example = values[bad].iloc[0]
            raise FeatureError(
                f"{source}: column '{col}' must be numeric; {int(bad.sum())} value(s) are not, e.g. {example!r}"
            )
        values = converted
    with np.errstate(over="ignore"):  # beyond float32 -> inf, which onnx_inputs makes missing
        return values.to_numpy(dtype=np.float32, na_value=np.nan)


def _categorical(values: pd.Series | list[pa.Array], offset: int) -> tuple[np.ndarray, np.ndarray]:
    """One categorical column as (its distinct raw values, each row's index into them + ``offset``).

    The values always end with "", which missing rows point at; values may repeat (one dictionary
    per arrow chunk), which the graph's lookup does not mind."""
    import pandas as pd

    if not isinstance(values, pd.Series):
        import pyarrow as pa

        if all(_arrow_encodable(c.type) for c in values):
            return _arrow_dictionary(values, offset)
        values = pa.chunked_array(values).to_pandas()
    # Factorised first, so only the distinct values are rendered as strings.
    codes, uniques = pd.factorize(values)
    rendered = _rendered(uniques)
    codes = np.where(codes < 0, len(rendered), codes)  # missing -> the trailing ""
    return np.append(rendered, ""), codes.astype(np.int64) + offset


def category_strings(values: pd.Series) -> pd.Series:
    """``values`` as the strings a categorical feature, a class label or a drift category compares
    (pandas "string" dtype, missing stays missing).

    Whole numbers render as integers ("5", never "5.0") whatever the container: an int64 column
    with one null arrives as float64 (pandas) and must still give the strings it gives without the
    null, or vocabularies learned on one batch send another batch's values out of vocabulary. Every
    other value renders as pandas renders it (``astype("string")``). This is the one rule training
    inputs, ONNX inputs, labels and drift share."""
    import pandas as pd

    codes, uniques = pd.factorize(values)
    rendered = np.append(_rendered(uniques), None)  # code -1 (missing) -> the trailing None
    return pd.Series(rendered[codes], index=values.index, name=values.name, dtype="string")


def _rendered(uniques: pd.Index) -> np.ndarray:
    """Distinct non-missing values as an object array of canonical strings (see
    :func:`category_strings`)."""
    import pandas as pd

    values = pd.Series(uniques)  # its own dtype: float32 0.1 renders "0.1", as pandas renders it
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = pd.Series(np.asarray(uniques))  # the categories' values, in their dtype
    strings = values.astype("string").to_numpy(dtype=object)
    if values.dtype.kind == "f":
        numbers = values.to_numpy(dtype=np.float64)
        whole = np.flatnonzero(np.isfinite(numbers) & (numbers == np.floor(numbers)))
        strings[whole] = [str(int(numbers[i])) for i in whole]
    elif values.dtype == object:
        for i, v in enumerate(values):
            if isinstance(v, float | np.floating) and math.isfinite(v) and v == math.floor(v):
                strings[i] = str(int(v))
    return strings


def _arrow_encodable(kind: pa.DataType) -> bool:
    """Arrow strings and integers (or dictionaries of them): dictionary-encoded in arrow, so only
    the distinct values become Python strings, and integers keep their exact value."""
    import pyarrow as pa

    plain = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)
    return any(is_(kind) for is_ in plain) or (
        pa.types.is_dictionary(kind) and any(is_(kind.value_type) for is_ in plain)
    )


def _arrow_dictionary(chunks: list[pa.Array], offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary-encode string/integer chunks (a dictionary chunk keeps its own dictionary): the
    values of every chunk's dictionary, then "", and each row's index into them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    missing: list[np.ndarray] = []
    first_row = 0
    for chunk in chunks:
        encoded = chunk if pa.types.is_dictionary(chunk.type) else pc.dictionary_encode(chunk)
        dictionary = encoded.dictionary
        if pa.types.is_integer(dictionary.type):
            values.append(category_strings(dictionary.to_pandas()).fillna("").to_numpy(dtype=object))
        else:
            if dictionary.null_count:
                dictionary = dictionary.fill_null("")
            values.append(dictionary.to_numpy(zero_copy_only=False))
        indices = encoded.indices
        if indices.null_count:  # missing rows: index 0 for now, pointed at the trailing "" below
            missing.append(np.flatnonzero(indices.is_null().to_numpy(zero_copy_only=False)) + first_row)
            indices = indices.fill_null(0)
        # int64 first: parquet written from a pandas Categorical keeps int8 indices, which the
        # offset would wrap (another column's values) or overflow.
        codes.append(np.add(indices.to_numpy(), offset, dtype=np.int64))
        offset += len(dictionary)
        first_row += len(indices)
    row_codes = _joined(codes, np.int64).astype(np.int64, copy=False)
    for rows in missing:
        row_codes[rows] = offset
    return np.concatenate([*values, np.array([""], dtype=object)]), row_codes


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def derive_label(frame: pd.DataFrame, target: TargetSpec) -> pd.Series:
    """The label per the config: a rule on a numeric column (binary), the column as numbers
    (regression) or as class strings (:func:`category_strings`: a 0/1 column stored as float64
    because one label is missing still gives classes "0"/"1"). A number that is +-inf (also
    beyond float32, for regression) is missing, as in the features."""
    import pandas as pd

    raw = frame[target.column]
    if target.positive_when is not None:
        values = pd.to_numeric(raw, errors="coerce")
        label = (values > target.positive_when.greater_than).astype("float32")
        return label.where(values.notna() & ~values.isin([np.inf, -np.inf]))  # +-inf: missing, as features
    if target.task == "regression":
        with np.errstate(over="ignore"):  # beyond float32 -> inf -> missing
            values = pd.to_numeric(raw, errors="coerce").astype("float32")
        return values.where(~values.isin([np.inf, -np.inf]))
    if raw.dtype.kind == "f":  # an infinite class is a corrupt value, missing as above, not class "inf"
        raw = raw.where(~raw.isin([np.inf, -np.inf]))
    return category_strings(raw)
