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


def onnx_inputs(frame: pd.DataFrame, features: FeatureSpec, source: str = "input") -> dict[str, np.ndarray]:
    """Raw feature columns of ``frame`` as the model's ONNX inputs (see module docstring)."""
    import pandas as pd

    missing = [c for c in features.all if c not in frame.columns]
    if missing:
        raise FeatureError(f"{source}: feature columns {missing} are missing (has {list(frame.columns)})")
    inputs: dict[str, np.ndarray] = {}
    if features.numeric:
        numeric = np.empty((len(frame), len(features.numeric)), dtype=np.float32)
        for i, col in enumerate(features.numeric):
            values = frame[col]
            if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
                converted = pd.to_numeric(values, errors="coerce")
                bad = converted.isna() & values.notna()
                if bad.any():
                    example = values[bad].iloc[0]
                    raise FeatureError(
                        f"{source}: column '{col}' must be numeric; {int(bad.sum())} value(s) are not, "
                        f"e.g. {example!r}"
                    )
                values = converted
            numeric[:, i] = values.to_numpy(dtype=np.float32, na_value=np.nan)
        inputs[NUMERIC_INPUT] = numeric
    if features.categorical:
        cats = np.empty((len(frame), len(features.categorical)), dtype=object)
        for i, col in enumerate(features.categorical):
            cats[:, i] = frame[col].astype("string").fillna("").to_numpy(dtype=object)
        inputs[CATEGORICAL_INPUT] = cats
    return inputs


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
