"""Validate: the staged partition of a day -> curated (good rows) + quarantine (bad rows) + reports.

The rules come from the config: column presence and type, not-null for ``nullable: false``,
between for ``min``/``max``, in-set for ``allowed``, compound uniqueness of ``data.key``, the table
row count, "no ingest error", and every ``validation.expectations`` entry. They are Great
Expectations 1.x expectation objects; GX (ephemeral context, pandas, result format SUMMARY) gives
the official verdict and the report figures.

GX's SUMMARY result says *how many* rows break a rule, not *which*. Asking GX for every unexpected
index costs memory proportional to the bad rows on every rule, so the row split is computed from the
same expectation objects with vectorised pandas that mirrors GX's own pandas metrics (nulls are not
checked by value rules; duplicated keys mark every copy). The report shows both counts per rule
(they must agree; a test holds them to it). An extra expectation type without a pandas mirror here
is asked for its unexpected indices (result format COMPLETE), so every row rule splits rows.

Row rules quarantine rows; table rules (row count, a missing column, a wrong type, aggregate
expectations) fail the gate. The gate also fails when the bad share exceeds
``validation.max_bad_row_fraction``: quarantined rows, malformed CSV lines (and side-table rows
without a complete join key, which ingest keeps with them) and the lines of rejected files, out of all
of them plus the good rows. On failure quarantine and reports are written, curated
is not, and a curated partition an earlier run published for the day is withdrawn, so no day is both
curated and quarantined.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_tasks.config import PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.ingestion import LINEAGE_COLUMNS, rejected_copy_name, to_parquet_bytes
from mlops_tasks.storage import (
    CURATED_FILE_ROWS,
    CURATED_ROW_GROUP_ROWS,
    MANIFEST_NAME,
    PARQUET_COMPRESSION,
    ObjectNotFoundError,
    ObjectStore,
    partition_prefix,
    publish_manifest,
    read_part,
    sha256_bytes,
    write_part,
)

if TYPE_CHECKING:
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.expectations.expectation import Expectation

REASONS_COLUMN = "_reasons"
INGEST_ERROR = "_ingest_error"
EXAMPLES_PER_RULE = 5
# Files (and columns) named per rule in the gate's message; the report lists them all.
NAMED_IN_MESSAGE = 3
UNJOINABLE = "side-table row(s) without a complete join key"
# GX's pandas type names for the config types (what ``ExpectColumnValuesToBeOfType`` compares).
GX_TYPES = {
    "int": "int64",
    "float": "float64",
    "string": "str",
    "category": "str",
    "bool": "bool",
    "timestamp": "Timestamp",
}
# How often validation starts again when concurrent ingest runs replace the day's staging.
STAGING_ATTEMPTS = 3
# Rules that only read column names and dtypes run on a zero-row copy of the frame.
SCHEMA = ("<schema>",)
# Expectations that look at a column's dtype, not at its values: table rules even if map-shaped.
_TYPE_EXPECTATIONS = {"expect_column_values_to_be_of_type", "expect_column_values_to_be_in_type_list"}
# Expectation kwargs that name columns of the batch.
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list", "column_set")


class StagedDataMissingError(FileNotFoundError):
    """Validation was asked for a day that ingest has not staged."""


class StagingReplacedError(DataError):
    """A staging part vanished while validation read it, or staging kept being replaced before
    validation could publish (concurrent ingest runs of the day)."""


class _StagingMoved(Exception):
    """Staging was published again after validation read it: what it validated is not the day's
    current data, and publishing it would put older content over a newer validation's."""

    def __init__(self, newer: dict[str, Any] | None) -> None:
        super().__init__("staging replaced")
        self.newer = newer


class ValidationConfigError(DataError):
    """A ``validation.expectations`` entry names an unknown expectation, bad arguments or a column
    the data does not have."""


class ValidationGateError(DataError):
    """The day's data failed the gate; ``result`` is the same dict :func:`validate_day` returns."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Rule:
    """One expectation with a readable name; ``row_level`` rules split rows, the others gate."""

    name: str
    expectation: Expectation
    row_level: bool

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.expectation.configuration.kwargs)


def build_rules(cfg: PipelineConfig) -> list[Rule]:
    """The day's rules, in a stable order: table rules, column rules, key, ingest errors, extras."""
    import great_expectations.expectations as gxe
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )
    from great_expectations.expectations.registry import get_expectation_impl

    v = cfg.validation
    rules = [
        Rule(
            f"row count between {v.min_rows} and {v.max_rows if v.max_rows is not None else 'any'}",
            gxe.ExpectTableRowCountToBeBetween(min_value=v.min_rows, max_value=v.max_rows),
            False,
        )
    ]
    for col in cfg.data.all_columns():
        rules.append(Rule(f"column {col.name} exists", gxe.ExpectColumnToExist(column=col.name), False))
        rules.append(
            Rule(
                f"column {col.name} is {col.type}",
                gxe.ExpectColumnValuesToBeOfType(column=col.name, type_=GX_TYPES[col.type]),
                False,
            )
        )
    for col in cfg.data.all_columns():
        # A row without its key identifies nothing: predictions, the drift monitor and the shadow
        # report could not join it (GX's uniqueness rules skip missing values), so a key column is
        # required whatever its `nullable` says.
        if not col.nullable or col.name in cfg.data.key:
            rules.append(
                Rule(f"{col.name} not null", gxe.ExpectColumnValuesToNotBeNull(column=col.name), True)
            )
        if col.min is not None or col.max is not None:
            bounds = f"between {col.min} and {col.max}"
            if col.min is None or col.max is None:
                bounds = f">= {col.min}" if col.max is None else f"<= {col.max}"
            rules.append(
                Rule(
                    f"{col.name} {bounds}",
                    gxe.ExpectColumnValuesToBeBetween(column=col.name, min_value=col.min, max_value=col.max),
                    True,
                )
            )
        if col.allowed is not None:
            rules.append(
                Rule(
                    f"{col.name} in allowed values",
                    gxe.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.allowed)),
                    True,
                )
            )
    if cfg.data.key:
        unique = (
            gxe.ExpectColumnValuesToBeUnique(column=cfg.data.key[0])
            if len(cfg.data.key) == 1
            else gxe.ExpectCompoundColumnsToBeUnique(column_list=list(cfg.data.key))
        )
        rules.append(Rule(f"key {'+'.join(cfg.data.key)} unique", unique, True))
    rules.append(
        Rule("values convert to their types", gxe.ExpectColumnValuesToBeNull(column=INGEST_ERROR), True)
    )
    declared = [c.name for c in cfg.data.all_columns()]
    for i, spec in enumerate(v.expectations):
        where = f"pipeline '{cfg.name}': validation.expectations[{i}] ({spec.type})"
        try:
            expectation = get_expectation_impl(spec.type)(**spec.kwargs)
        except ExpectationNotFoundError:
            raise ValidationConfigError(
                f"{where}: Great Expectations has no expectation of that type"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ValidationConfigError(f"{where}: invalid kwargs {spec.kwargs}: {exc}") from None
        # GX would only find out on the day's data, as a rule it cannot evaluate: every day would
        # fail its gate for a mistake of the config.
        for key in ("regex", "regex_list"):
            patterns = spec.kwargs.get(key)
            for pattern in [patterns] if isinstance(patterns, str) else patterns or []:
                try:
                    re.compile(pattern)
                except (re.error, TypeError) as exc:
                    raise ValidationConfigError(
                        f"{where}: kwarg '{key}' is not a valid regular expression: {pattern!r} ({exc})"
                    ) from None
        for key, names in _named_columns(expectation).items():
            unknown = [n for n in names if n not in declared and n not in LINEAGE_COLUMNS]
            if unknown:
                raise ValidationConfigError(
                    f"{where}: kwarg '{key}' names column(s) {unknown} that the data does not have; "
                    f"use one of the columns declared under data (columns and joins): {declared}, or a "
                    f"lineage column: {list(LINEAGE_COLUMNS)}."
                )
        row_level = spec.type not in _TYPE_EXPECTATIONS and isinstance(
            expectation, ColumnMapExpectation | MulticolumnMapExpectation | ColumnPairMapExpectation
        )
        args = ", ".join(f"{k}={val}" for k, val in spec.kwargs.items())
        rules.append(Rule(f"{spec.type}({args})", expectation, row_level))
    return rules


def run_gx(
    frame: pd.DataFrame, rules: list[Rule], result_format: str | dict[str, Any] = "SUMMARY"
) -> list[ExpectationValidationResult]:
    """Run the rules with GX (ephemeral in-memory context, no analytics); results in rule order.

    GX's pandas metrics filter whole rows, so their cost grows with the width of the frame (one
    range rule on 1M rows x 27 columns: ~10 s; on its own column: <1 s). Each rule therefore runs on
    the columns it reads: schema rules on a zero-row copy of the frame (same dtypes), value rules on
    their columns, with nullable ints as float64 for rules that compare numbers (same values and
    nulls, GX's vectorised path).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )
    batches = context.data_sources.add_pandas("staged").add_dataframe_asset("day")
    definition = batches.add_batch_definition_whole_dataframe("whole")
    groups: dict[tuple[tuple[str, ...] | None, bool], list[int]] = {}
    for i, rule in enumerate(rules):
        numeric = rule.expectation.expectation_type in _NUMERIC_READERS
        groups.setdefault((_columns_read(rule), numeric), []).append(i)
    results: list[Any] = [None] * len(rules)
    for (columns, numeric), positions in groups.items():
        view = _gx_view(frame, columns, ints_as_float=numeric)
        batch = definition.get_batch(batch_parameters={"dataframe": view})
        # GX does not return results in suite order: tag each expectation with its rule's position.
        tagged = [rules[i].expectation.copy(update={"meta": {"mlops_rule": i}}) for i in positions]
        suite = gx.ExpectationSuite(name=f"rules-{positions[0]}", expectations=tagged)
        for res in batch.validate(suite, result_format=result_format).results:
            results[res.expectation_config.meta["mlops_rule"]] = res
    return results


def _columns_read(rule: Rule) -> tuple[str, ...] | None:
    """The columns a rule reads: :data:`SCHEMA` for column presence and type, () for the row
    count, None for other table rules (they get the whole frame)."""
    expectation = rule.expectation
    kind = expectation.expectation_type
    if kind in _TYPE_EXPECTATIONS or kind == "expect_column_to_exist":
        return SCHEMA
    if kind == "expect_table_row_count_to_be_between":
        return ()
    if rule.kwargs.get("row_condition"):
        # The condition may read any column (carrier=="AA"): GX evaluates it on the frame it gets.
        return None
    # Only domain columns: a table rule's column_list (e.g. the expected column order) is compared
    # with the whole frame's columns, so it must see the whole frame.
    columns = [
        name
        for key, names in _named_columns(expectation).items()
        if key in expectation.domain_keys
        for name in names
    ]
    return tuple(columns) if columns else None


def _named_columns(expectation: Expectation) -> dict[str, list[str]]:
    """The columns an expectation's kwargs name, by kwarg (``column``, ``column_list``...)."""
    kw = expectation.configuration.kwargs
    return {
        key: [kw[key]] if isinstance(kw[key], str) else list(kw[key])
        for key in _COLUMN_KWARGS
        if kw.get(key) is not None
    }


def _gx_view(frame: pd.DataFrame, columns: tuple[str, ...] | None, *, ints_as_float: bool) -> pd.DataFrame:
    """The frame a group of rules runs on: the columns they read, nullable ints as float64 for
    rules that compare numbers (:data:`_NUMERIC_READERS`), as they are for the others."""
    if columns is None:
        return frame
    if columns == SCHEMA:
        return frame.iloc[:0]
    present = [c for c in columns if c in frame.columns] or list(frame.columns[:1])
    view = frame[present]
    # float64 holds every integer up to 2**53 exactly; a column beyond that (large ids) stays as it
    # is, on GX's slower path, rather than letting distinct values compare equal.
    ints = [
        c
        for c in present
        if ints_as_float
        and isinstance(view[c].dtype, pd.Int64Dtype)
        and not bool((view[c].abs() > 2**53).any())
    ]
    if ints:
        view = view.assign(**{c: view[c].to_numpy(dtype="float64", na_value=np.nan) for c in ints})
    if not ints_as_float:
        view = view.assign(
            **{c: _as_objects(view[c]) for c in present if isinstance(view[c].dtype, pd.StringDtype)}
        )
    return view


def _as_objects(column: pd.Series) -> pd.Series:
    """A text column as Python strings for rules that read values as text: GX's regex and length
    metrics call ``astype(str)``, which on an arrow-backed column builds a numpy array of fixed-width
    strings of the longest value (rows x longest x 4 bytes: one 20 MB value among 842 rows asked for
    60 GiB). On Python strings it is a no-op."""
    return column.astype(object)


# Rules that compare values as numbers, which a float64 copy of an int column answers the same way
# on GX's vectorised path. The others may read values as text (lengths, regexes, formats): 1 must
# stay "1" for them, not become "1.0".
_NUMERIC_READERS = frozenset(
    {
        "expect_column_values_to_be_between",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_null",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_be_unique",
        "expect_compound_columns_to_be_unique",
        "expect_select_column_values_to_be_unique_within_record",
        "expect_column_values_to_be_increasing",
        "expect_column_values_to_be_decreasing",
        "expect_column_min_to_be_between",
        "expect_column_max_to_be_between",
        "expect_column_mean_to_be_between",
        "expect_column_median_to_be_between",
        "expect_column_sum_to_be_between",
        "expect_column_stdev_to_be_between",
        "expect_column_quantile_values_to_be_between",
        "expect_column_value_z_scores_to_be_less_than",
        "expect_column_unique_value_count_to_be_between",
        "expect_column_proportion_of_unique_values_to_be_between",
        "expect_column_pair_values_a_to_be_greater_than_b",
        "expect_column_pair_values_to_be_equal",
        "expect_multicolumn_sum_to_equal",
    }
)


def bad_row_mask(frame: pd.DataFrame, rule: Rule) -> np.ndarray:
    """Rows of ``frame`` that break a row rule, computed the way GX's pandas metrics count them."""
    kind = rule.expectation.expectation_type
    kw = rule.kwargs
    mirror = _MIRRORS.get(kind)
    if mirror is None or kw.get("row_condition"):
        return _mask_from_gx(frame, rule)
    if kind == "expect_compound_columns_to_be_unique":
        return mirror(frame, kw)
    column = frame[kw["column"]]
    present = column.notna().to_numpy(dtype=bool)
    if kind in ("expect_column_values_to_not_be_null", "expect_column_values_to_be_null"):
        return mirror(column, present, kw)
    bad = np.zeros(len(frame), dtype=bool)
    bad[present] = mirror(column[present], kw)
    return bad


def _between(col: pd.Series, kw: dict[str, Any]) -> np.ndarray:
    values = (
        col.to_numpy(dtype=float) if col.dtype.kind in "iufb" or isinstance(col.dtype, pd.Int64Dtype) else col
    )
    ok = np.ones(len(col), dtype=bool)
    if kw.get("min_value") is not None:
        ok &= (values > kw["min_value"]) if kw.get("strict_min") else (values >= kw["min_value"])
    if kw.get("max_value") is not None:
        ok &= (values < kw["max_value"]) if kw.get("strict_max") else (values <= kw["max_value"])
    return ~np.asarray(ok, dtype=bool)


def _regex(col: pd.Series, kw: dict[str, Any]) -> np.ndarray:
    return _as_objects(col).astype(str).str.contains(kw["regex"]).to_numpy(dtype=bool)


def _compound_unique(frame: pd.DataFrame, kw: dict[str, Any]) -> np.ndarray:
    keys = frame[kw["column_list"]]
    considered = keys.notna().any(axis=1).to_numpy(dtype=bool)  # GX ignores all-missing keys
    bad = np.zeros(len(frame), dtype=bool)
    bad[considered] = keys[considered].duplicated(keep=False).to_numpy(dtype=bool)
    return bad


_MIRRORS: dict[str, Any] = {
    "expect_column_values_to_not_be_null": lambda col, present, kw: ~present,
    "expect_column_values_to_be_null": lambda col, present, kw: present,
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_in_set": lambda col, kw: ~col.isin(kw["value_set"]).to_numpy(dtype=bool),
    "expect_column_values_to_not_be_in_set": lambda col, kw: col.isin(kw["value_set"]).to_numpy(dtype=bool),
    "expect_column_values_to_match_regex": lambda col, kw: ~_regex(col, kw),
    "expect_column_values_to_not_match_regex": _regex,
    "expect_column_values_to_be_unique": lambda col, kw: col.duplicated(keep=False).to_numpy(dtype=bool),
    "expect_compound_columns_to_be_unique": _compound_unique,
}


def _mask_from_gx(frame: pd.DataFrame, rule: Rule) -> np.ndarray:
    """A row rule without a pandas mirror: ask GX itself which rows it rejects (COMPLETE)."""
    result = run_gx(frame, [rule], {"result_format": "COMPLETE"})[0]
    bad = np.zeros(len(frame), dtype=bool)
    bad[frame.index.get_indexer(result.result.get("unexpected_index_list") or [])] = True
    return bad


# -- the step -----------------------------------------------------------------------------------


@dataclass
class _RuleOutcome:
    rule: Rule
    success: bool
    gx_unexpected: int | None
    rows: int
    observed: Any
    error: str | None
    examples: list[str]
    files: dict[str, int]
    columns: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "level": "row" if self.rule.row_level else "table",
            "expectation": self.rule.expectation.expectation_type,
            "kwargs": self.rule.kwargs,
            "success": self.success,
            "gx_unexpected_count": self.gx_unexpected,
            "rows": self.rows,
            "observed": self.observed,
            "error": self.error,
            "examples": self.examples,
            "files": self.files,
            "columns": self.columns,
        }


def validate_day(store: ObjectStore, cfg: PipelineConfig, day: dt.date) -> dict[str, Any]:
    """Validate the staged partition of ``day``; publish quarantine, reports and (if it passes) curated.

    Returns ``{"date", "passed", "rows", "good_rows", "bad_rows", "malformed_lines",
    "rejected_lines", "bad_fraction", "curated_uri", "quarantine_uri", "report_json_uri",
    "report_html_uri", "failed_rules", "message"}``; raises :class:`ValidationGateError` (carrying
    that dict) when the gate fails, after withdrawing the day's curated partition.
    """
    staging = partition_prefix(cfg.prefix, "staging", day)
    staged = store.read_manifest(staging)
    if staged is None:
        raise StagedDataMissingError(
            f"{store.uri(staging)} has no published manifest: ingest has not staged {day} for pipeline "
            f"'{cfg.name}' (run the ingest step for that day first)."
        )
    attempt = 1
    while True:
        try:
            return _validate_staged(store, cfg, day, staged)
        except ObjectNotFoundError as exc:
            if not exc.key.startswith(staging):
                raise
            # An ingest rerun of the day publishes a new staging manifest, then deletes the parts it
            # replaces: start again from the new one (nothing was published before staging was read).
            newer = store.read_manifest(staging)
            if newer is None or newer == staged or attempt == STAGING_ATTEMPTS:
                raise _staging_replaced(store, cfg, day, exc.key, newer, staged, attempt) from None
        except _StagingMoved as moved:
            # Validated, but staging is newer now (a late file ingested by another run, whose own
            # validation may have published already): validate the current staging instead.
            newer = moved.newer
            if newer is None or attempt == STAGING_ATTEMPTS:
                raise _staging_replaced(store, cfg, day, staging, newer, staged, attempt) from None
        staged, attempt = newer, attempt + 1


def _staging_replaced(
    store: ObjectStore,
    cfg: PipelineConfig,
    day: dt.date,
    key: str,
    newer: dict[str, Any] | None,
    staged: dict[str, Any],
    attempts: int,
) -> StagingReplacedError:
    """Why a part the staging manifest listed is gone, and what to run: one paragraph."""
    head = (
        f"Validation of '{cfg.name}' for {day} could not read {store.uri(key)}, a part of the staging "
        f"manifest it validates:"
        if key != partition_prefix(cfg.prefix, "staging", day)
        else f"Validation of '{cfg.name}' for {day} found the staging it validated ({store.uri(key)}) "
        "changed before it could publish:"
    )
    if newer is None:
        why = (
            "the staging partition has no manifest any more (deleted meanwhile). Run the ingest step for "
            "the day, then validation."
        )
    elif newer == staged:
        why = (
            "the part is gone although the manifest still lists it, so the staging partition is damaged. "
            "Run the ingest step for the day again, then validation."
        )
    else:
        why = (
            f"staging was replaced by a concurrent ingest run of the same day ({attempts} time(s) while it "
            "was validated). This validation published nothing newer than that staging; rerun it once "
            "that ingest has finished."
        )
    return StagingReplacedError(f"{head} {why}")


def _validate_staged(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, staged: dict[str, Any]
) -> dict[str, Any]:
    """:func:`validate_day` on one staging manifest. Everything it reads from staging is read before
    anything is published, so an :class:`ObjectNotFoundError` for a staging part leaves no trace."""
    table = read_staged(store, staged)
    frame = staged_frame(table)
    rules = build_rules(cfg)
    gx_results = run_gx(frame, rules)
    outcomes, bad, reasons = _split(frame, rules, gx_results)

    rows, bad_rows = len(frame), int(bad.sum())
    malformed = int(staged.get("malformed_lines", 0))
    rejected_lines = sum(int(r.get("lines", 0)) for r in staged.get("rejected_files", []))
    # Lines that never became rows are bad records too: a day of mostly unparseable lines or
    # rejected files must not pass on its few good rows.
    lost = malformed + rejected_lines
    bad_fraction = (bad_rows + lost) / (rows + lost) if rows + lost else 0.0
    limit = cfg.validation.max_bad_row_fraction
    table_failures = [o for o in outcomes if not o.rule.row_level and not o.success]
    passed = not table_failures and bad_fraction <= limit
    failed = [o for o in outcomes if not o.success or o.rows]

    quarantine = partition_prefix(cfg.prefix, "quarantine", day)
    reports = partition_prefix(cfg.prefix, "reports/validation", day)
    # The report of this staging under these rules, under a name of its own, which the curated
    # manifest (so the data version and the lineage of a model) points to: a later validation of the
    # day writes another one. `validation.json`/`.html` beside it are the day's latest.
    validated = {
        "staging": staged,
        "rules": [cfg.data.model_dump(mode="json"), cfg.validation.model_dump(mode="json")],
    }
    report_name = f"validation-{sha256_bytes(json.dumps(validated, sort_keys=True).encode())[:16]}"
    curated = partition_prefix(cfg.prefix, "curated", day)
    quarantined = frame[bad].copy()
    quarantined[REASONS_COLUMN] = pd.Series(reasons, index=quarantined.index, dtype=object)
    # Unlisted parts until the manifest is published: the last read of staging, before anything shows.
    parts, rejected = _quarantine_parts(store, quarantine, staged, quarantined)

    def still_current(_: object = None) -> None:
        """Checked before each output of the day becomes visible (the publishes' just before their
        PUTs): an older staging's must not replace a newer validation's."""
        newer = store.read_manifest(partition_prefix(cfg.prefix, "staging", day))
        if newer != staged:
            raise _StagingMoved(newer)

    still_current()
    # Before quarantine is published: the day's new bad rows must never sit next to curated rows of
    # an earlier run, which training would read as the day's data.
    withdrawn = not passed and _unpublish(store, curated)
    result = {
        "date": day.isoformat(),
        "passed": passed,
        "rows": rows,
        "good_rows": rows - bad_rows,
        "bad_rows": bad_rows,
        "malformed_lines": malformed,
        "rejected_lines": rejected_lines,
        "bad_fraction": round(bad_fraction, 6),
        "curated_uri": store.uri(curated) if passed else None,
        "quarantine_uri": store.uri(quarantine),
        "report_json_uri": store.uri(reports + f"{report_name}.json"),
        "report_html_uri": store.uri(reports + f"{report_name}.html"),
        "failed_rules": [o.rule.name for o in failed],
        "message": "",
    }
    result["message"] = _message(cfg, day, result, staged, table_failures, failed, withdrawn)

    publish_manifest(
        store,
        quarantine,
        parts,
        may_replace=still_current,
        day=day.isoformat(),
        bad_rows=len(quarantined),
        malformed_lines=malformed,
        rejected_files=rejected,
    )
    report = {
        **result,
        "pipeline": cfg.name,
        "max_bad_row_fraction": limit,
        "gx": {
            "success": all(r.success for r in gx_results),
            "evaluated_expectations": len(gx_results),
            "successful_expectations": sum(bool(r.success) for r in gx_results),
        },
        "rules": [o.as_dict() for o in outcomes],
        "rejected_files": staged.get("rejected_files", []),
        "ingest_warnings": staged.get("warnings", []),
    }
    page = render_html(report).encode()

    def write_report(name: str) -> None:
        store.put_json(reports + f"{name}.json", _plain(report))
        store.put_bytes(reports + f"{name}.html", page, "text/html; charset=utf-8")

    write_report(report_name)  # this staging's: replacing nothing newer
    if not passed:
        still_current()
        write_report("validation")
        raise ValidationGateError(result["message"], result)
    # Filtering the arrow table (not the frame) keeps the staged schema and needs no pandas copy.
    good = required_where_declared(table.filter(pa.array(~bad)), cfg)
    parts = [
        write_curated_file(store, curated, index, good.slice(start, CURATED_FILE_ROWS))
        for index, start in enumerate(range(0, max(good.num_rows, 1), CURATED_FILE_ROWS))
    ]
    publish_manifest(
        store,
        curated,
        parts,
        may_replace=still_current,
        day=day.isoformat(),
        validation_report=reports + f"{report_name}.json",
        landing_files=staged.get("landing_files"),  # what training's planning compares (ingestion)
    )
    still_current()
    write_report("validation")
    return result


def _unpublish(store: ObjectStore, partition: str) -> bool:
    """Unpublish a partition: its manifest first, so readers see nothing from then on, then the parts
    it listed. Returns whether there was one."""
    manifest = store.read_manifest(partition)
    if manifest is None:
        return False
    store.delete([partition + MANIFEST_NAME])
    store.delete([p["key"] for p in manifest["parts"]])
    return True


def write_curated_file(store: ObjectStore, curated: str, index: int, rows: pa.Table) -> dict[str, Any]:
    """Upload one unpublished curated file (see ``storage.CURATED_FILE_ROWS``); its manifest entry."""
    buffer = io.BytesIO()
    pq.write_table(rows, buffer, compression=PARQUET_COMPRESSION, row_group_size=CURATED_ROW_GROUP_ROWS)
    return write_part(store, curated, f"data-{index:05d}.parquet", buffer.getvalue(), rows=rows.num_rows)


def required_where_declared(table: pa.Table, cfg: PipelineConfig) -> pa.Table:
    """``table`` with the columns the config declares ``nullable: false`` (validated: no nulls left)
    marked non-nullable, so curated parquet stores them as REQUIRED columns: readers then decode no
    definition levels for them (batch inference: 0.74 -> 0.70 CPU s per 1M rows, docs/benchmarks.md). A column that
    still holds a null (never, after validation) stays nullable."""
    declared = {c.name for c in cfg.data.all_columns() if not c.nullable}
    fields = [
        f.with_nullable(f.nullable and not (f.name in declared and table.column(f.name).null_count == 0))
        for f in table.schema
    ]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def read_staged(store: ObjectStore, staged: dict[str, Any]) -> pa.Table:
    """The data parts of a staging manifest (``data_parts``; its other parts are quarantine
    material) as one arrow table, each checked against the sha256 the manifest recorded."""
    parts = {p["key"]: p for p in staged["parts"]}
    return pa.concat_tables([read_part(store, parts[k]) for k in staged["data_parts"]])


def staged_frame(table: pa.Table) -> pd.DataFrame:
    """The frame GX and the masks see: strings stay arrow-backed (a third of the memory of Python
    string objects at 1M rows, and faster set/regex checks)."""
    strings = pd.StringDtype("pyarrow")
    return table.to_pandas(types_mapper={pa.string(): strings, pa.large_string(): strings}.get)


def _split(
    frame: pd.DataFrame, rules: list[Rule], gx_results: list[ExpectationValidationResult]
) -> tuple[list[_RuleOutcome], np.ndarray, list[list[str]]]:
    """Per-rule outcomes, the mask of bad rows and, for each bad row, the rules it broke."""
    bad = np.zeros(len(frame), dtype=bool)
    per_row: dict[int, list[str]] = {}
    outcomes = []
    for rule, res in zip(rules, gx_results, strict=True):
        error = gx_error(res)
        summary = res.result or {}
        outcome = _RuleOutcome(
            rule=rule,
            success=bool(res.success),
            gx_unexpected=summary.get("unexpected_count"),
            rows=0,
            observed=summary.get("observed_value"),
            error=error,
            examples=[],
            files={},
            columns={},
        )
        outcomes.append(outcome)
        if not rule.row_level or error is not None:
            # A row rule GX could not evaluate (e.g. its column is missing) is a table failure.
            outcome.rule = Rule(rule.name, rule.expectation, rule.row_level and error is None)
            continue
        mask = bad_row_mask(frame, rule)
        outcome.rows = int(mask.sum())
        if not outcome.rows:
            continue
        bad |= mask
        outcome.examples = _examples(frame, rule, mask)
        outcome.files = _largest_first(frame.loc[mask, "_source_file"].value_counts())
        is_ingest = rule.kwargs.get("column") == INGEST_ERROR
        if is_ingest:
            outcome.columns = _error_columns(frame.loc[mask, INGEST_ERROR], frame.columns)
        errors = frame[INGEST_ERROR].to_numpy(dtype=object) if is_ingest else None
        for i in np.flatnonzero(mask).tolist():
            per_row.setdefault(i, []).append(f"ingest: {errors[i]}" if is_ingest else rule.name)
    reasons = [per_row[i] for i in np.flatnonzero(bad).tolist()]
    return outcomes, bad, reasons


def _largest_first(counts: Mapping[str, int] | pd.Series) -> dict[str, int]:
    """Counts by name, largest first (ties by name, so reruns agree)."""
    return dict(sorted(((str(k), int(n)) for k, n in counts.items()), key=lambda kn: (-kn[1], kn[0])))


def _error_columns(errors: pd.Series, columns: pd.Index) -> dict[str, int]:
    """The columns ``_ingest_error`` texts name, as ``delay`` or ``weather.temp`` (a join's column),
    with the number of rows each failed in."""
    # Each entry starts with its column: "delay: 'abc' is...; weather: temp: 'x' is...". The names
    # are matched as declared, since a column name may hold spaces, signs and colons.
    names = "|".join(re.escape(c) for c in sorted(columns, key=len, reverse=True))
    entry = re.compile(rf"(?:^|; )(?:([^:;' ]+): )?({names}): ")
    named = errors.astype(object).map(
        lambda text: sorted({f"{join}.{c}" if join else c for join, c in entry.findall(text)})
    )
    return _largest_first(named.explode().dropna().value_counts())


def gx_error(result: ExpectationValidationResult) -> str | None:
    """What GX raised while evaluating a rule, or None if it evaluated.

    GX 1.x keys ``exception_info`` by metric id when a metric fails (e.g. a missing column), and
    gives one flat ``{"raised_exception", "exception_message", ...}`` when the expectation itself
    raises."""
    info = result.exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = [
        str(e.get("exception_message"))
        for e in entries
        if isinstance(e, Mapping) and e.get("raised_exception")
    ]
    return "; ".join(dict.fromkeys(messages)) or None


def _examples(frame: pd.DataFrame, rule: Rule, mask: np.ndarray) -> list[str]:
    columns = rule.kwargs.get("column_list") or [rule.kwargs.get("column")]
    columns = [c for c in columns if c in frame.columns]
    picked = frame.loc[mask, columns].head(200).astype(str).agg(" | ".join, axis=1)
    return list(dict.fromkeys(picked.tolist()))[:EXAMPLES_PER_RULE]


def _message(
    cfg: PipelineConfig,
    day: dt.date,
    result: dict[str, Any],
    staged: dict[str, Any],
    table_failures: list[_RuleOutcome],
    failed: list[_RuleOutcome],
    withdrawn: bool,
) -> str:
    """One paragraph: the verdict, each rule with its rows, columns and files, the lines that never
    became rows, and where the report and the bad rows are."""
    head = f"Validation of '{cfg.name}' for {day}"
    landing = partition_prefix(cfg.prefix, "landing", day)
    rows, bad_rows = result["rows"], result["bad_rows"]
    row_rules = ", ".join(
        f"'{o.rule.name}' ({o.rows} rows)"
        + (f" in column(s) {_first_few(o.columns)}" if o.columns else "")
        + f" from {_first_few(o.files, landing)}"
        for o in failed
        if o.rule.row_level and o.rows
    )
    share = f"{bad_rows} of {rows} rows ({bad_rows / rows if rows else 0:.2%}) broke row rules" + (
        f": {row_rules}" if row_rules else ""
    )
    lost = []
    # The malformed-lines part also holds the side-table rows that have no complete join key.
    for field, what in (("malformed_lines", "malformed CSV line(s)"), ("unjoinable_rows", UNJOINABLE)):
        per_file = _largest_first({f["key"]: f[field] for f in staged["source_files"] if f.get(field)})
        if per_file:
            lost.append(f"{sum(per_file.values())} {what} from {_first_few(per_file, landing)}")
    if staged.get("rejected_files"):
        per_file = _largest_first({r["key"]: r.get("lines", 0) for r in staged["rejected_files"]})
        lost.append(
            f"{len(per_file)} rejected file(s) with {result['rejected_lines']} line(s): "
            f"{_first_few(per_file, landing)}"
        )
    landed = rows + result["malformed_lines"] + result["rejected_lines"]
    lost_text = (
        f"; {' and '.join(lost)} were quarantined too, so {landed - result['good_rows']} of {landed} "
        f"landed records ({result['bad_fraction']:.2%}) are bad"
        if lost
        else ""
    )
    where = f"Report: {result['report_html_uri']}; bad rows: {result['quarantine_uri']}."
    if result["passed"]:
        return (
            f"{head} passed: {share}; they were quarantined and {result['good_rows']} rows curated"
            f"{lost_text}. {where}"
        )
    reasons = []
    for o in table_failures:
        detail = o.error or (f"observed {o.observed}" if o.observed is not None else "failed")
        reasons.append(f"table rule '{o.rule.name}' failed ({detail})")
    limit = cfg.validation.max_bad_row_fraction
    if result["bad_fraction"] > limit:
        reasons.append(f"the bad share {result['bad_fraction']:.2%} is above the limit of {limit:.2%}")
    curated = "Curated data was not written" + (
        " and the curated partition an earlier run published for the day was withdrawn." if withdrawn else "."
    )
    return f"{head} FAILED the gate: {'; '.join(reasons)}; {share}{lost_text}. {curated} {where}"


def _first_few(counts: dict[str, int], prefix: str = "") -> str:
    """``a (2), b (1) and 4 more`` from counts ordered by :func:`_largest_first`; ``prefix`` (the
    day's landing folder) is cut from the names."""
    shown = [f"{name.removeprefix(prefix)} ({n})" for name, n in list(counts.items())[:NAMED_IN_MESSAGE]]
    more = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _quarantine_parts(
    store: ObjectStore, quarantine: str, staged: dict[str, Any], rows: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The quarantine parts (bad rows, plus ingest's rejected files and malformed lines copied from
    staging), written but not published, and the rejected files' manifest entries."""
    parts = []
    if len(rows):
        parts.append(write_part(store, quarantine, "rows.parquet", to_parquet_bytes(rows), rows=len(rows)))
    if staged.get("malformed_part"):
        data = store.get_bytes(staged["malformed_part"])
        parts.append(
            write_part(store, quarantine, "malformed_lines.jsonl", data, rows=int(staged["malformed_lines"]))
        )
    rejected = []
    for entry in staged.get("rejected_files", []):
        data = store.get_bytes(entry["copy"])
        copy = write_part(store, quarantine, rejected_copy_name(entry["key"]), data, rows=0)
        parts.append(copy)
        rejected.append(
            {
                "key": entry["key"],
                "reason": entry["reason"],
                "copy": copy["key"],
                "lines": entry.get("lines", 0),
            }
        )
    return parts, rejected


def _plain(obj: Any) -> Any:
    """A JSON-safe copy: numpy scalars made plain, NaN/inf as null, anything else as its string."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    return obj if obj is None or isinstance(obj, str) else str(obj)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report: verdict, per-rule counts and example bad values."""
    esc = html.escape
    verdict = "PASSED" if report["passed"] else "FAILED"
    rows = []
    for r in report["rules"]:
        status = "ok" if r["success"] and not r["rows"] else "fail"
        rows.append(
            f"<tr class='{status}'><td>{esc(r['rule'])}</td><td>{r['level']}</td>"
            f"<td>{'yes' if r['success'] else 'no'}</td><td>{esc(str(r['gx_unexpected_count']))}</td>"
            f"<td>{r['rows']}</td><td>{esc(str(r['observed']))}</td>"
            f"<td>{esc(', '.join(r['examples']) or (r['error'] or ''))}</td></tr>"
        )
    rejected = "".join(
        f"<li><code>{esc(f['key'])}</code>: {esc(f['reason'])}</li>" for f in report["rejected_files"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Validation {esc(report["pipeline"])} {report["date"]}</title>
<style>
body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
tr.fail td{{background:#fde8e8}} .verdict{{font-size:1.4em;font-weight:bold}}
</style></head><body>
<h1>Validation of {esc(report["pipeline"])} for {report["date"]}</h1>
<p class="verdict">{verdict}</p>
<p>{esc(report["message"])}</p>
<p>Rows: {report["rows"]}; good: {report["good_rows"]}; quarantined: {report["bad_rows"]}.
Malformed CSV lines and side-table rows without a join key: {report["malformed_lines"]};
lines of rejected files: {report["rejected_lines"]}.
Bad share: {report["bad_fraction"]:.2%} (limit {report["max_bad_row_fraction"]:.2%}).</p>
<h2>Rules</h2>
<table><tr><th>rule</th><th>level</th><th>GX success</th><th>GX unexpected</th><th>rows quarantined</th>
<th>observed</th><th>examples of bad values</th></tr>
{"".join(rows)}
</table>
<h2>Rejected files</h2><ul>{rejected or "<li>none</li>"}</ul>
</body></html>
"""
