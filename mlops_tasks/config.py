"""Typed pipeline configuration, loaded from ``configs/<pipeline>.yaml``.

One YAML file describes one pipeline. Every value is validated when the file is loaded, and every
problem is reported as ``<file>: <field path>: <what is wrong> (got <value>)`` so the error can be
fixed without reading a traceback. Unknown keys are errors: a typo must never silently fall back to a
default. Secrets never live here; the config only names Airflow connection ids.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import re
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mlops_tasks.errors import DataError

CONFIG_DIR_ENV = "MLOPS_TASKS_CONFIG_DIR"
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

_IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"
_BUCKET = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
# What Airflow accepts as a connection id (RE_SANITIZE_CONN_ID of airflow.models.connection).
_CONN_ID = r"^[\w#!()\-.:/\\]+$"
# MLflow refuses "/" and ":" in model names; a blank name would be an unnamed model.
_MLFLOW_NAME = r"^[^/:]*[^/:\s][^/:]*$"
# Experiments may be named like workspace paths ("/Shared/flights", "team-a/flights"): only blank is refused.
_EXPERIMENT_NAME = r"^\s*\S.*$"
_SEED = Field(42, ge=0, le=2**32 - 1, description="Random seed (numpy and torch take 0 .. 2**32-1).")
# An object-store prefix segment: no "..", no leading "/", no backslashes, no URL schemes.
_SAFE_PREFIX = re.compile(r"^(?!.*\.\.)(?!/)[A-Za-z0-9_\-./]*$")
# Columns ingest adds to every row (mlops_tasks.ingestion.LINEAGE_COLUMNS; a test keeps them equal),
# and the one it uses while joining: a data column of that name would be overwritten or break joins.
# Fewest labelled rows training accepts (mlops_tasks.training).
MIN_TRAINING_ROWS = 100
RESERVED_COLUMNS = ("_day", "_source_file", "_source_line", "_ingest_error", "_join_error")
# What batch inference writes beside the keys (mlops_tasks.inference), with probability_<class>.
PREDICTION_COLUMNS = ("prediction", "score", "model_name", "model_version", "run_id")
# Cron presets Airflow's cron timetables accept (airflow.utils.dates.cron_presets), as cron.
PRESET_CRONS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}
SCHEDULE_PRESETS = tuple(PRESET_CRONS)


def _repeated(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


class ConfigError(DataError):
    """A pipeline config is missing, unreadable or invalid. The message names file and field."""


class _Strict(BaseModel):
    # No NaN or infinity in any number: a `.nan` threshold would reject every model or quarantine
    # every row, with no message naming the config.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads True as 1 and False as 0: an unquoted yes/no/on/off/true/false in YAML would
        # silently become a number of epochs or retries.
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values) and _holds_numbers(cls, info.field_name):
            raise PydanticCustomError("bool_for_number", "Input should be a number, not a boolean")
        return value


@functools.cache
def _holds_numbers(model: type[BaseModel], field: str) -> bool:
    """Whether ``field`` of ``model`` takes numbers (or lists of them) and not booleans."""
    types = _types_in(model.model_fields[field].annotation)
    return (int in types or float in types) and bool not in types


class _RuleError(ValueError):
    """A rule across fields is broken. ``fields`` are their paths inside the model that raises it:
    pydantic locates a model validator's error at the model only, so :func:`_format_errors` appends
    them to that location to name the fields to fix."""

    def __init__(self, fields: str | tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.fields = (fields,) if isinstance(fields, str) else fields


def _check_schedule(value: str | None) -> str | None:
    """A 5-field cron expression or an Airflow preset. Checked here because Airflow builds a DAG
    with a bad cron without complaint and fails only when the scheduler computes its next run."""
    if value is None or value in SCHEDULE_PRESETS:
        return value
    shape = "a 5-field cron expression (minute hour day-of-month month day-of-week) or one of " + ", ".join(
        SCHEDULE_PRESETS
    )
    if len(value.split()) != 5:
        raise ValueError(f"schedule must be {shape}")
    try:
        from croniter import CroniterBadDateError, croniter  # imported only for a non-preset schedule
    except ImportError:  # Airflow brings croniter; without it only the shape can be checked
        return value
    if not croniter.is_valid(value):
        raise ValueError(f"schedule is not a valid cron expression; expected {shape}")
    try:  # valid fields can still name no date (30 February): Airflow would never schedule the DAG
        croniter(value, _CRON_PROBE_START).get_next(dt.datetime)
    except CroniterBadDateError:
        raise ValueError(f"schedule '{value}' never fires (no date matches all its fields)") from None
    return value


_CRON_PROBE_START = dt.datetime(2000, 1, 1)
_DAY = dt.timedelta(days=1)


def _check_daily_schedule(value: str | None) -> str | None:
    """A schedule whose runs each process one day (the start of their data interval) must fire
    exactly once a day: a weekly run would score one day of seven and never the other six, and an
    hourly one would score each day 24 times, the first of them an hour into the day, all of them
    replacing the same partition."""
    if _check_schedule(value) is None:
        return None
    from croniter import croniter

    fires = croniter(PRESET_CRONS.get(value, value), _CRON_PROBE_START)
    # 5 weeks (at most 1,000 fires) show the weekends and month ends of day-of-week/-month rules
    times = [_CRON_PROBE_START]
    while times[-1] < _CRON_PROBE_START + 35 * _DAY and len(times) < 1000:
        times.append(fires.get_next(dt.datetime))
    widest = max(b - a for a, b in zip(times[1:], times[2:], strict=False)) if len(times) > 2 else None
    if widest is None or widest > _DAY:
        raise ValueError(
            f"schedule '{value}' fires {f'up to {widest.days} days apart' if widest else 'less than once in 5 weeks'}, "
            "but each run processes one day (the start of its data interval): the days in between would "
            "never be processed; use a schedule that fires once a day (e.g. @daily)"
        )
    narrowest = min(b - a for a, b in zip(times[1:], times[2:], strict=False))
    if narrowest < _DAY:
        raise ValueError(
            f"schedule '{value}' fires more than once a day (runs {narrowest} apart), but each run processes "
            "the day its data interval starts in: every run of a day would process that day again, the "
            "first before it is over; use a schedule that fires once a day (e.g. @daily or '0 3 * * *')"
        )
    return value


Schedule = Annotated[str | None, AfterValidator(_check_schedule)]
DailySchedule = Annotated[str | None, AfterValidator(_check_daily_schedule)]


ColumnType = Literal["int", "float", "string", "category", "bool", "timestamp"]


class ColumnSpec(_Strict):
    """One column of the raw data and the rules it must obey."""

    name: Annotated[str, Field(min_length=1, description="Column name as it appears in the raw files.")]
    type: ColumnType = Field(
        description="Logical type the column is normalised to on ingest. Surrounding whitespace is "
        "removed; an empty value is missing, and in int, float, bool and timestamp columns so are NA, "
        "N/A, NaN, null and None (in string and category columns they are values)."
    )
    nullable: bool = Field(
        True,
        description="False: a null value quarantines the row, and curated parquet stores the column as "
        "REQUIRED (readers decode no null flags).",
    )
    min: float | None = Field(None, description="Smallest allowed value (numeric columns).")
    max: float | None = Field(None, description="Largest allowed value (numeric columns).")
    allowed: list[str] | None = Field(
        None,
        min_length=1,
        description="Allowed values (category/string columns); anything else quarantines the row.",
    )

    @model_validator(mode="after")
    def _range_is_ordered(self) -> ColumnSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _RuleError(
                ("min", "max"), f"column '{self.name}': min ({self.min}) is greater than max ({self.max})"
            )
        bounds = tuple(b for b in ("min", "max") if getattr(self, b) is not None)
        if bounds and self.type not in ("int", "float"):
            raise _RuleError(
                bounds, f"column '{self.name}': min/max only apply to int/float columns, not {self.type}"
            )
        # Validation compares the typed values with these strings: on any other type nothing
        # would match and every row would be quarantined.
        if self.allowed is not None and self.type not in ("category", "string"):
            raise _RuleError(
                "allowed",
                f"column '{self.name}': allowed only applies to category/string columns, not {self.type}",
            )
        if self.name != self.name.strip():
            # ingest strips the whitespace around header names: such a name never matches a column
            raise _RuleError(
                "name", f"column name {self.name!r} has whitespace around it; write {self.name.strip()!r}"
            )
        if self.name in RESERVED_COLUMNS:
            raise _RuleError(
                "name",
                f"column name '{self.name}' is reserved for the lineage columns ingest adds "
                f"{list(RESERVED_COLUMNS)}; rename the column",
            )
        return self


class SourceSpec(_Strict):
    """Which raw files under ``landing/date=YYYY-MM-DD/`` hold the main table."""

    file_pattern: str = Field("*", description="Glob matched against file names in a landing partition.")
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator of CSV files.")
    encoding: str = Field(
        "utf-8",
        description="Text encoding of CSV files (a Python codec: utf-8, latin-1, ...). With utf-8, a byte that does "
        "not decode costs only its value (its row is quarantined where a declared column holds it); with "
        "another codec, the file is rejected.",
    )

    @field_validator("csv_delimiter")
    @classmethod
    def _separates_fields(cls, value: str) -> str:
        if value in ('"', "\r", "\n"):
            raise ValueError(f"csv_delimiter {value!r} cannot separate fields: it quotes or ends lines")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        # Decoding is what ingest does with it; one byte, because decoding b"" skips the codec
        # lookup. Unknown and non-text codecs (e.g. base64) raise LookupError.
        try:
            b"a".decode(value)
        except LookupError as exc:
            raise ValueError(f"encoding is not a known text codec ({exc})") from None
        except UnicodeError:  # a real codec that needs more than one byte (utf-16)
            pass
        return value


class JoinSpec(_Strict):
    """A side table landed next to the main files and left-joined onto them (e.g. hourly weather)."""

    name: Annotated[
        str, Field(pattern=_IDENTIFIER, description="Name of the side table (in messages and reports).")
    ]
    file_pattern: str = Field(description="Glob matched against file names in the same landing partition.")
    keys: list[str] = Field(min_length=1, description="Join key columns, present in both tables.")
    columns: list[ColumnSpec] = Field(min_length=1, description="Columns of the side table, typed.")


class ExpectationSpec(_Strict):
    """Any Great Expectations 1.x expectation, by its snake_case type name and keyword arguments."""

    type: Annotated[
        str,
        Field(pattern=r"^expect_[a-z0-9_]+$", description="e.g. expect_column_values_to_be_between."),
    ]
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="The expectation's arguments, e.g. {column: dep_delay, min_value: -60}.",
    )


class DataSpec(_Strict):
    source: SourceSpec = SourceSpec()
    columns: list[ColumnSpec] = Field(
        min_length=1, description="Columns of the main table, typed; other columns of the files are dropped."
    )
    key: list[str] = Field(
        min_length=1,
        description="Columns that identify a row uniquely: predictions carry them, and the drift monitor and "
        "the shadow report join scored rows to curated rows and labels on them. A row missing one of "
        "them, or repeating another row's key, is quarantined.",
    )
    joins: list[JoinSpec] = Field(
        default_factory=list, description="Side tables left-joined onto the main one."
    )

    @model_validator(mode="after")
    def _names_are_consistent(self) -> DataSpec:
        names = [c.name for c in self.columns]
        if _repeated(names):
            raise _RuleError("columns", f"duplicate column names {_repeated(names)}")
        missing_key = [k for k in self.key if k not in names]
        if missing_key:
            raise _RuleError("key", f"key columns {missing_key} are not declared in data.columns")
        if _repeated(self.key):
            raise _RuleError("key", f"key columns {_repeated(self.key)} are listed more than once")
        join_names = [j.name for j in self.joins]
        if _repeated(join_names):
            raise _RuleError(
                "joins",
                f"names {_repeated(join_names)} are used twice (ingest routes files to a join by name)",
            )
        main_types = {c.name: c.type for c in self.columns}
        owner = dict.fromkeys(names, "data.columns")  # column -> where it was declared first
        for i, join in enumerate(self.joins):
            join_types = {c.name: c.type for c in join.columns}
            for col in join.keys:
                if col not in main_types:
                    raise _RuleError(
                        f"joins.{i}.keys", f"join '{join.name}': key column '{col}' is not a main column"
                    )
                if col not in join_types:
                    raise _RuleError(
                        f"joins.{i}.keys", f"join '{join.name}': key column '{col}' is not in its columns"
                    )
                # Ingest stores category and string alike; other differing types cannot be merged.
                types = {main_types[col], join_types[col]}
                if len(types) > 1 and types != {"category", "string"}:
                    at = next(j for j, c in enumerate(join.columns) if c.name == col)
                    raise _RuleError(
                        f"joins.{i}.columns.{at}.type",
                        f"join '{join.name}': key column '{col}' is {join_types[col]} in the join's "
                        f"columns but {main_types[col]} in data.columns; declare the same type",
                    )
            seen: set[str] = set()
            for j, c in enumerate(join.columns):
                if c.name in seen:
                    raise _RuleError(
                        f"joins.{i}.columns.{j}.name",
                        f"join '{join.name}': column '{c.name}' is declared twice",
                    )
                seen.add(c.name)
                if c.name in join.keys:
                    continue
                if c.name in owner:
                    # The join would silently keep the other declaration's values and drop its own.
                    raise _RuleError(
                        f"joins.{i}.columns.{j}.name",
                        f"join '{join.name}': column '{c.name}' is already a column of {owner[c.name]}; "
                        "rename it (only join keys may appear in both)",
                    )
                owner[c.name] = f"join '{join.name}'"
        return self

    def all_columns(self) -> list[ColumnSpec]:
        """Main columns plus the columns every join adds (join keys once)."""
        cols = list(self.columns)
        seen = {c.name for c in cols}
        for join in self.joins:
            for c in join.columns:
                if c.name not in seen:
                    cols.append(c)
                    seen.add(c.name)
        return cols


class ValidationSpec(_Strict):
    max_bad_row_fraction: float = Field(
        0.05, ge=0, le=1, description="Fail the gate when more than this share of rows is quarantined."
    )
    min_rows: int = Field(1, ge=0, description="Table rule: fewer rows in a day fails the gate.")
    max_rows: int | None = Field(None, ge=1, description="Table rule: more rows in a day fails the gate.")
    expectations: list[ExpectationSpec] = Field(
        default_factory=list, description="Extra Great Expectations expectations to run."
    )

    @model_validator(mode="after")
    def _rows_are_ordered(self) -> ValidationSpec:
        if self.max_rows is not None and self.min_rows > self.max_rows:
            raise _RuleError(
                ("min_rows", "max_rows"),
                f"min_rows ({self.min_rows}) is greater than max_rows ({self.max_rows}): every day would fail",
            )
        return self


class PositiveWhen(_Strict):
    greater_than: float = Field(description="A row is positive when the target column is above this.")


class TargetSpec(_Strict):
    task: Literal["binary", "multiclass", "regression"] = Field(description="What the model predicts.")
    column: str = Field(description="Raw column the label comes from.")
    positive_when: PositiveWhen | None = Field(
        None, description="Binary tasks on a numeric column: the rule that makes a row positive."
    )

    @model_validator(mode="after")
    def _rule_matches_task(self) -> TargetSpec:
        if self.positive_when is not None and self.task != "binary":
            raise _RuleError("positive_when", f"positive_when only applies to task binary, not {self.task}")
        return self


class FeatureSpec(_Strict):
    numeric: list[str] = Field(
        default_factory=list,
        description="Number columns: missing values imputed with the training median, then standardised.",
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="Columns whose values are categories (learned embeddings; unseen values share one slot).",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> FeatureSpec:
        if not self.numeric and not self.categorical:
            raise _RuleError(
                ("numeric", "categorical"), "at least one numeric or categorical feature is required"
            )
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise _RuleError(
                ("numeric", "categorical"), f"features {both} are listed as both numeric and categorical"
            )
        for kind, names in (("numeric", self.numeric), ("categorical", self.categorical)):
            if _repeated(names):
                raise _RuleError(kind, f"{kind} features {_repeated(names)} are listed more than once")
        return self

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class ModelSpec(_Strict):
    hidden_layers: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [128, 64], description="Widths of the MLP's hidden layers."
    )
    embedding_dim: int | None = Field(None, ge=1, le=256, description="None: min(16, (vocab+1)//2).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each hidden layer, in training.")
    unknown_category_rate: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Share of training values of each categorical feature hidden as unknown (seeded), "
        "so the out-of-vocabulary slot learns what an unseen or missing value means; at 0 that slot "
        "is not trained (it keeps its random initial vector, shrunk by weight_decay) unless the "
        "training rows have missing values.",
    )
    epochs: int = Field(10, ge=1, le=1000, description="Most passes over the training rows.")
    batch_size: int = Field(1024, ge=1, description="Rows per optimiser step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="AdamW's learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay.")
    early_stopping_patience: int = Field(
        3,
        ge=1,
        description="Stop after this many epochs without a better validation loss; the best epoch is kept.",
    )
    seed: int = _SEED
    threads: int = Field(2, ge=1, description="torch intra-op threads during training.")


class TrainingSpec(_Strict):
    schedule: Schedule = Field(
        "@monthly",
        description="5-field cron or a preset (@hourly, @daily, @weekly, @monthly, @quarterly, @yearly); "
        "the DAG also runs on drift events.",
    )
    window_days: int = Field(
        60,
        ge=1,
        description="Days of curated data the model is trained on, the last evaluation_days of them held "
        f"out for the gate. The rest must hold at least {MIN_TRAINING_ROWS} labelled rows after the "
        "validation_fraction split, or the train task fails saying how many it found.",
    )
    evaluation_days: int = Field(
        7,
        ge=1,
        description="Days held out for the gate: the last this many calendar days up to the newest day "
        "of the window that has data (days without data at the window's end do not shorten it).",
    )
    validation_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Share of training rows used for early stopping: whole training days, drawn at "
        "random (seeded) until they hold about this share, when that comes to 3 days or more (rows of "
        "one day share its weather and events, so rows drawn from every day would judge the model on "
        "days it trains on); rows at random in a shorter window.",
    )
    max_rows: int | None = Field(None, ge=1, description="Cap on training rows (seeded sample).")

    @model_validator(mode="after")
    def _eval_inside_window(self) -> TrainingSpec:
        if self.evaluation_days >= self.window_days:
            raise _RuleError(
                ("evaluation_days", "window_days"),
                f"evaluation_days ({self.evaluation_days}) must be smaller than window_days ({self.window_days})",
            )
        # The cap applies before the early-stopping split: what is left must be enough to train on.
        least = math.ceil(MIN_TRAINING_ROWS / (1 - self.validation_fraction)) + 1
        if self.max_rows is not None and self.max_rows < least:
            raise _RuleError(
                "max_rows",
                f"{self.max_rows} leaves fewer than {MIN_TRAINING_ROWS} rows to train on after the "
                f"validation_fraction ({self.validation_fraction}) split: every run would fail; use at "
                f"least {least}",
            )
        return self


class ExportSpec(_Strict):
    parity_tolerance: float = Field(
        1e-4,
        gt=0,
        description="Max difference between torch and onnxruntime outputs: absolute for probabilities, "
        "in target standard deviations for a regression score.",
    )
    parity_rows: int = Field(
        2048, ge=1, description="Evaluation rows the torch/onnxruntime parity check scores."
    )
    quantize: bool = Field(
        False,
        description="Try dynamic int8 quantisation. Its activations are scaled per batch of rows, so one "
        "extreme row moves the scores of the other rows of its batch (beyond quantize_score_tolerance for "
        "values far outside the parity rows' range): use it only where validation bounds every numeric "
        "feature (min/max).",
    )
    quantize_metric_tolerance: float = Field(
        0.005, ge=0, description="Accept the int8 model only if the gate metric drops less than this."
    )
    quantize_score_tolerance: float = Field(
        0.02,
        gt=0,
        description="Accept the int8 model only if its outputs stay within this of the torch model's "
        "on the parity rows (as parity_tolerance, in target standard deviations for regression).",
    )


MetricName = Literal["roc_auc", "pr_auc", "log_loss", "accuracy", "f1", "rmse", "mae"]
_SHARE_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1")


class GateSpec(_Strict):
    primary_metric: MetricName = Field(
        "roc_auc", description="The metric the gate compares (a loss or error: lower is better)."
    )
    min_value: float | None = Field(None, description="Absolute floor (ceiling for losses).")
    min_improvement: float = Field(
        0.0, ge=0, description="Margin by which the challenger must beat the champion."
    )
    max_onnx_bytes: int | None = Field(None, ge=1, description="Reject a model file larger than this.")
    max_p95_batch_latency_ms: float | None = Field(
        None,
        gt=0,
        description="Reject a model whose p95 time to score one batch of latency_batch_rows exceeds this.",
    )
    latency_batch_rows: int = Field(
        1024, ge=1, description="Rows per batch of the gate's latency measurement."
    )

    @model_validator(mode="after")
    def _floor_in_range(self) -> GateSpec:
        if self.min_value is None:
            return self
        if self.primary_metric in _SHARE_METRICS and not 0 <= self.min_value <= 1:
            raise _RuleError(
                "min_value",
                f"{self.min_value} is outside 0..1, the range of {self.primary_metric} "
                "(a share, not a percentage): no model could pass",
            )
        if self.min_value < 0:
            raise _RuleError("min_value", f"{self.min_value} is a negative ceiling for {self.primary_metric}")
        return self


class InferenceSpec(_Strict):
    schedule: DailySchedule = Field(
        "@daily",
        description="5-field cron or a preset, as training.schedule, firing once a day: each run "
        "scores one day.",
    )
    catchup: bool = Field(
        False,
        description="True: days the scheduler missed (down, or the DAG paused) are scored when it is back, "
        "up to 4 at a time, from start_date on; set start_date to the first day to score. False: only the "
        "latest day is, and missed days need a backfill (`airflow backfill create`).",
    )
    batch_rows: int = Field(
        4096,
        ge=1,
        description="Rows per onnxruntime call: the activations of a small batch stay in the CPU cache "
        "(4,096 scored 1.1x the rows/s of 8,192 end to end on an AVX2 host; an AVX-512 host scored "
        "4k-32k alike).",
    )
    part_rows: int = Field(
        2_000_000,
        ge=1,
        description="Rows per output part, and per mapped task: a task costs a second or more of start-up whatever "
        "its size, 2M rows score in about a second on 2 cores, and memory does not grow with it.",
    )
    scoring_threads: int = Field(
        0,
        ge=0,
        description="Batches batch inference scores at the same time, each by a single-threaded onnxruntime "
        "call (0: one per CPU core the task may use; set it to the worker's CPU limit in containers). 1 scores "
        "one batch at a time with intra_op_threads threads.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime threads inside one call (0 lets onnxruntime pick): the evaluation gate, "
        "the drift monitor, and batch inference when scoring_threads is 1.",
    )
    shadow_sample_rows: int = Field(
        200_000,
        ge=1000,
        description="Most rows the shadow report compares: a day with more is compared on a sample of "
        "its keys (the same keys on the champion's, the challenger's and the curated side; seeded by the "
        "keys' hash, so reruns agree), read one part at a time, so the report's memory does not grow with "
        "the day (its frames take about 1 KB per row). 200,000 rows estimate agreement and ROC AUC to "
        "about 0.002.",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime's graph optimisation level."
    )


class DriftSpec(_Strict):
    schedule: DailySchedule = Field(
        None,
        description="Optional cron or preset (as training.schedule) in addition to the predictions asset, "
        "firing once a day: each run checks one day, starting when that day is over - as batch "
        "inference's run of the day does, so give it a later hour (e.g. '0 6 * * *') to check the day "
        "after its predictions are published.",
    )
    window_days: int = Field(
        7, ge=1, description="Days of scored rows each check compares, ending on the checked day."
    )
    drift_share_threshold: float = Field(
        0.3, gt=0, le=1, description="Retrain when at least this share of the monitored columns drifted."
    )
    critical_columns: list[str] = Field(
        default_factory=list,
        description="Columns whose drift alone requests a retrain (also monitored if not features).",
    )
    column_p_value: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Columns compared by a test (the reference has at most 1000 values of the column; a "
        "categorical column also when the smaller side has at most 30 values per distinct value): drift "
        "when the p-value is at or below this (Kolmogorov-Smirnov, numeric columns) or below it "
        "(chi-squared / z, categorical columns). The model's score follows the same rule.",
    )
    wasserstein_threshold: float = Field(
        0.1,
        gt=0,
        description="Numeric columns of more than 5 distinct values, when the reference has more than "
        "1000 values (else column_p_value decides), however small the current window: drift when "
        "Wasserstein distance / reference std >= this. Also the model's score (prediction drift: the "
        "champion's scores of the window vs of its training data), which alone requests a retrain, "
        "whatever drift_share_threshold.",
    )
    jensenshannon_threshold: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Categorical columns, and numeric ones of at most 5 distinct values, when the "
        "reference has more than 1000 values and both sides more than 30 per distinct value (else "
        "column_p_value decides: the distance's noise on fewer rows reads as drift): drift when "
        "Jensen-Shannon distance >= this.",
    )
    max_missing_share_increase: float = Field(
        0.2,
        gt=0,
        le=1,
        description="A monitored column (or the model's score) whose share of missing values in the "
        "window exceeds the reference's by more than this (0.2: 20 percentage points; a column the "
        "window has no value of at all included) is a data-quality finding, not drift: the check alerts "
        "(event data_quality) and lists it, and its status is data_quality when nothing asks for a "
        "retrain. It never requests a retrain by itself (a feed that broke is fixed at the feed), nor "
        "holds back one that drift requests. The values present are compared as usual.",
    )
    max_metric_drop: float = Field(
        0.05,
        ge=0,
        description="Retrain when the live primary metric (labels arrived) is worse than the champion's "
        "gate value by more than this, in the metric's own units: right for roc_auc, pr_auc, accuracy "
        "and f1; for rmse or mae set it in the label's units, above the metric's week-to-week noise, or "
        "every check of an unchanged model may request a retrain.",
    )
    retrain_after_new_rows: int | None = Field(
        None, ge=1, description="Retrain when this many validated rows arrived since the champion's window."
    )
    sample_rows: int = Field(
        50_000, ge=1000, description="Rows per side (seeded sample) the drift statistics and decision use."
    )
    report_rows: int = Field(
        5_000,
        ge=1000,
        description="Rows per side (seeded sample, at most sample_rows) in the Evidently HTML report: its "
        "rendering cost grows with the rows, and the decision does not depend on it.",
    )
    min_rows: int = Field(
        1000, ge=1, description="Fewer rows on a side (or labelled rows, for the live metric): no decision."
    )
    cooldown_days: int = Field(
        7, ge=0, description="No second retrain request less than this many days from one already made."
    )
    seed: int = _SEED

    @model_validator(mode="after")
    def _min_rows_fit_the_sample(self) -> DriftSpec:
        # The live metric counts the labelled rows of the sample: above sample_rows it never runs.
        if self.min_rows > self.sample_rows:
            raise _RuleError(
                ("min_rows", "sample_rows"),
                f"min_rows ({self.min_rows}) is above sample_rows ({self.sample_rows}): the live metric, "
                "computed on the sample, would never have enough rows",
            )
        return self


class StorageSpec(_Strict):
    connection_id: str = Field(
        "mlops_s3",
        pattern=_CONN_ID,
        max_length=250,
        description="Airflow connection (type aws) of the object store.",
    )
    bucket: Annotated[str, Field(pattern=_BUCKET, description="S3 bucket of the pipeline.")] = "mlops"
    prefix: str | None = Field(None, description="Key prefix of this pipeline; defaults to its name.")

    @field_validator("prefix")
    @classmethod
    def _safe_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # "a//b" and "a/./b" are keys S3 stores as written but no report link can name safely.
        if not _SAFE_PREFIX.match(value) or any(part in ("", ".") for part in value.strip("/").split("/")):
            raise ValueError(
                "prefix must be a relative key path of named segments: no empty or '.' segment, no "
                "'..', '\\' or leading '/'"
            )
        return value.strip("/")


class MlflowSpec(_Strict):
    connection_id: str = Field(
        "mlops_mlflow",
        pattern=_CONN_ID,
        max_length=250,
        description="Airflow connection whose host (URL) is the MLflow tracking URI.",
    )
    experiment: str | None = Field(
        None,
        pattern=_EXPERIMENT_NAME,
        max_length=250,
        description="Defaults to the pipeline name; one pipeline per experiment.",
    )
    registered_model: str | None = Field(
        None,
        pattern=_MLFLOW_NAME,
        max_length=250,
        description="Defaults to the pipeline name; no '/' or ':' (MLflow refuses them); one pipeline per model.",
    )

    @field_validator("registered_model")
    @classmethod
    def _searchable(cls, value: str | None) -> str | None:
        # MLflow's search filters quote a name in ' or " and know no escapes (tracking.quoted).
        if value is not None and "'" in value and '"' in value:
            raise ValueError(
                "a registered model name may hold ' or \" but not both: MLflow could not search for it"
            )
        return value


class PipelineConfig(_Strict):
    name: Annotated[str, Field(pattern=_IDENTIFIER, description="Pipeline id; DAG ids start with it.")]
    description: str = Field("", description="Shown in the DAGs' docs.")
    start_date: dt.date = Field(description="First logical date of every DAG of this pipeline.")
    end_date: dt.date | None = Field(
        None,
        description="Last date the DAGs run on (a finite data set, like the example's 2013). As with any "
        "Airflow end_date, a run dated after it runs no task at all (Airflow marks it successful), manual "
        "runs included; asset-triggered runs carry no date and still run (a retrain request with "
        "window_end trains on any window). Scheduled training runs once more, at its first fire time after "
        "end_date, so that its window holds the last days.",
    )
    timezone: str = Field(
        "UTC",
        description="IANA time zone of the pipeline's days (e.g. America/New_York): the days of its "
        "date= partitions, of start_date and end_date, and of its schedules. A daily run of a day then "
        "starts when that day is over there, and works on that local day. Timestamps in landing files "
        "without an offset are times in this zone (a local time a daylight-saving change skips or "
        "repeats is a bad value). UTC unless your partitions are local days.",
    )
    owner: str = Field("mlops", description="The DAGs' owner in Airflow.")
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a task that failed for an infrastructure reason."
    )
    task_timeout_minutes: int = Field(
        360,
        ge=1,
        description="Longest any task of this pipeline may run: a hung task (a stalled connection, a "
        "stuck training) then fails and is retried. Without a limit it would hold its worker slot forever "
        "and, as training runs one run at a time, stop every later training run of the pipeline.",
    )
    storage: StorageSpec = StorageSpec()
    mlflow: MlflowSpec = MlflowSpec()
    data: DataSpec
    validation: ValidationSpec = ValidationSpec()
    target: TargetSpec
    features: FeatureSpec
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    export: ExportSpec = ExportSpec()
    gate: GateSpec = GateSpec()
    inference: InferenceSpec = InferenceSpec()
    drift: DriftSpec = DriftSpec()

    @model_validator(mode="after")
    def _columns_exist(self) -> PipelineConfig:
        known = {c.name for c in self.data.all_columns()}
        features = {
            "features.numeric": self.features.numeric,
            "features.categorical": self.features.categorical,
        }
        for field, names in features.items():
            unknown = [f for f in names if f not in known]
            if unknown:
                raise _RuleError(field, f"features {unknown} are not columns of data.columns or a join")
        if self.target.column not in known:
            raise _RuleError(
                "target.column", f"'{self.target.column}' is not a column of data.columns or a join"
            )
        leaks = [field for field, names in features.items() if self.target.column in names]
        if leaks:
            raise _RuleError(
                ("target.column", *leaks),
                f"target column '{self.target.column}' is also a feature (label leak)",
            )
        # Predictions hold the keys beside the model's columns, and the drift monitor and the shadow
        # report join them with curated features and the target: one name would mean two columns.
        named = {"data.key": self.data.key, **features, "target.column": [self.target.column]}
        clashing = [
            c
            for c in dict.fromkeys(c for names in named.values() for c in names)
            if c in PREDICTION_COLUMNS or c.startswith("probability_")
        ]
        if clashing:
            raise _RuleError(
                tuple(field for field, names in named.items() if set(names) & set(clashing)),
                f"columns {clashing} are named like the columns batch inference adds to predictions "
                f"{[*PREDICTION_COLUMNS, 'probability_<class>']}; rename them (and their data.columns entries)",
            )
        types = {c.name: c.type for c in self.data.all_columns()}
        # The model reads numeric features as numbers: category values are not, and a timestamp
        # would be nanoseconds in float32 (and a missing one a huge negative number in drift).
        not_numbers = {
            f: types[f] for f in self.features.numeric if types[f] in ("category", "string", "timestamp")
        }
        if not_numbers:
            advice = {
                "category": "list category columns under features.categorical",
                "string": "list string columns under features.categorical, or declare the column int or float",
                "timestamp": "derive a numeric column (e.g. the hour) from a timestamp",
            }
            raise _RuleError(
                "features.numeric",
                ", ".join(f"'{f}' ({t})" for f, t in not_numbers.items())
                + " cannot be read as numbers by the model; "
                + "; ".join(advice[t] for t in sorted(set(not_numbers.values()))),
            )
        target_type = types[self.target.column]
        # features.derive_label coerces the column to numbers for a positive_when rule and for
        # regression: category/string values would all become missing labels.
        if target_type in ("category", "string"):
            if self.target.positive_when is not None:
                raise _RuleError(
                    "target.positive_when",
                    f"positive_when compares numbers, but target column '{self.target.column}' is "
                    f"{target_type}: every label would be missing; declare the column int or float, or drop "
                    "positive_when to use its values as the classes",
                )
            if self.target.task == "regression":
                raise _RuleError(
                    "target.task",
                    f"regression needs a numeric target, but column '{self.target.column}' is "
                    f"{target_type}: every label would be missing; use task binary or multiclass",
                )
            allowed = next(c.allowed for c in self.data.all_columns() if c.name == self.target.column)
            if self.target.task == "binary" and allowed is not None and len(set(allowed)) != 2:
                raise _RuleError(
                    "target.task",
                    f"binary needs 2 classes, but target column '{self.target.column}' allows "
                    f"{len(set(allowed))} values {sorted(set(allowed))}; use task multiclass",
                )
        if self.end_date is not None and self.end_date < self.start_date:
            raise _RuleError(
                "end_date",
                f"{self.end_date} is before start_date ({self.start_date}): nothing would be scheduled",
            )
        if _repeated(self.drift.critical_columns):
            raise _RuleError(
                "drift.critical_columns", f"{_repeated(self.drift.critical_columns)} listed more than once"
            )
        unknown_critical = [c for c in self.drift.critical_columns if c not in known]
        if unknown_critical:
            raise _RuleError(
                "drift.critical_columns", f"{unknown_critical} are not columns of data.columns or a join"
            )
        # Compared as categories, timestamps never repeat from one day to the next: every value would
        # be unseen by the model and drifted for the monitor (a retrain requested every cooldown).
        types = {c.name: c.type for c in self.data.all_columns()}
        as_categories = {
            "features.categorical": self.features.categorical,
            "drift.critical_columns": self.drift.critical_columns,
        }
        for field, columns in as_categories.items():
            timestamps = [c for c in columns if types[c] == "timestamp"]
            if timestamps:
                raise _RuleError(
                    field,
                    f"timestamp column(s) {timestamps} have values that are new every day: as "
                    "categories each would be unseen by the model and drifted for the monitor; derive a "
                    "column that repeats (e.g. the hour or the weekday) and list that instead",
                )
        metric, task = self.gate.primary_metric, self.target.task
        if task == "regression" and metric not in ("rmse", "mae"):
            raise _RuleError(
                "gate.primary_metric", f"regression pipelines (target.task) gate on rmse or mae, not {metric}"
            )
        if task != "regression" and metric in ("rmse", "mae"):
            raise _RuleError(
                "gate.primary_metric",
                f"{task} pipelines (target.task) cannot gate on {metric}, a regression error; use one of "
                + ", ".join(m for m in get_args(MetricName) if m not in ("rmse", "mae")),
            )
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"'{value}' is not a time zone name of the IANA database (e.g. UTC, America/New_York, "
                "Europe/Berlin)"
            ) from None
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The pipeline's time zone (``timezone``)."""
        return zoneinfo.ZoneInfo(self.timezone)

    # Derived names, in one place so DAGs, CLI and UI agree.
    @property
    def prefix(self) -> str:
        return self.storage.prefix or self.name

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.mlflow.registered_model or self.name

    def dag_id(self, kind: Literal["training", "batch_inference", "drift_monitor"]) -> str:
        return f"{self.name}_{kind}"


class _NotADate(Exception):
    """A plain scalar shaped like a YAML timestamp (``2024-02-30``) that names no real date or time."""

    def __init__(self, node: yaml.ScalarNode, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


class _ConfigLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated in one mapping: PyYAML keeps the last value, so a
    second ``gate:`` block would silently drop the first one's settings. An impossible date raises
    :class:`_NotADate` with its node, so the error names its field and line, not only the YAML."""

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> dt.date | dt.datetime:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:  # the shape of a date, but e.g. day 30 of February or month 13
            raise _NotADate(node, str(exc)) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor": merged by SafeLoader below
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # a list or mapping as a key: SafeLoader refuses it with its own error
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _ConfigLoader.construct_yaml_timestamp)


def _node_path(root: yaml.Node, target: yaml.Node) -> str:
    """The dotted field path of ``target`` in the document ``root``, as pydantic names fields (list
    items by index; a mapping key by its own path). Walked without recursion: documents may nest deeply."""
    pending: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    seen: set[int] = set()
    while pending:
        node, path = pending.pop()
        if node is target:
            return ".".join(path)
        if id(node) in seen:  # an alias repeats a node, and may refer to its own parent
            continue
        seen.add(id(node))
        children: list[tuple[yaml.Node, tuple[str, ...]]] = []
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*path, str(key.value)) if isinstance(key, yaml.ScalarNode) else path
                children += [(key, here), (value, here)]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, (*path, str(i))) for i, item in enumerate(node.value)]
        pending += reversed(children)  # document order: the first place a repeated node appears
    return ""


# What a field's pattern asks for, in words (pydantic quotes the bare regex).
_PATTERN_WORDS = {
    _IDENTIFIER: "a lowercase identifier: a letter a-z, then up to 62 letters a-z, digits or '_'",
    _BUCKET: "an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-', "
    "starting and ending with a letter or digit",
}


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "string_pattern_mismatch" and e["ctx"]["pattern"] in _PATTERN_WORDS:
            msg = f"must be {_PATTERN_WORDS[e['ctx']['pattern']]}"
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        fix = {"string_type": "quote the value", "bool_for_number": "write a number"}.get(e["type"])
        if e["msg"] == "Keys should be strings" and isinstance(got, bool):
            loc = ".".join(str(p) for p in e["loc"][:-1])  # the mapping: its last item is the key's index
            msg = f"a key reads as the boolean {str(got).lower()}"
            fix = "quote the key, or write the field's name (a join's columns are `keys:`)"
        if fix and (isinstance(got, bool) or e["type"] == "bool_for_number"):  # a list holding one too
            shown += f"; YAML reads unquoted yes/no/on/off/true/false as booleans: {fix}"
        rule = e.get("ctx", {}).get("error")
        fields = [f"{loc}.{f}" if loc else f for f in rule.fields] if isinstance(rule, _RuleError) else [loc]
        where = _fields(*fields)
        lines.append(f"{where}: {msg}{shown}" if where else f"{msg}{shown}")
    return f"{path}: invalid pipeline config: " + "; ".join(lines)


def _fields(*paths: str) -> str:
    """``field 'a'`` or ``fields 'a' + 'b'``: how an error message names its fields ("" for none)."""
    named = [f"'{p}'" for p in paths if p]
    return f"{'field' if len(named) == 1 else 'fields'} {' + '.join(named)}" if named else ""


def load_config(path: str | Path) -> PipelineConfig:
    """Load and validate one pipeline config; raise :class:`ConfigError` naming file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline config file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline config: {exc}") from None
    root: yaml.Node | None = None
    try:
        loader = _ConfigLoader(text)  # what yaml.safe_load does, with repeated keys and bad dates refused
        try:
            root = loader.get_single_node()
            raw = None if root is None else loader.construct_document(root)
        finally:
            loader.dispose()
    except _NotADate as bad:
        field = _fields(_node_path(root, bad.node) if root is not None else "")
        where = " ".join(filter(None, (field, f"(line {bad.node.start_mark.line + 1})")))
        what = "date and time" if ":" in bad.node.value else "date"
        raise ConfigError(
            f"{path}: invalid pipeline config: {where}: {bad.node.value} is not a real {what} ({bad.reason})"
        ) from None
    except yaml.MarkedYAMLError as exc:  # one line, at the line and column of the problem
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = "; ".join(filter(None, (exc.context, exc.problem))) or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML: {what}{where}") from None
    except Exception as exc:  # YAMLError, RecursionError (too deep), ...: one file's problem, never all DAGs'
        text = " ".join(str(exc).split())[:500]
        raise ConfigError(f"{path}: not valid YAML: {text or type(exc).__name__}") from None
    if raw is None:
        raise ConfigError(f"{path}: the pipeline config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline config must be a YAML mapping, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None


def config_dir() -> Path:
    return Path(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR)


def require_config_dir(directory: Path | None = None) -> Path:
    """The pipeline config directory (``directory``, else :func:`config_dir`); a :class:`ConfigError`
    naming it and ``$MLOPS_TASKS_CONFIG_DIR`` when it does not exist. A mistyped path, or an install
    whose default ``<package>/../configs`` is not there (a wheel in site-packages), would otherwise
    just yield no pipelines: no DAGs and no error."""
    directory = Path(directory or config_dir())
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        env = os.environ.get(CONFIG_DIR_ENV)
        now = f"now {env!r}" if env else f"not set, so the default {DEFAULT_CONFIG_DIR}"
        raise ConfigError(
            f"{directory}: pipeline config directory {what}; set ${CONFIG_DIR_ENV} ({now}) to the "
            "directory holding the pipeline YAML files"
        )
    return directory


def config_paths(directory: Path | None = None) -> list[Path]:
    """The pipeline YAML files of the directory (:func:`require_config_dir`: it must exist), at least
    one: an empty directory (a volume mounted over the wrong path) scheduled nothing and said nothing."""
    directory = require_config_dir(directory)
    paths = sorted(p for p in directory.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    if not paths:
        raise ConfigError(
            f"{directory}: pipeline config directory holds no pipeline YAML file (*.yaml, *.yml); put "
            f"the pipeline configs there, or set ${CONFIG_DIR_ENV} to the directory holding them"
        )
    return paths


def load_each(paths: list[Path]) -> Iterator[tuple[Path, PipelineConfig | ConfigError]]:
    """Each config of ``paths`` in turn, or the :class:`ConfigError` why it cannot run beside the
    configs before it: it must be valid, and no two may share a pipeline name (DAG ids), an MLflow
    registered model or experiment on one MLflow connection, or a storage location (``storage.bucket`` + prefix: publishing a partition deletes the objects its manifest
    does not list, so one pipeline would delete the other's). The error names both files."""
    names: dict[str, Path] = {}
    locations: dict[tuple[str, str], Path] = {}
    mlflow_names: dict[tuple[str, str, str], Path] = {}
    for path in paths:
        try:
            cfg = load_config(path)
            if cfg.name in names:
                raise ConfigError(
                    f"{path}: field 'name': pipeline name '{cfg.name}' is already used by {names[cfg.name]}"
                )
            # On one MLflow server, two pipelines sharing a registered model would gate against and
            # serve each other's champion; sharing an experiment, mix their runs.
            server = cfg.mlflow.connection_id
            for field, what, value in (
                ("mlflow.registered_model", "registered model", cfg.registered_model_name),
                ("mlflow.experiment", "experiment", cfg.experiment_name),
            ):
                if (server, what, value) in mlflow_names:
                    raise ConfigError(
                        f"{path}: field '{field}': MLflow {what} '{value}' (connection '{server}') is "
                        f"already used by {mlflow_names[server, what, value]}; each pipeline needs its own "
                        f"(it defaults to the pipeline name)"
                    )
            where = (cfg.storage.bucket, cfg.prefix)
            # One pipeline's area inside another's: the outer one's report links would serve the
            # inner one's reports to whoever may read the outer pipeline.
            taken = next(
                (
                    (bucket, prefix)
                    for bucket, prefix in locations
                    if bucket == where[0]
                    and (f"{prefix}/".startswith(f"{where[1]}/") or f"{where[1]}/".startswith(f"{prefix}/"))
                ),
                None,
            )
            if taken is not None:
                raise ConfigError(
                    f"{path}: fields 'storage.bucket' + 'storage.prefix': s3://{where[0]}/{where[1]}/ "
                    f"overlaps s3://{taken[0]}/{taken[1]}/, used by {locations[taken]}; pipelines would "
                    "overwrite and delete each other's data"
                )
        except ConfigError as exc:
            yield path, exc
            continue
        names[cfg.name], locations[where] = path, path
        mlflow_names[server, "registered model", cfg.registered_model_name] = path
        mlflow_names[server, "experiment", cfg.experiment_name] = path
        yield path, cfg


def load_configs(paths: list[Path]) -> dict[Path, PipelineConfig]:
    """Configs that run side by side (see :func:`load_each`); the first problem is raised."""
    configs: dict[Path, PipelineConfig] = {}
    for path, loaded in load_each(paths):
        if isinstance(loaded, ConfigError):
            raise loaded
        configs[path] = loaded
    return configs


def load_pipeline(name: str, directory: Path | None = None) -> PipelineConfig:
    """The config of pipeline ``name`` (its ``name:`` field, else its file stem) exactly as the DAG
    file built it (:func:`load_each`): another config's mistake does not fail this pipeline's tasks,
    and of two files claiming one name the tasks use the one its DAGs were built from."""
    by_stem: PipelineConfig | ConfigError | None = None
    for path, loaded in load_each(config_paths(directory)):
        if isinstance(loaded, PipelineConfig) and loaded.name == name:
            return loaded
        if path.stem == name and by_stem is None:
            by_stem = loaded
    if by_stem is not None:
        if isinstance(by_stem, ConfigError):
            raise by_stem
        return by_stem
    raise ConfigError(
        f"no pipeline named '{name}' in {directory or config_dir()} (the pipeline config directory: set "
        f"${CONFIG_DIR_ENV} to the directory holding its YAML file)"
    )


def json_schema() -> dict[str, Any]:
    return PipelineConfig.model_json_schema()


def render_reference() -> str:
    """Markdown reference of every config field, generated from the models (docs/configuration.md)."""
    schema = json_schema()
    defs = schema.get("$defs", {})
    out = [
        "# Pipeline configuration reference",
        "",
        "Generated from `mlops_tasks/config.py` by `mlops-tasks config-reference`; do not edit by hand.",
        "One YAML file per pipeline in `configs/` (or `$MLOPS_TASKS_CONFIG_DIR`). Unknown keys are errors.",
        "Secrets never go here: the config names Airflow connection ids only.",
        "",
    ]

    models = _models(PipelineConfig)

    def describe(section: str, node: dict[str, Any]) -> None:
        out.extend([f"## `{section}`", "", "| field | type | default | description |", "|---|---|---|---|"])
        required = set(node.get("required", []))
        model = models.get(node.get("title", ""), PipelineConfig)
        for field, prop in node.get("properties", {}).items():
            typ = _type_name(prop)
            # The schema has no default of a default_factory (e.g. hidden_layers [128, 64]): the model does.
            value = (
                prop["default"]
                if "default" in prop
                else model.model_fields[field].get_default(call_default_factory=True)
            )
            default = "required" if field in required else json.dumps(value, default=str)
            out.append(f"| `{field}` | {typ} | {default} | {prop.get('description', '')} |")
        out.append("")

    describe("(top level)", schema)
    for name, node in defs.items():
        describe(name, node)
    out.extend(["## JSON schema", "", "```json", json.dumps(schema, indent=1), "```", ""])
    return "\n".join(out)


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model class reachable from ``root``'s fields, by name (the schema's ``$defs`` titles)."""
    found: dict[str, type[BaseModel]] = {}
    pending = [root]
    while pending:
        model = pending.pop()
        if model.__name__ in found:
            continue
        found[model.__name__] = model
        for field in model.model_fields.values():
            pending += [
                t for t in _types_in(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)
            ]
    return found


def _types_in(annotation: Any) -> list[Any]:
    return [annotation, *(t for arg in get_args(annotation) for t in _types_in(arg))]


def _type_name(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " \\| ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    if "anyOf" in prop:
        return " \\| ".join(_type_name(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{_type_name(prop.get('items', {}))}]"
    if prop.get("format") in ("date", "date-time"):
        return prop["format"].replace("-", " ")
    if prop.get("pattern") in _PATTERN_WORDS:
        return f"string: {_PATTERN_WORDS[prop['pattern']]}"
    return str(prop.get("type", "any")) + _limits(prop)


_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def _limits(prop: dict[str, Any]) -> str:
    """``prop``'s bounds as the reference shows them after its type, e.g. `` (>= 1, <= 1000)``."""
    bounds = [f"{op} {prop[key]}" for key, op in _BOUNDS.items() if key in prop]
    shortest, longest = prop.get("minLength"), prop.get("maxLength")
    if shortest == longest and shortest is not None:
        bounds.append(f"{shortest} character{'s' if shortest != 1 else ''}")
    elif shortest and longest:
        bounds.append(f"{shortest} to {longest} characters")
    elif longest:
        bounds.append(f"<= {longest} characters")
    elif shortest:
        bounds.append("not empty" if shortest == 1 else f">= {shortest} characters")
    return f" ({', '.join(bounds)})" if bounds else ""
