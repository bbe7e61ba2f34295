"""The one contract between curated data, the trained model, its ONNX export and every scorer.

ONNX model contract (written by :mod:`mlops_tasks.export`, read by evaluation, inference, drift):

* input ``numeric``: float32 ``[N, len(features.numeric)]`` in config order; NaN means missing
  (imputation and scaling happen inside the graph);
* input ``categorical``: string ``[N, len(features.categorical)]`` in config order; a value the
  training data did not have (or missing, encoded as "") maps to the out-of-vocabulary slot;
* an input is absent when its feature list is empty;
* output ``score``: float32 ``[N]``: P(positive) for binary, the prediction for regression, the
  probability of the predicted class for multiclass; multiclass also outputs ``probabilities``
  float32 ``[N, C]``;
* metadata_props: ``mlops_tasks.features`` (JSON {"numeric": [...], "categorical": [...]}),
  ``mlops_tasks.task``, ``mlops_tasks.classes`` (JSON list, classification only).

Because preprocessing lives in the graph and the inputs are raw columns, serving cannot skew from
training: the same function below builds the inputs everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from mlops_tasks.config import FeatureSpec, TargetSpec

NUMERIC_INPUT = "numeric"
CATEGORICAL_INPUT = "categorical"
SCORE_OUTPUT = "score"
PROBABILITIES_OUTPUT = "probabilities"
META_FEATURES = "mlops_tasks.features"
META_TASK = "mlops_tasks.task"
META_CLASSES = "mlops_tasks.classes"


class FeatureError(ValueError):
    """Input rows do not carry the columns/types the model needs; the message names them."""


def onnx_inputs(
    frame: pd.DataFrame | pa.Table | pa.RecordBatch, features: FeatureSpec, source: str = "input"
) -> dict[str, np.ndarray]:
    """Raw feature columns of ``frame`` as the model's ONNX inputs (see module docstring).

    Arrow tables/batches (what batch inference streams) convert column by column without a pandas
    frame: numbers cast in C++, dictionary-encoded strings decoded once per distinct value. Any
    other column type goes through the pandas rules, so both kinds of input give equal arrays.
    """
    names = list(frame.column_names) if hasattr(frame, "column_names") else list(frame.columns)
    missing = [c for c in features.all if c not in names]
    if missing:
        raise FeatureError(f"{source}: feature columns {missing} are missing (has {names})")
    rows = len(frame)
    inputs: dict[str, np.ndarray] = {}
    if features.numeric:
        numeric = np.empty((rows, len(features.numeric)), dtype=np.float32)
        for i, col in enumerate(features.numeric):
            numeric[:, i] = _numeric(_column(frame, col), col, source)
        inputs[NUMERIC_INPUT] = numeric
    if features.categorical:
        cats = np.empty((rows, len(features.categorical)), dtype=object)
        for i, col in enumerate(features.categorical):
            cats[:, i] = _categorical(_column(frame, col))
        inputs[CATEGORICAL_INPUT] = cats
    return inputs


def _column(frame: pd.DataFrame | pa.Table | pa.RecordBatch, col: str) -> pd.Series | list[pa.Array]:
    """A pandas column, or an arrow column as its chunks (chunks may carry different dictionaries)."""
    if not hasattr(frame, "column_names"):
        return frame[col]
    values = frame.column(col)
    return list(values.chunks) if hasattr(values, "chunks") else [values]


def _numeric(values: pd.Series | list[pa.Array], col: str, source: str) -> np.ndarray:
    import pandas as pd

    if not isinstance(values, pd.Series):
        import pyarrow as pa
        import pyarrow.compute as pc

        if all(
            pa.types.is_integer(c.type) or pa.types.is_floating(c.type) or pa.types.is_boolean(c.type)
            for c in values
        ):
            # safe=False: large ints round to the nearest float32, as numpy's astype does.
            return _joined(
                [pc.cast(c, pa.float32(), safe=False).to_numpy(zero_copy_only=False) for c in values],
                np.float32,
            )
        values = pa.chunked_array(values).to_pandas().rename(col)
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        converted = pd.to_numeric(values, errors="coerce")
        bad = converted.isna() & values.notna()
        if bad.any():
            example = values[bad].iloc[0]
            raise FeatureError(
                f"{source}: column '{col}' must be numeric; {int(bad.sum())} value(s) are not, e.g. {example!r}"
            )
        values = converted
    return values.to_numpy(dtype=np.float32, na_value=np.nan)


def _categorical(values: pd.Series | list[pa.Array]) -> np.ndarray:
    import pandas as pd

    if not isinstance(values, pd.Series):
        import pyarrow as pa

        if all(_arrow_strings(c.type) for c in values):
            return _joined([_arrow_labels(c) for c in values], object)
        values = pa.chunked_array(values).to_pandas()
    return values.astype("string").fillna("").to_numpy(dtype=object)


def _arrow_strings(kind: pa.DataType) -> bool:
    import pyarrow as pa

    strings = (pa.types.is_string, pa.types.is_large_string)
    return any(is_(kind) for is_ in strings) or (
        pa.types.is_dictionary(kind) and any(is_(kind.value_type) for is_ in strings)
    )


def _arrow_labels(chunk: pa.Array) -> np.ndarray:
    """Strings of a string or dictionary chunk as an object array, missing -> "". A dictionary's
    values become Python strings once each and rows share them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(chunk.type):
        return chunk.fill_null("").to_numpy(zero_copy_only=False)
    labels = np.append(chunk.dictionary.fill_null("").to_numpy(zero_copy_only=False).astype(object), "")
    codes = pc.fill_null(chunk.indices.cast(pa.int64()), -1).to_numpy()  # -1: the "" appended last
    return labels[codes]


def _joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def derive_label(frame: pd.DataFrame, target: TargetSpec) -> pd.Series:
    """The label per the config: a rule on a numeric column (binary) or the column itself."""
    import pandas as pd

    raw = frame[target.column]
    if target.positive_when is not None:
        values = pd.to_numeric(raw, errors="coerce")
        label = (values > target.positive_when.greater_than).astype("float32")
        return label.where(values.notna())
    if target.task == "regression":
        return pd.to_numeric(raw, errors="coerce").astype("float32")
    return raw.astype("string")
