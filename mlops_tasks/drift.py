"""Drift monitoring: is the data the champion scores today still like the data it was trained on?

Three layers, cheapest first, all pure functions of their inputs:

* :func:`compare` - per-column statistics on seeded samples of both sides (numpy/scipy, seconds on
  millions of rows). This is what the retrain decision is made from.
* :func:`evidently_report` - an Evidently 0.7 ``DataDriftPreset`` report on the *same* samples with
  the *same* per-column tests and thresholds, for humans (HTML) and the record (JSON summary). It is
  never the only source of truth because Evidently on millions of rows is slow and memory hungry,
  and it refuses all-empty columns.
* :func:`decide` - the retrain policy (drift share, critical columns, prediction drift, live metric
  drop, new data volume), with a cooldown kept in a small JSON state (:func:`next_state`): the days
  a retrain was requested for, and by which run, so that one day's drift is one retrain however
  often that day is checked. :func:`run_check` decides and stores the state in one conditional
  write, so concurrent checks see each other's triggers.

Statistical test per column (Evidently's defaults, reproduced so that both layers agree), chosen
once from the decision sample (``drift.sample_rows``) and reused by the report, whose smaller sample
could otherwise fall on the other side of the 1000-values switch for a sparse column:

* more than 1000 non-missing reference values (the normal case; Evidently's own switch), and for a
  categorical column more than 30 values per distinct value on the smaller side: numeric columns
  use the Wasserstein distance normalised by the reference standard deviation, categorical columns
  (and numeric columns with at most 5 distinct values, which are compared as categories) use the
  Jensen-Shannon distance. Distances, unlike p-values, do not turn every tiny difference into
  "drift" when samples are large. Drift when the distance >= its threshold. A categorical column of
  a small current window gets the p-value test instead: the Jensen-Shannon distance between two
  samples of one distribution shrinks only with their size, and 1,000 rows over 100 categories read
  as drifted every time. A numeric column keeps its distance however small the current window: the
  sampling noise of a distance in reference standard deviations is a few hundredths at a few
  hundred rows, while a p-value test would judge one day's rows as if they were independent - all
  of a day's flights share its weather, so the first check after a promotion, which sees only the
  day the new champion scored, found temperature "drifted" in every month of the example.
* otherwise: Kolmogorov-Smirnov (numeric), chi-squared (categorical, > 2
  values) or a two-proportion z-test (2 values); drift when the p-value is below
  ``drift.column_p_value`` (KS: at or below, as in Evidently). The chi-squared test is the
  two-sample one (a test of independence on both sides' counts), not Evidently's goodness of fit
  against the reference's counts, which mistakes the reference's own noise for drift; the report runs
  the same test (registered with Evidently as ``chisquare_two_sample``).

Sampling: when a side has more than ``drift.sample_rows`` rows, ``sample_rows`` positions are drawn
uniformly without replacement by ``numpy.random.default_rng(drift.seed)`` and kept in input order,
so the same input frames give the same sample, statistics and decision on every run. Values are
typed (numeric coerced, non-numeric strings rejected) on the sample only: the validation stage owns
row-level type rules. :func:`sample_parts` draws the very same positions while reading stored parts
one at a time, so the monitor never holds a whole window: its memory grows with the sample, not with
the data. The Evidently report renders a smaller seeded sample (``drift.report_rows``): its cost
grows with rows (plots), the decision's statistics are computed on ``sample_rows``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

from mlops_tasks.errors import DataError
from mlops_tasks.features import SCORE_OUTPUT, category_strings
from mlops_tasks.storage import CorruptObjectError, partition_prefix, sha256_bytes

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.storage import ObjectStore

log = logging.getLogger(__name__)

PREDICTION_COLUMN = SCORE_OUTPUT
# Evidently's switch from p-value tests to distances, and its "few values: compare as categories".
SMALL_SAMPLE_ROWS = 1000
FEW_VALUES = 5
# A distance between category shares needs this many values per category on the smaller side: the
# Jensen-Shannon distance of two samples of one distribution is about sqrt(categories / rows) (100
# airports in 1,000 rows: 0.12, every time, over the default threshold of 0.1; at 30 rows per
# category its 95th percentile stays under 0.08).
DISTANCE_ROWS_PER_VALUE = 30
# Triggers remembered in the state; only the ones inside the cooldown matter, the rest is history.
MAX_REMEMBERED_TRIGGERS = 32
_HTML = "text/html; charset=utf-8"


class DriftInputError(DataError):
    """The frames handed to drift monitoring cannot be compared; the message names frame and column."""


# -- input preparation ----------------------------------------------------------------------------


def _monitored_kinds(cfg: PipelineConfig) -> dict[str, str]:
    """Column -> "numeric" | "categorical": the features, then critical columns that are not features."""
    kinds = dict.fromkeys(cfg.features.numeric, "numeric") | dict.fromkeys(
        cfg.features.categorical, "categorical"
    )
    types = {c.name: c.type for c in cfg.data.all_columns()}
    for col in cfg.drift.critical_columns:
        if col not in kinds:
            kinds[col] = "numeric" if types.get(col) in ("int", "float") else "categorical"
    return kinds


def monitored_columns(cfg: PipelineConfig) -> list[str]:
    """The columns drift monitoring reads: the features, then critical columns that are not features."""
    return list(_monitored_kinds(cfg))


@dataclass(frozen=True)
class _Prepared:
    """Sampled, typed frames (monitored columns + the score column when scores were given)."""

    reference: pd.DataFrame
    current: pd.DataFrame
    kinds: dict[str, str]
    monitored: list[str]
    rows: dict[str, int]
    names: dict[str, str]
    has_scores: bool


def _sample_positions(n: int, limit: int, seed: int) -> np.ndarray | None:
    if n <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


@dataclass(frozen=True)
class Part:
    """One stored piece of a side (e.g. a curated parquet part): its row count and how to read it."""

    rows: int
    load: Callable[[], pd.DataFrame]
    name: str


def sample_parts(parts: Sequence[Part], limit: int, seed: int) -> tuple[pd.DataFrame, int]:
    """The rows :func:`compare` would sample from the parts' concatenation (same seed, same positions),
    read one part at a time and only for parts the sample touches; returns (sample, total rows).

    Pass the total as ``reference_rows``/``current_rows`` so decisions see the real row counts.
    """
    total = sum(part.rows for part in parts)
    positions = _sample_positions(total, limit, seed)
    taken, offset = [], 0
    for part in parts:
        local = None
        if positions is not None:
            lo, hi = np.searchsorted(positions, [offset, offset + part.rows])
            local = positions[lo:hi] - offset
        offset += part.rows
        if local is not None and not len(local):
            continue
        frame = part.load()
        if len(frame) != part.rows:
            raise DriftInputError(
                f"{part.name}: has {len(frame)} rows but its manifest/record says {part.rows}; "
                "the data changed while the monitor read it, re-run the check"
            )
        taken.append(frame if local is None else frame.iloc[local])
    sample = pd.concat(taken, ignore_index=True) if taken else pd.DataFrame()
    return sample, total


def _typed(values: pd.Series, kind: str, source: str) -> pd.Series:
    """Numeric -> float64 with NaN for missing/inf; categorical -> str values with NaN for missing,
    rendered as the model's inputs render them (:func:`features.category_strings`), so an integer
    column compares equal whether or not one side's sample holds a null."""
    if kind == "numeric":
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            converted = pd.to_numeric(values, errors="coerce")
            bad = converted.isna() & values.notna()
            if bad.any():
                raise DriftInputError(
                    f"{source}: column '{values.name}' must be numeric; {int(bad.sum())} sampled value(s) "
                    f"are not, e.g. {values[bad].iloc[0]!r}"
                )
            values = converted
        out = values.astype("float64")
        return out.where(np.isfinite(out))
    strings = category_strings(values)
    return strings.astype(object).where(strings.notna(), np.nan)


Scores = Sequence[float] | np.ndarray | pd.Series


class Sides(TypedDict, total=False):
    """What :func:`compare`, :func:`evidently_report` and :func:`run_check` may be told about each side.

    ``*_scores``: the model's score per row (prediction drift; both or neither); ``*_name``: how errors
    and the result name the frames (e.g. their S3 keys); ``*_rows``: the row count a pre-sampled frame
    (:func:`sample_parts`) was drawn from.
    """

    reference_scores: Scores | None
    current_scores: Scores | None
    reference_name: str
    current_name: str
    reference_rows: int | None
    current_rows: int | None


def _prepare(
    cfg: PipelineConfig,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    limit: int,
    *,
    reference_scores: Scores | None = None,
    current_scores: Scores | None = None,
    reference_name: str = "reference",
    current_name: str = "current",
    reference_rows: int | None = None,
    current_rows: int | None = None,
) -> _Prepared:
    kinds = _monitored_kinds(cfg)
    names = {"reference": reference_name, "current": current_name}
    columns = list(kinds)
    missing_ref = [c for c in columns if c not in reference.columns]
    missing_cur = [c for c in columns if c not in current.columns]
    if missing_ref or missing_cur:
        parts = [
            f"missing from {names[side]} ({side}): {cols}"
            for side, cols in (("reference", missing_ref), ("current", missing_cur))
            if cols
        ]
        raise DriftInputError(
            "drift: the monitored columns (features + drift.critical_columns) must exist on both sides; "
            + "; ".join(parts)
        )
    if (reference_scores is None) != (current_scores is None):
        raise DriftInputError(
            "drift: prediction drift needs both reference_scores and current_scores (got only one)"
        )
    has_scores = reference_scores is not None
    if has_scores and PREDICTION_COLUMN in kinds:
        raise DriftInputError(
            f"drift: '{PREDICTION_COLUMN}' is both a monitored column and the prediction score column"
        )
    seed = cfg.drift.seed
    sides = {}
    for side, frame, scores in (
        ("reference", reference, reference_scores),
        ("current", current, current_scores),
    ):
        positions = _sample_positions(len(frame), limit, seed)
        picked = frame if positions is None else frame.iloc[positions]  # never copies all rows
        typed = {c: _typed(picked[c], kinds[c], names[side]).to_numpy() for c in columns}
        if scores is not None:
            values = np.asarray(scores, dtype="float64")
            if values.shape != (len(frame),):
                raise DriftInputError(
                    f"{names[side]}: {side}_scores has shape {values.shape}, expected ({len(frame)},) "
                    "- one score per row"
                )
            values = values if positions is None else values[positions]
            typed[PREDICTION_COLUMN] = np.where(np.isfinite(values), values, np.nan)
        sides[side] = pd.DataFrame(typed)
    return _Prepared(
        reference=sides["reference"],
        current=sides["current"],
        kinds=kinds | ({PREDICTION_COLUMN: "numeric"} if has_scores else {}),
        monitored=columns,
        rows={
            "reference": reference_rows or len(reference),
            "current": current_rows or len(current),
            "reference_compared": len(sides["reference"]),
            "current_compared": len(sides["current"]),
        },
        names=names,
        has_scores=has_scores,
    )


# -- statistics -----------------------------------------------------------------------------------


CHISQUARE = "chisquare_two_sample"  # see _chisquare


@dataclass(frozen=True)
class _Plan:
    kind: str  # the kind the column is compared as ("categorical" for few-valued numerics)
    stat_test: str  # Evidently's registry name of the test
    threshold: float


def _plan(cfg: PipelineConfig, kind: str, ref: pd.Series, cur: pd.Series) -> _Plan:
    """Evidently's default test choice for this column (judged on the reference), categorical columns
    of a small current window excepted (see module docstring), with our thresholds."""
    n_values = pd.concat([ref, cur], ignore_index=True).nunique()
    kind = "categorical" if n_values <= FEW_VALUES else kind
    if len(ref) > SMALL_SAMPLE_ROWS:
        if kind == "numeric":
            return _Plan(kind, "wasserstein", cfg.drift.wasserstein_threshold)
        if min(len(ref), len(cur)) > DISTANCE_ROWS_PER_VALUE * n_values:
            return _Plan(kind, "jensenshannon", cfg.drift.jensenshannon_threshold)
    if kind == "numeric":
        return _Plan(kind, "ks", cfg.drift.column_p_value)
    return _Plan(kind, CHISQUARE if n_values > 2 else "z", cfg.drift.column_p_value)


def _shares(ref: pd.Series, cur: pd.Series) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Value counts of both sides over the union of their values, in a deterministic order."""
    rc, cc = ref.value_counts(), cur.value_counts()
    keys = sorted(set(rc.index) | set(cc.index), key=lambda v: (str(type(v)), v))
    return (
        keys,
        rc.reindex(keys, fill_value=0).to_numpy(float),
        cc.reindex(keys, fill_value=0).to_numpy(float),
    )


def _wasserstein(ref: pd.Series, cur: pd.Series) -> tuple[float, None]:
    """The distance in reference standard deviations (at least 0.001), computed on values divided by
    the largest magnitude: the same number, but the variance of values past ~1e154 overflowed to
    inf, which read as a distance of 0 ("not drifted") however far the values moved."""
    r, c = ref.to_numpy(dtype=float), cur.to_numpy(dtype=float)
    scale = max(float(np.abs(r).max(initial=0.0)), float(np.abs(c).max(initial=0.0))) or 1.0
    norm = max(float(np.std(r / scale)), 0.001 / scale)
    return float(stats.wasserstein_distance(r / scale, c / scale)) / norm, None


def _jensenshannon(ref: pd.Series, cur: pd.Series) -> tuple[float, None]:
    _, rc, cc = _shares(ref, cur)
    return float(distance.jensenshannon(rc / len(ref), cc / len(cur))), None


def _ks(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    result = stats.ks_2samp(ref.to_numpy(), cur.to_numpy())
    return float(result.statistic), float(result.pvalue)


def _chisquare(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    """Chi-squared test of independence of side and value on the 2 x k table of counts: both sides
    are samples. Evidently's "chisquare" tests the current counts against the reference's as if
    those were the true shares, so the reference's own noise reads as drift: with 800 reference
    rows it flagged identical distributions in 40-100% of draws instead of ``column_p_value``'s 5%."""
    keys, rc, cc = _shares(ref, cur)
    if len(keys) < 2:
        return 0.0, 1.0
    result = stats.chi2_contingency(np.vstack([rc, cc]), correction=False)
    return float(result.statistic), float(result.pvalue)


@functools.cache
def _register_chisquare_with_evidently() -> None:
    """Evidently's report runs :func:`_chisquare` under its name (:data:`CHISQUARE`), so the report's
    verdicts are the decision's."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def test(ref: pd.Series, cur: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
        p_value = _chisquare(ref, cur)[1]
        return p_value, p_value < threshold

    register_stattest(
        StatTest(
            name=CHISQUARE,
            display_name="chi-square two-sample p_value",
            allowed_feature_types=[ColumnType.Categorical, ColumnType.Numerical],
        ),
        default_impl=test,
    )


def _z(ref: pd.Series, cur: pd.Series) -> tuple[float, float]:
    keys, rc, cc = _shares(ref, cur)
    if len(keys) == 1:
        return 0.0, 1.0
    p1, p2 = 1 - rc[0] / len(ref), 1 - cc[0] / len(cur)
    pooled = (p1 * len(ref) + p2 * len(cur)) / (len(ref) + len(cur))
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / len(ref) + 1 / len(cur)))
    return z, float(2 * (1 - stats.norm.cdf(abs(z))))


_TESTS: dict[str, Callable[[pd.Series, pd.Series], tuple[float, float | None]]] = {
    "wasserstein": _wasserstein,
    "jensenshannon": _jensenshannon,
    "ks": _ks,
    CHISQUARE: _chisquare,
    "z": _z,
}


def _drifted(plan: _Plan, statistic: float, p_value: float | None) -> bool:
    """Evidently's rule per test: distance >= threshold; KS p <= threshold; other p-values < threshold."""
    if p_value is None:
        return statistic >= plan.threshold
    return p_value <= plan.threshold if plan.stat_test == "ks" else p_value < plan.threshold


def _num(value: float | None) -> float | None:
    """Rounded so JSON bytes are stable; non-finite values (e.g. chi2 with a new category) -> None."""
    return round(float(value), 6) if value is not None and math.isfinite(value) else None


def _untestable(kind: str, ref: pd.Series, cur: pd.Series, names: dict[str, str]) -> dict | None:
    """The entry of a column without values on a side (None when both have values): never tested.
    Values in the current window only is drift. None in the window is a data-quality problem when
    the reference had them (``missing_values``, see :func:`_compare_column`), not drift: retrained
    on it, the model would learn the broken feed. On neither side, nothing changed (e.g. a column
    the source never fills), which must not request a retrain every cooldown."""
    empty = [
        f"{side} ({names[side]})" for side, values in (("reference", ref), ("current", cur)) if values.empty
    ]
    if not empty:
        return None
    reason = f"all values are missing in {' and '.join(empty)}"
    return {
        "kind": kind,
        "stat_test": None,
        "statistic": None,
        "p_value": None,
        "threshold": None,
        "drifted": ref.empty and not cur.empty,
        "reason": reason if len(empty) == 1 else f"{reason}: nothing to compare, not drift",
    }


def _missing_share(values: pd.Series) -> float | None:
    return _num(values.isna().mean()) if len(values) else None


def _compare_column(
    cfg: PipelineConfig, kind: str, ref: pd.Series, cur: pd.Series, names: dict[str, str]
) -> dict:
    # How much is missing is compared apart from the values present: a feed that stops filling a
    # column leaves the rest of its values looking like the reference, so the drift tests below
    # never see it (90% of a column gone read as no drift, 100% as drift and a retrain).
    missing = {"reference": _missing_share(ref), "current": _missing_share(cur)}
    quality = {
        "missing": missing,
        "missing_values": missing["reference"] is not None
        and missing["current"] is not None
        and missing["current"] - missing["reference"] > cfg.drift.max_missing_share_increase,
    }
    ref, cur = ref.dropna(), cur.dropna()
    untestable = _untestable(kind, ref, cur, names)
    if untestable:
        return untestable | quality
    plan = _plan(cfg, kind, ref, cur)
    statistic, p_value = _TESTS[plan.stat_test](ref, cur)
    return {
        "kind": plan.kind,
        "stat_test": plan.stat_test,
        "statistic": _num(statistic),
        "p_value": _num(p_value),
        "threshold": plan.threshold,
        "drifted": bool(_drifted(plan, statistic, p_value)),
        "reason": None,
        **quality,
    }


def _summary(
    cfg: PipelineConfig, data: _Prepared, columns: dict[str, dict], engine: str, limit: int
) -> dict[str, Any]:
    monitored = data.monitored
    drifted = [c for c in monitored if columns[c]["drifted"]]
    return {
        "engine": engine,
        "columns": {c: columns[c] for c in monitored},
        "share_drifted": _num(len(drifted) / len(monitored)),
        "drifted_columns": drifted,
        "drifted_critical": [c for c in cfg.drift.critical_columns if columns[c]["drifted"]],
        # the score too: a champion that stops giving finite scores is announced, not retrained on
        "missing_values_columns": [
            c for c in [*monitored, PREDICTION_COLUMN] if c in columns and columns[c].get("missing_values")
        ],
        "prediction_drift": columns.get(PREDICTION_COLUMN) if data.has_scores else None,
        "rows": data.rows,
        "sources": data.names,
        "sample": {"rows": limit, "seed": cfg.drift.seed},
    }


def compare(
    cfg: PipelineConfig, reference: pd.DataFrame, current: pd.DataFrame, **sides: Unpack[Sides]
) -> dict[str, Any]:
    """Fast per-column drift of ``current`` against ``reference`` on seeded samples (module docstring).

    Returns ``columns`` ({column: {kind, stat_test, statistic, p_value, threshold, drifted, reason,
    missing: {reference, current} (shares of missing values), missing_values}}), ``share_drifted``,
    ``drifted_columns``, ``drifted_critical``, ``missing_values_columns`` (the monitored columns, and
    the score, whose missing share rose by more than ``drift.max_missing_share_increase``), ``prediction_drift`` (the
    score column's entry, or None without scores), ``rows`` (input and compared counts), ``sources``
    and ``sample``. A column with values in the current window only is reported as drifted; with none
    there, or on neither side, as not drifted; each with the reason. ``sides``: see :class:`Sides`.
    """
    limit = cfg.drift.sample_rows
    data = _prepare(cfg, reference, current, limit, **sides)
    columns = {
        col: _compare_column(cfg, kind, data.reference[col], data.current[col], data.names)
        for col, kind in data.kinds.items()
    }
    return _summary(cfg, data, columns, "fast", limit)


# -- Evidently report -----------------------------------------------------------------------------

# Evidently renders random ids (uuid4 hex, uuid7) into the HTML; renumbering them in order of
# appearance makes the bytes a function of the data only. Links between widgets are preserved. Only
# the ids Evidently gives its widgets and metrics are renumbered (where they are declared, and every
# place they appear): a category value or column name of the same shape (an md5, a uuid) is data, as
# are the constants of the page's script libraries.
_RANDOM_ID = re.compile(
    r"(?<![0-9a-f])(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})(?![0-9a-f])"
)
_DECLARED_ID = re.compile(rf'"id": "({_RANDOM_ID.pattern})"|\bmetric_({_RANDOM_ID.pattern})')


def _stable_ids(html: str) -> str:
    declared = dict.fromkeys(m[1] or m[2] for m in _DECLARED_ID.finditer(html))
    numbers = {old: f"{i:032x}" for i, old in enumerate(declared)}
    return _RANDOM_ID.sub(lambda m: numbers.get(m[0], m[0]), html)


def _with_decision(
    html: str, comparison: dict[str, Any], cfg: PipelineConfig, day: dt.date, shown: int
) -> str:
    """The page with the comparison the monitor decides on stated at its top. Evidently's own
    verdicts below come from a smaller sample and count only the columns it could test, so near a
    threshold they may differ; the page must not leave a reader to guess which one acted."""
    drifted, monitored = comparison["drifted_columns"], comparison["columns"]
    prediction = comparison.get("prediction_drift")

    def names(columns: list[str]) -> str:
        return escape(", ".join(columns)) or "none"

    lines = [
        f"<b>Drift decision for {day.isoformat()}</b> (what the monitor acts on): "
        f"{len(drifted)} of {len(monitored)} monitored columns drifted (share "
        f"{comparison['share_drifted']:.3f}; drift.drift_share_threshold "
        f"{cfg.drift.drift_share_threshold}): {names(drifted)}. Critical columns drifted: "
        f"{names(comparison['drifted_critical'])}."
        + (f" Prediction drift: {'yes' if prediction['drifted'] else 'no'}." if prediction else "")
        + (
            f" Columns far more often missing than in the reference (a data-quality finding, not "
            f"drift): {names(comparison['missing_values_columns'])}."
            if comparison.get("missing_values_columns")
            else ""
        ),
        f"Decided on samples of up to {cfg.drift.sample_rows:,} rows per side; the Evidently report "
        f"below renders up to {shown:,} rows per side with the same tests and thresholds, and its "
        "dataset share counts only the columns it could test, so its verdicts may differ near a "
        "threshold. The drift.json next to this page holds both.",
    ]
    banner = (
        '<div id="mlops-drift-decision" style="font-family:sans-serif;padding:12px 16px;margin:8px;'
        'border:2px solid #2b6cb0;background:#ebf4ff">'
        + "".join(f"<p style='margin:4px 0'>{line}</p>" for line in lines)
        + "</div>"
    )
    head, body, rest = html.partition("<body>")
    return head + body + banner + rest if body else banner + html


# Evidently inlines the report's data as raw JSON in a <script> element: a "</script>" or "<!--" in a
# column name (or value) would end or derail that element, breaking the page and turning the rest of
# the name into markup. Outside its strings that JSON holds no "<" and no line break, so the element
# ends at the first line break + "</script>", and "<" -> "\u003c" changes only how strings are spelled.
_DATA_SCRIPT = re.compile(r"(<script>\n    var metric_\w+ = )(.*?)(\n</script>)", re.DOTALL)


def _escape_data(html: str) -> str:
    return _DATA_SCRIPT.sub(lambda m: m[1] + m[2].replace("<", "\\u003c") + m[3], html, count=1)


def evidently_report(
    cfg: PipelineConfig,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    day: dt.date,
    comparison: dict[str, Any] | None = None,
    **sides: Unpack[Sides],
) -> tuple[str, dict[str, Any]]:
    """Evidently 0.7 ``DataDriftPreset`` (+ ``ValueDrift`` on the score) on seeded samples of
    ``drift.report_rows`` rows, with the per-column tests and thresholds of ``comparison`` (the
    :func:`compare` result of the same inputs; computed here when not given).

    Returns the standalone HTML (ids renumbered, so equal inputs give equal bytes) and a summary with
    the same keys as :func:`compare`'s result (``engine`` = "evidently"), so :func:`decide` accepts
    either. Columns the comparison could not test keep its entry; so do columns without values on a
    side of the report's smaller sample, which cannot go through Evidently (with the reason).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    _register_chisquare_with_evidently()
    comparison = comparison or compare(cfg, reference, current, **sides)
    decided = {**comparison["columns"], PREDICTION_COLUMN: comparison["prediction_drift"]}
    limit = min(cfg.drift.report_rows, cfg.drift.sample_rows)
    data = _prepare(cfg, reference, current, limit, **sides)
    unknown = [c for c in data.kinds if not decided.get(c)]
    if unknown:
        raise DriftInputError(
            f"drift: the comparison has no entry for {unknown}; pass compare()'s result for the same inputs"
        )
    plans: dict[str, _Plan] = {}
    columns: dict[str, dict] = {}
    for col, kind in data.kinds.items():
        entry = decided[col]
        if entry["stat_test"] is None:
            columns[col] = entry
            continue
        ref, cur = data.reference[col].dropna(), data.current[col].dropna()
        untestable = _untestable(kind, ref, cur, data.names)
        if untestable:
            # Tested on the comparison's larger sample: its result stands (recomputed here, a few
            # values missing from the smaller one would read as drift the decision never saw).
            columns[col] = {**entry, "reason": f"not in this report: {untestable['reason']} of its sample"}
        else:
            plans[col] = _Plan(entry["kind"], entry["stat_test"], entry["threshold"])
    if not plans:
        raise DriftInputError(
            f"drift: no monitored column has values in both {data.names['reference']} and "
            f"{data.names['current']}; nothing for Evidently to compare"
        )
    features = [c for c in data.monitored if c in plans]
    metrics: list[Any] = []
    if features:
        metrics.append(
            DataDriftPreset(
                columns=features,
                drift_share=cfg.drift.drift_share_threshold,
                per_column_method={c: plans[c].stat_test for c in features},
                per_column_threshold={c: plans[c].threshold for c in features},
            )
        )
    if data.has_scores and PREDICTION_COLUMN in plans:
        plan = plans[PREDICTION_COLUMN]
        metrics.append(ValueDrift(column=PREDICTION_COLUMN, method=plan.stat_test, threshold=plan.threshold))
    definition = DataDefinition(
        numerical_columns=[c for c in plans if plans[c].kind == "numeric"],
        categorical_columns=[c for c in plans if plans[c].kind == "categorical"],
    )
    used = list(plans)
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(data.current[used], data_definition=definition),
        Dataset.from_pandas(data.reference[used], data_definition=definition),
        timestamp=dt.datetime.combine(day, dt.time()),
    )
    result = snapshot.dict()
    scores = {
        m["config"]["column"]: m["value"]
        for m in result["metrics"]
        if m["config"]["type"].endswith(":ValueDrift")
    }
    failed = {
        t["metric_config"]["params"]["column"]
        for t in result["tests"]
        if t["metric_config"]["params"]["type"].endswith(":ValueDrift") and t["status"] == "FAIL"
    }
    for col, plan in plans.items():
        distance_test = plan.stat_test in ("wasserstein", "jensenshannon")
        columns[col] = {
            "kind": plan.kind,
            "stat_test": plan.stat_test,
            "statistic": _num(scores[col]) if distance_test else None,
            "p_value": None if distance_test else _num(scores[col]),
            "threshold": plan.threshold,
            "drifted": col in failed,
            "reason": None,
            # the decision's own figures: missing shares are not something the report's sample tests
            **{k: decided[col][k] for k in ("missing", "missing_values") if k in decided[col]},
        }
    html = _stable_ids(_escape_data(snapshot.get_html_str(as_iframe=False)))
    return _with_decision(html, comparison, cfg, day, limit), _summary(cfg, data, columns, "evidently", limit)


def retrain_page_name(page_sha256: str) -> str:
    """The name a retrain's report page is kept under, beside the day's drift.html (by its bytes)."""
    return f"retrain-{page_sha256[:16]}.html"


# -- policy ---------------------------------------------------------------------------------------


def _triggers(state: dict | None) -> list[dict[str, Any]]:
    """The state's triggers as ``{"day", "run_id"}`` (plus ``"sent": true`` once the retrain event
    went out). States written before run ids were recorded list bare days: read as triggers of an
    unknown run, which no run can claim as its own."""
    return [
        t if isinstance(t, dict) else {"day": t, "run_id": None} for t in (state or {}).get("triggers", [])
    ]


def _own(trigger: dict[str, Any], check_run_id: str | None) -> bool:
    """Whether ``trigger`` is this run's earlier decision that a retry may make again: without a run
    id, none is; nor one whose retrain event was sent (:func:`mark_sent`): a cleared task of a run
    that already requested its retrain keeps its run id, and must not request a second one."""
    return check_run_id is not None and trigger["run_id"] == check_run_id and not trigger.get("sent")


def mark_sent(state: dict | None, day: dt.date, check_run_id: str | None) -> dict[str, Any]:
    """``state`` with the trigger of ``day`` by ``check_run_id`` marked as sent: its retrain event went
    out, so from then on it blocks that run too (see :func:`_own`)."""
    new = dict(state or {})
    new["triggers"] = [
        {**t, "sent": True} if (t["day"], t["run_id"]) == (day.isoformat(), check_run_id) else t
        for t in _triggers(state)
    ]
    return new


def forget_unsent(state: dict | None, run_id: str) -> dict[str, Any]:
    """``state`` without the triggers of run ``run_id`` whose retrain event never went out: that run
    ended without sending it, and they would hold the cooldown for a retrain that never happens."""
    new = dict(state or {})
    new["triggers"] = [t for t in _triggers(state) if t["run_id"] != run_id or t.get("sent")]
    return new


def has_trigger(state: dict | None, day: dt.date, run_id: str) -> bool:
    """Whether run ``run_id``'s trigger of ``day`` is in ``state``."""
    return any((t["day"], t["run_id"]) == (day.isoformat(), run_id) for t in _triggers(state))


def _blocking_trigger(
    state: dict | None, day: dt.date, cooldown_days: int, check_run_id: str | None
) -> dict[str, Any] | None:
    """Another run's trigger that makes a retrain for ``day`` redundant: one on ``day`` itself (any
    second check of a day - a schedule plus the predictions event, a re-scored day, a new run - must
    not train again), else the latest less than ``cooldown_days`` away, before or after: checks may
    run out of order (backfills), and a retrain requested for 07-10 already covers a later check of
    07-09. This run's own trigger never blocks, so a retry reproduces its decision."""
    others = [t for t in _triggers(state) if not _own(t, check_run_id)]
    same_day = [t for t in others if t["day"] == day.isoformat()]
    if same_day:  # whatever the cooldown, even 0 days
        return same_day[0]
    near = [t for t in others if abs((day - dt.date.fromisoformat(t["day"])).days) < cooldown_days]
    return max(near, key=lambda t: t["day"], default=None)


def _describe(column: str, entry: dict) -> str:
    if entry["stat_test"] is None:
        return f"'{column}' ({entry['reason']})"
    value = entry["statistic"] if entry["p_value"] is None else entry["p_value"]
    label = "distance" if entry["p_value"] is None else "p-value"
    return f"'{column}' ({entry['stat_test']} {label} {value} vs threshold {entry['threshold']})"


def _is_day(value: Any) -> bool:
    """An ISO day as :func:`next_state` writes it (days are compared as strings)."""
    try:
        return dt.date.fromisoformat(value).isoformat() == value
    except (TypeError, ValueError):
        return False


def _state_problem(state: Any) -> str | None:
    """What makes a stored cooldown state unreadable as :func:`next_state` writes it (or with the
    bare trigger days of older states); None when it is readable."""
    if not isinstance(state, dict):
        return f"is not a JSON object but {json.dumps(state)[:80]}"
    triggers = state.get("triggers", [])
    if not isinstance(triggers, list):
        return f"has 'triggers' {json.dumps(triggers)[:80]} where a list is expected"
    for trigger in triggers:
        if not _is_day(trigger) and not (
            isinstance(trigger, dict)
            and _is_day(trigger.get("day"))
            and "run_id" in trigger
            and isinstance(trigger["run_id"], str | None)
        ):
            return (
                f"has trigger {json.dumps(trigger)[:80]} which is not "
                '{"day": "YYYY-MM-DD", "run_id": <string or null>}'
            )
    last = state.get("last_check")
    if last is not None and not (isinstance(last, dict) and _is_day(last.get("day"))):
        return f'has \'last_check\' {json.dumps(last)[:80]} without a "day": "YYYY-MM-DD"'
    return None


def update_state(store: ObjectStore, state_key: str, change: Callable[[dict | None], dict]) -> dict:
    """``store.update_json`` of the cooldown state at ``state_key``; a state that is not JSON or not
    as :func:`next_state` writes it is a :class:`DriftInputError` naming it, and is kept as it is."""

    def error(problem: str) -> DriftInputError:
        return DriftInputError(
            f"{store.uri(state_key)}: the drift cooldown state {problem}. It records the retrains already "
            "requested, so the check stops instead of overwriting it, and requests nothing. Repair it, or "
            "delete it to forget those retrains (a day already requested may then request one again)."
        )

    def checked(state: Any) -> dict:
        if state is not None and (problem := _state_problem(state)):
            raise error(problem)
        return change(state)

    try:
        return store.update_json(state_key, checked)
    except CorruptObjectError:
        raise error("is not valid JSON") from None


def _too_few_rows(cfg: PipelineConfig, comparison: dict[str, Any]) -> list[str]:
    """Why the comparison's sides are too small to decide on (``drift.min_rows``); empty if they are not."""
    rows, min_rows = comparison["rows"], cfg.drift.min_rows
    return [
        f"{side} has {rows[side]} rows, fewer than drift.min_rows={min_rows}"
        for side in ("reference", "current")
        if rows[side] < min_rows
    ]


def decide(
    cfg: PipelineConfig,
    comparison: dict[str, Any],
    *,
    day: dt.date,
    state: dict | None,
    check_run_id: str | None = None,
    new_rows_since_training: int | None = None,
    live_metric_drop: float | None = None,
) -> dict[str, Any]:
    """The retrain policy on a :func:`compare` (or :func:`evidently_report` summary) result.

    Retrain when the drifted share >= ``drift.drift_share_threshold``, a critical column drifted, the
    score distribution drifted, the live primary metric dropped by more than ``max_metric_drop``
    (``live_metric_drop`` = champion's metric minus live metric, oriented so that positive is worse),
    or ``new_rows_since_training`` reached ``retrain_after_new_rows``. Fewer than ``drift.min_rows``
    rows on a side: "insufficient_data", no trigger. Monitored columns missing much more often than in
    the reference are listed (``missing_values_columns``, described in ``data_quality``) whatever the
    status; without a reason to retrain, the status is "data_quality" instead of "no_drift".
    Reasons to retrain but another run's trigger (per
    ``state``) on ``day``: "already_requested"; on another day less than ``drift.cooldown_days``
    before or after ``day``: "cooldown" (``cooldown_until``); both name the trigger's run
    (``requested_by``, None if unknown), report the reasons and do not trigger. ``check_run_id`` identifies
    the run deciding (e.g. the DAG run id): only the same run deciding again (a retry) may
    re-request its day's retrain; None never matches a recorded trigger.
    """
    drift = cfg.drift
    rows = comparison["rows"]
    prediction = comparison["prediction_drift"]
    base = {
        "day": day.isoformat(),
        "share_drifted": comparison["share_drifted"],
        "drifted_columns": comparison["drifted_columns"],
        "drifted_critical": comparison["drifted_critical"],
        "prediction_drift": bool(prediction and prediction["drifted"]),
        "rows": {"reference": rows["reference"], "current": rows["current"]},
    }
    too_few = _too_few_rows(cfg, comparison)
    if too_few:
        log.warning("drift check of %s: insufficient data, no decision: %s", day, "; ".join(too_few))
        # No drift figures either: an empty side makes every column "drifted" (the comparison in
        # drift.json keeps them), and a dashboard or status line would show 100% drift for no data.
        undecided = {
            "share_drifted": None,
            "drifted_columns": [],
            "drifted_critical": [],
            "prediction_drift": False,
            "missing_values_columns": [],
            "data_quality": [],
        }
        return {**base, **undecided, "retrain": False, "status": "insufficient_data", "reasons": too_few}

    columns = comparison["columns"]
    # Reported, alerted, never a retrain by itself: a feed that broke is fixed at the feed. Real data
    # has seasons of missing values too (the example's pressure: 12% missing in winter, 57% on a July
    # day), so it does not hold back the retrain that drift asks for either.
    broken = comparison.get("missing_values_columns") or []
    shares = {c: (columns.get(c) or prediction)["missing"] for c in broken}
    base["missing_values_columns"] = broken
    base["data_quality"] = [
        f"column {c}: {shares[c]['current']:.0%} of its values missing, against "
        f"{shares[c]['reference']:.0%} in the reference (drift.max_missing_share_increase "
        f"{drift.max_missing_share_increase:.0%})"
        for c in broken
    ]
    if broken:
        log.warning("drift check of %s: data quality: %s", day, "; ".join(base["data_quality"]))
    reasons = []
    if comparison["share_drifted"] >= drift.drift_share_threshold:
        reasons.append(
            f"{comparison['share_drifted']:.0%} of monitored columns drifted "
            f"(drift.drift_share_threshold {drift.drift_share_threshold:.0%}): "
            + ", ".join(comparison["drifted_columns"])
        )
    reasons += [f"critical column {_describe(c, columns[c])} drifted" for c in comparison["drifted_critical"]]
    if base["prediction_drift"]:
        reasons.append(f"prediction drift: {_describe(PREDICTION_COLUMN, prediction)}")
    max_drop = cfg.drift.max_metric_drop
    if live_metric_drop is not None and live_metric_drop > max_drop:
        reasons.append(f"live {cfg.gate.primary_metric} dropped by {live_metric_drop:.4f} (> {max_drop})")
    enough_rows = cfg.drift.retrain_after_new_rows
    if (
        new_rows_since_training is not None
        and enough_rows is not None
        and new_rows_since_training >= enough_rows
    ):
        reasons.append(f"{new_rows_since_training} new validated rows since training (>= {enough_rows})")

    blocker = _blocking_trigger(state, day, drift.cooldown_days, check_run_id) if reasons else None
    if not reasons:
        quiet = "data_quality" if broken else "no_drift"
        decision = {**base, "retrain": False, "status": quiet, "reasons": base["data_quality"]}
    elif blocker is not None and blocker["day"] == day.isoformat():
        decision = {
            **base,
            "retrain": False,
            "status": "already_requested",
            "reasons": reasons,
            "requested_by": blocker["run_id"],
        }
    elif blocker is not None:
        until = dt.date.fromisoformat(blocker["day"]) + dt.timedelta(days=drift.cooldown_days)
        decision = {
            **base,
            "retrain": False,
            "status": "cooldown",
            "reasons": reasons,
            "cooldown_until": until.isoformat(),
            "requested_by": blocker["run_id"],
        }
    else:
        decision = {**base, "retrain": True, "status": "drift", "reasons": reasons}
    log.info(
        "drift check of %s: %s, retrain=%s; %s",
        day,
        decision["status"],
        decision["retrain"],
        "; ".join(reasons) or "no reason to retrain",
    )
    return decision


def next_state(
    state: dict | None, decision: dict[str, Any], day: dt.date, *, check_run_id: str | None = None
) -> dict[str, Any]:
    """The state after ``decision`` on ``day`` by run ``check_run_id``: the triggers (``{"day",
    "run_id"}``) and the latest check. A trigger stays once written - a later check of its day ending
    in no_drift or insufficient_data must not lift the cooldown of a retrain already requested -
    except that the same run deciding again (a retry) replaces its own, until its retrain event was
    sent (:func:`mark_sent`). Deterministic, so storing it is idempotent."""

    def order(trigger: dict[str, Any]) -> tuple[str, str]:
        return trigger["day"], trigger["run_id"] or ""

    others = sorted((t for t in _triggers(state) if not _own(t, check_run_id)), key=order)
    added = [{"day": day.isoformat(), "run_id": check_run_id}] if decision["retrain"] else []
    # The oldest others make room; the trigger written now stays whatever its day: a backfill's,
    # dropped in the write that adds it, would let another check of its day request it again.
    room = MAX_REMEMBERED_TRIGGERS - len(added)
    triggers = sorted(others[max(len(others) - room, 0) :] + added, key=order)
    check = {"day": day.isoformat(), "status": decision["status"], "retrain": decision["retrain"]}
    previous = (state or {}).get("last_check")
    if previous and previous["day"] > check["day"]:
        check = previous
    return {"triggers": triggers, "last_check": check}


# -- the whole check ------------------------------------------------------------------------------


def run_check(
    store: ObjectStore,
    cfg: PipelineConfig,
    day: dt.date,
    *,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    state_key: str,
    check_run_id: str | None = None,
    new_rows_since_training: int | None = None,
    live_metric_drop: float | None = None,
    **sides: Unpack[Sides],
) -> dict[str, Any]:
    """compare + Evidently report + decide for ``day``: stores the cooldown state (:func:`next_state`)
    at ``state_key`` and writes ``drift.json`` (decision, comparison, Evidently summary) and
    ``drift.html`` under ``reports/drift/date=<day>/``, with one PUT each.

    Returns the decision plus ``report_uri`` and ``html_uri`` (None when there was too little data to
    decide: no Evidently report is rendered then). ``drift.html`` and ``drift.json`` are the day's
    latest check, which a later check of the day replaces; a check that requests a retrain also keeps
    its page under ``retrain-<sha256 of the page>.html``, and ``html_uri`` is that page: the retrain
    event and the task's link keep pointing at the report that justified it.

    The decision is made on the state in the same conditional write that stores the next state
    (:meth:`ObjectStore.update_json`): when another check stores a trigger between this one's read
    and write, this one decides again on the new state, so a nearby or the same day's retrain is not
    requested twice ("cooldown", "already_requested"). The comparison and the Evidently report do
    not depend on the state and are made before it is read; ``drift.json`` records the decision
    committed. A check failing before the state is written has requested nothing; a retry of one
    failing after (same ``check_run_id``) replaces its own trigger and reaches the same decision.
    """
    comparison = compare(cfg, reference, current, **sides)
    prefix = partition_prefix(cfg.prefix, "reports/drift", day)
    html_uri = summary = page = page_sha256 = None
    if not _too_few_rows(cfg, comparison):
        html, summary = evidently_report(cfg, reference, current, day=day, comparison=comparison, **sides)
        page = html.encode()
        page_sha256 = sha256_bytes(page)
        # Tagged with its checksum, which drift.json records: a later check of the day that dies
        # between its two writes replaces drift.html, and status must not show its page beside
        # this check's decision (status.last_drift).
        html_uri = store.put_bytes(prefix + "drift.html", page, _HTML, metadata={"sha256": page_sha256})
    else:  # an earlier check's report of the day would be linked as this check's
        store.delete([prefix + "drift.html"])
    decision: dict[str, Any] = {}

    def decide_on(state: dict | None) -> dict[str, Any]:
        nonlocal decision
        decision = decide(
            cfg,
            comparison,
            day=day,
            state=state,
            check_run_id=check_run_id,
            new_rows_since_training=new_rows_since_training,
            live_metric_drop=live_metric_drop,
        )
        return next_state(state, decision, day, check_run_id=check_run_id)

    update_state(store, state_key, decide_on)
    report_uri = store.put_json(
        prefix + "drift.json",
        {
            "decision": decision,
            "comparison": comparison,
            "evidently": summary,
            "report_html_sha256": page_sha256,
        },
    )
    if decision["retrain"] and page_sha256 is not None:
        # Written last: a check killed before it has sent no retrain event, and its retry writes it.
        # Named by its bytes, so a retry deciding the same writes the same key.
        kept = retrain_page_name(page_sha256)
        html_uri = store.put_bytes(prefix + kept, page, _HTML)
    return {**decision, "report_uri": report_uri, "html_uri": html_uri}
