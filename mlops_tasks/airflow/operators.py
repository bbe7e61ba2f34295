"""Thin, reusable operators: each stores its arguments, builds hooks in ``execute`` and calls one stage
function. Heavy libraries are imported inside ``execute`` so DAG files parse fast.

Every operator names its pipeline (the ``name`` in ``configs/<pipeline>.yaml``); dates are templated
and default to the run's logical date, never the wall clock. Return values (XCom) are small dicts.
Data problems (any :class:`mlops_tasks.errors.DataError`: bad rows, a broken config or model
contract) fail the task at once with :class:`AirflowFailException`, as retrying bad data is
pointless; infrastructure problems raise ordinary exceptions so Airflow retries with backoff.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from mlops_tasks.airflow.hooks import MlflowHook, ObjectStoreHook
from mlops_tasks.airflow.links import (
    DriftReportLink,
    GateReportLink,
    MlflowRunLink,
    RegisteredModelLink,
    StoredLink,
    ValidationReportLink,
    mlflow_run_url,
    model_version_url,
    report_url,
)
from mlops_tasks.airflow.notifiers import alert_key, announce
from mlops_tasks.config import ConfigError, PipelineConfig, load_pipeline
from mlops_tasks.errors import DataError
from mlops_tasks.observability import emit, role_step

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlops_tasks.ingestion import IngestionPlan
    from mlops_tasks.storage import ObjectStore

_Item = TypeVar("_Item")
log = logging.getLogger(__name__)


def as_date(value: str | dt.date | dt.datetime, zone: dt.tzinfo = dt.UTC) -> dt.date:
    """A day from a date, a datetime or ISO text (a rendered template, an asset event's extra): a
    whole date or datetime, the day of a datetime with an offset taken in ``zone`` (the pipeline's
    time zone). Other text (``2013-01-05garbage``) fails the task at once: a retry would render or
    receive the same text."""
    if isinstance(value, dt.datetime):
        return (value.astimezone(zone) if value.tzinfo else value).date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    try:
        return (
            dt.date.fromisoformat(text) if len(text) == 10 else as_date(dt.datetime.fromisoformat(text), zone)
        )
    except ValueError:
        raise AirflowFailException(
            f"{str(value)[:100]!r} is not a date (YYYY-MM-DD): check the task's day/window_end argument, "
            "its template, or the extra of the asset event that triggered the run"
        ) from None


def run_day(day: str | dt.date | None, context: Context, zone: dt.tzinfo = dt.UTC) -> dt.date:
    """The day a task works on: its ``day`` argument, else the trigger form's, else the run's logical
    date: its day in ``zone``, the pipeline's time zone.

    Not ``{{ ds }}`` as a default: asset-triggered runs have no logical date, and the template would
    fail to render before the task could say what is wrong.
    """
    if day:
        return as_date(day, zone)
    asked = _form_day(context, "day", zone)
    if asked:
        return asked
    logical = context.get("logical_date")
    if logical is None:
        raise AirflowFailException(
            "this run has no logical date (asset-triggered) and the task was given no 'day': "
            "pass day=... or trigger the DAG with a logical date"
        )
    day = as_date(logical, zone)
    # A scheduled run starts after its day ends. Airflow's trigger form fills in the current time as
    # the logical date, which would score (and announce to the drift monitor) a day still arriving.
    _refuse_unfinished_day(
        context,
        day,
        f"this run's logical date {logical.isoformat()} is on",
        "Trigger the run with the logical date of the day to process, e.g. {last}T00:00:00"
        + ("Z" if zone == dt.UTC else f" in {zone}"),
        zone,
    )
    return day


def _form_day(context: Context, name: str, zone: dt.tzinfo) -> dt.date | None:
    """The day the trigger form's field ``name`` (the DAG's params) asks for, or None; refused when it
    had not ended when the run was created, as a logical date is."""
    asked = (context.get("params") or {}).get(name)
    if not asked:
        return None
    day = as_date(asked, zone)
    fix = f"Trigger it with a {name} that is over, e.g. {{last}}"
    _refuse_unfinished_day(context, day, f"this run's {name} parameter is", fix, zone)
    return day


def _refuse_unfinished_day(
    context: Context, day: dt.date, asked: str, fix: str, zone: dt.tzinfo = dt.UTC
) -> None:
    """AirflowFailException when ``day`` had not ended in ``zone`` when the run was created: its
    data may still be arriving. ``asked`` says what names the day; ``fix`` how to ask instead
    (``{last}`` = the last complete day then)."""
    run_after = getattr(context.get("dag_run"), "run_after", None)
    if run_after is not None and day >= as_date(run_after, zone):
        created = as_date(run_after, zone)
        raise AirflowFailException(
            f"{asked} {day}, a day that had not ended when the run was created ({created}): its data "
            f"may still be arriving. {fix.format(last=created - dt.timedelta(days=1))}"
        )


def window_days(cfg: PipelineConfig, window_end: dt.date) -> list[dt.date]:
    """The training window: ``training.window_days`` days ending with ``window_end`` (inclusive)."""
    start = window_end - dt.timedelta(days=cfg.training.window_days - 1)
    return [start + dt.timedelta(days=i) for i in range(cfg.training.window_days)]


def retrain_window_end(context: Context, zone: dt.tzinfo = dt.UTC) -> tuple[dt.date, str]:
    """End of the training window and what started the run.

    A drift (or external) retrain event carries ``window_end`` in its extra: the example's data is
    from 2013 while the event is emitted today, so the event, not the wall clock, says which data is
    current. Scheduled runs train up to the last day of their data interval.
    """
    events = context.get("triggering_asset_events") or {}
    # A run may take in several events (drift, a late backfill request, an external one): it trains
    # up to the latest window asked for, whatever order they came in.
    requests = [
        (as_date(extra["window_end"], zone), extra)
        for asset_events in events.values()
        for extra in (event.extra or {} for event in asset_events)
        if extra.get("window_end")
    ]
    if requests:
        window_end, extra = max(requests, key=lambda request: request[0])
        # As run_day: a window ending on a day not over would curate and gate on a day whose data
        # may still be arriving (an external event's typo, or "today").
        _refuse_unfinished_day(
            context,
            window_end,
            "the retrain event asks for a window ending",
            "Send the event with the last complete day as window_end, e.g. {last}",
            zone,
        )
        reason = extra.get("reason", "asset event")
        return window_end, f"asset:{extra.get('source', 'external')}: {reason}"
    asked = _form_day(context, "window_end", zone)
    if asked:
        return asked, "manual: window_end parameter"
    # Asset-triggered and manual runs without a logical date have neither of the first two.
    interval_end = (
        context.get("data_interval_end") or context.get("logical_date") or context["dag_run"].run_after
    )
    run_type = context["dag_run"].run_type
    run_type = str(getattr(run_type, "value", run_type))
    trigger = "schedule" if run_type == "scheduled" else run_type
    return as_date(interval_end, zone) - dt.timedelta(days=1), trigger


def _fail_on_data_errors(execute: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(execute)
    def run(self: BaseOperator, *args: Any, **kwargs: Any) -> Any:
        try:
            return execute(self, *args, **kwargs)
        except DataError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc

    return run


class PipelineOperator(BaseOperator):
    """Base of every mlops_tasks operator: resolves the pipeline config and its connections.

    The ``execute`` of every subclass fails its task at once on a :class:`DataError` (no retries:
    the same input fails the same way); any other exception is retried as the task says.

    :param pipeline: pipeline name (file stem or ``name:`` of a config in ``$MLOPS_TASKS_CONFIG_DIR``).
    """

    ui_color = "#e8f4fd"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "execute" in vars(cls):
            cls.execute = _fail_on_data_errors(vars(cls)["execute"])  # type: ignore[method-assign]

    def __init__(self, *, pipeline: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def pre_execute(self, context: Context) -> None:
        """Every extra link starts empty: a task that skips or fails before it has a URL to store
        would make each view of its log an "XCom not found" error. A success overwrites it."""
        super().pre_execute(context)
        for link in self.operator_extra_links:
            if isinstance(link, StoredLink):
                link.persist(context, None)

    @cached_property
    def config(self) -> PipelineConfig:
        return load_pipeline(self.pipeline)

    @cached_property
    def store(self) -> ObjectStore:
        cfg = self.config
        return ObjectStoreHook(cfg.storage.connection_id, cfg.storage.bucket).get_store()

    @cached_property
    def _mlflow_addresses(self) -> tuple[str, str]:
        """(tracking URI, UI address): one lookup of the MLflow connection per task."""
        return MlflowHook(self.config.mlflow.connection_id).get_addresses()

    @property
    def tracking_uri(self) -> str:
        return self._mlflow_addresses[0]

    @property
    def mlflow_ui_url(self) -> str:
        return self._mlflow_addresses[1]


# -- data stage ---------------------------------------------------------------------------------------


class PlanIngestionOperator(PipelineOperator):
    """Days of the training window to ingest (the ingest map's input): landed but not curated, or
    curated before landing files were added or replaced (see :func:`mlops_tasks.ingestion.plan_ingestion`).

    :param window_end: last day of the window (templated); default: from the run (see
        :func:`retrain_window_end`).
    """

    template_fields: Sequence[str] = ("window_end",)

    def __init__(self, *, window_end: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window_end = window_end

    def execute(self, context: Context) -> list[str]:
        from mlops_tasks.ingestion import plan_ingestion

        cfg = self.config
        end, trigger = (
            (as_date(self.window_end, cfg.zone), "manual")
            if self.window_end
            else retrain_window_end(context, cfg.zone)
        )
        days = window_days(cfg, end)
        plan = plan_ingestion(self.store, cfg, days)
        self.log.info(
            "Training window %s..%s (trigger: %s): %d day(s) to ingest, %d already curated, %d without "
            "landing data%s",
            days[0],
            days[-1],
            trigger,
            len(plan.todo),
            len(plan.curated),
            len(plan.missing),
            f" ({_some_days(plan.missing)})" if plan.missing else "",
        )
        for change in plan.changed:
            self.log.info(
                "%s is curated again: landing files added since it was curated: %s; replaced: %s",
                change["day"],
                ", ".join(change["added"]) or "none",
                ", ".join(change["changed"]) or "none",
            )
        _warn_kept(self.log, plan)
        if not plan.todo and not plan.curated and trigger == "schedule" and days[-1] < cfg.start_date:
            raise AirflowSkipException(
                f"The window {days[0]}..{days[-1]} ends before the pipeline's data starts "
                f"({cfg.start_date}): nothing to train on yet."
            )
        if not plan.todo and not plan.curated:
            # A typo in an event's window_end, a feed that stopped landing files: skipping would end
            # the run green with no model and no alert.
            asked = (
                "the retrain event asks for"
                if trigger.startswith("asset:")
                else f"this run ({trigger}) trains on"
            )
            raise AirflowFailException(
                f"{asked} the window {days[0]}..{days[-1]}, which holds no landed or curated day of "
                f"'{cfg.name}' (its data starts {cfg.start_date}): nothing to train on. Land the "
                "window's data (is the feed delivering?), or ask for a window_end inside the landed data."
            )
        todo = mappable(
            [d.isoformat() for d in plan.todo],
            f"days to ingest in {days[0]}..{days[-1]}",
            "run the training DAG for an earlier window_end first, so that fewer days are left to ingest",
        )
        context["ti"].xcom_push(key="window", value={"end": end.isoformat(), "trigger": trigger})
        return todo


def _warn_kept(log: logging.Logger, plan: IngestionPlan) -> None:
    for change in plan.kept:
        log.warning(
            "%s keeps its curated data although landing files were added (%s) or replaced (%s): "
            "others were removed since it was curated (%s), and ingesting the day again would lose "
            "their rows. Land the removed files again, or delete the day's curated manifest to "
            "rebuild it from the files there are.",
            change["day"],
            ", ".join(change["added"]) or "none",
            ", ".join(change["changed"]) or "none",
            ", ".join(change["removed"]),
        )


def mappable(items: list[_Item], what: str, fix: str) -> list[_Item]:
    """``items`` as a mapped task's input, checked against Airflow's ``[core] max_map_length``: past
    it the API server refuses the XCom ("pushed value is too large to map"), and the task is
    retried for nothing. A :class:`~mlops_tasks.config.ConfigError` says how many and what to change."""
    from airflow.sdk import conf

    limit = conf.getint("core", "max_map_length", fallback=1024)
    if len(items) > limit:
        raise ConfigError(
            f"{len(items)} {what} are more mapped tasks than Airflow allows ([core] max_map_length = "
            f"{limit}): {fix}, or raise max_map_length (AIRFLOW__CORE__MAX_MAP_LENGTH on the API server "
            "and the workers)."
        )
    return items


def _some_days(days: list[dt.date]) -> str:
    return ", ".join(d.isoformat() for d in days[:10]) + ("..." if len(days) > 10 else "")


class IngestDayOperator(PipelineOperator):
    """Raw files of one day under ``landing/date=.../`` -> typed staging parquet.

    :param day: the day to ingest (templated, default the logical date).
    :param only_if_needed: skip a day that is curated and gained or changed no landing file since
        (the rule of :func:`mlops_tasks.ingestion.plan_ingestion`). Batch inference ingests its day
        this way: re-scoring a day whose landing files retention removed must score the curated
        rows, not re-curate the day from what is left (fewer rows, or none).
    """

    template_fields: Sequence[str] = ("day",)

    def __init__(self, *, day: str | None = None, only_if_needed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.day = day
        self.only_if_needed = only_if_needed

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.ingestion import ingest_day, plan_ingestion

        day = run_day(self.day, context, self.config.zone)
        if self.only_if_needed:
            plan = plan_ingestion(self.store, self.config, [day])
            if day in plan.curated:
                _warn_kept(self.log, plan)
                raise AirflowSkipException(
                    f"{day} is curated and no landing file was added or replaced since: its curated data "
                    "is used as it is."
                )
        result = ingest_day(self.store, self.config, day)
        emit("ingest", result, pipeline=self.pipeline)
        if result["status"] == "no_data":
            self.log.warning("No landing files for %s under %s: nothing to ingest.", day, self.config.prefix)
        else:
            self.log.info(
                "Ingested %s: %d rows from %d file(s) into %s; rejected files: %s; malformed lines: %d",
                day,
                result["rows"],
                result["files"],
                result["staged_uri"],
                result["rejected_files"] or "none",
                result["malformed_lines"],
            )
        return result


class ValidateDayOperator(PipelineOperator):
    """Great Expectations gate over one staged day: good rows -> curated, bad rows -> quarantine.

    A failed gate fails the task (no retry) with a one-paragraph reason; nothing downstream runs.

    :param ingest_result: the ingest task's return value (mapped per day), or None with ``day``.
    :param day: the day to validate (templated) when no ingest result is given.
    """

    template_fields: Sequence[str] = ("day", "ingest_result")
    operator_extra_links = (ValidationReportLink(),)

    def __init__(
        self, *, ingest_result: dict[str, Any] | None = None, day: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ingest_result = ingest_result
        self.day = day

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.validation import ValidationGateError, validate_day

        if self.ingest_result is not None and self.ingest_result.get("status") == "no_data":
            raise AirflowSkipException(
                f"No data landed for {self.ingest_result['date']}: nothing to validate."
            )
        day = (
            as_date(self.ingest_result["date"])
            if self.ingest_result
            else run_day(self.day, context, self.config.zone)
        )
        try:
            result = validate_day(self.store, self.config, day)
        except ValidationGateError as exc:
            ValidationReportLink.persist(context, report_url(exc.result.get("report_html_uri")))
            emit("validate", exc.result, pipeline=self.pipeline)  # a failing day is the one to see
            raise AirflowFailException(str(exc)) from None
        ValidationReportLink.persist(context, report_url(result["report_html_uri"]))
        emit("validate", result, pipeline=self.pipeline)
        self.log.info(
            "Validation of %s passed: %d good rows, %d quarantined, %d malformed line(s), %d line(s) of "
            "rejected files (bad share %.2f%%). Report: %s",
            day,
            result["good_rows"],
            result["bad_rows"],
            result["malformed_lines"],
            result["rejected_lines"],
            100 * result["bad_fraction"],
            result["report_html_uri"],
        )
        return result


class DataVersionOperator(PipelineOperator):
    """The window's curated partitions -> one DVC data version (its content hash).

    :param window: ``{"end": "YYYY-MM-DD", "trigger": ...}`` from the planning task (templated XCom).
    """

    template_fields: Sequence[str] = ("window",)

    def __init__(self, *, window: dict[str, str] | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = window

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.storage import MANIFEST_NAME, partition_prefix
        from mlops_tasks.versioning import create_data_version

        cfg, store = self.config, self.store
        window = _as_dict(self.window)
        days = [
            d
            for d in window_days(cfg, as_date(window["end"]))
            if store.exists(partition_prefix(cfg.prefix, "curated", d) + MANIFEST_NAME)
        ]
        if not days:
            raise AirflowSkipException(
                f"No curated data in the training window ending {window['end']}: nothing to train on."
            )
        result = create_data_version(store, cfg, days)
        self.log.info(
            "Data version %s: %d rows over %d day(s) (%s upload)",
            result["data_version"],
            result["rows"],
            len(days),
            "new" if result["uploaded"] else "no",
        )
        return {**result, "trigger": window.get("trigger", "unknown"), "window_end": window["end"]}


def _as_dict(value: dict[str, Any] | str) -> dict[str, Any]:
    """XComArgs resolve to dicts; a Jinja-rendered value arrives as its repr."""
    if isinstance(value, dict):
        return value
    import ast

    return ast.literal_eval(value)


# -- model stage --------------------------------------------------------------------------------------


class _DataVersionInput(PipelineOperator):
    """Operators that read the rows of a data version and split them into train/evaluation."""

    template_fields: Sequence[str] = ("data_version",)

    def __init__(self, *, data_version: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_version = data_version

    def splits(self) -> tuple[Any, Any]:
        from mlops_tasks.training import split_window
        from mlops_tasks.versioning import load_data_version

        frame = load_data_version(self.store, self.config, self.data_version["data_version"])
        return split_window(frame, self.config)


class TrainModelOperator(_DataVersionInput):
    """PyTorch training on the data version's training split, tracked in MLflow.

    :param data_version: the DataVersionOperator's result.
    """

    operator_extra_links = (MlflowRunLink(),)

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.training import train

        train_frame, _ = self.splits()
        result = train(
            self.config,
            train_frame,
            tracking_uri=self.tracking_uri,
            data_version=self.data_version["data_version"],
            trigger=self.data_version.get("trigger", "unknown"),
            run_name=training_run_name(self.config, context["run_id"]),
            tags={"airflow_dag_id": self.dag_id, "airflow_run_id": context["run_id"]},
        )
        MlflowRunLink.persist(context, mlflow_run_url(self.mlflow_ui_url, result))
        self.log.info("Trained run %s: %s", result["run_id"], result)
        return result


def training_run_name(cfg: PipelineConfig, airflow_run_id: str) -> str:
    """The MLflow run name of a DAG run's training: its retries find their earlier attempts by it."""
    return f"{cfg.name}-{airflow_run_id}"


class EndAbandonedTrainingRun:
    """``on_failure_callback`` of the training DAG: mark KILLED the MLflow run of the failed DAG
    run's training if it is still RUNNING. An attempt that raised ended its run already; one killed
    outright (out of memory, a lost node) could not, and without a next attempt its run would show
    as running forever. A DAG callback, not the task's: Airflow runs it (in the DAG processor) for
    every failed run, while a task's own callback does not run when the kernel killed its process.
    Best-effort: it never raises.

    :param pipeline: the pipeline whose training DAG this is.
    """

    # The DAG processor runs every callback of a DAG file in one process, killed after
    # [dag_processor] dag_file_processor_timeout (50 s by default) with the callbacks not yet run: a
    # hung MLflow server (MLflow waits 30 s per attempt, 3 attempts) must not take those down too.
    SECONDS = 20

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline

    def __call__(self, context: Context) -> None:
        run_id = context.get("run_id")
        worker = threading.Thread(target=self._end_run, args=(run_id,), daemon=True, name="end-mlflow-run")
        worker.start()
        worker.join(self.SECONDS)
        if worker.is_alive():
            log.warning(
                "Gave up ending the abandoned MLflow run of %s after %d s: the MLflow server does not "
                "answer; the run stays RUNNING",
                run_id,
                self.SECONDS,
            )

    def _end_run(self, run_id: str | None) -> None:
        try:
            # MLflow's client only: the DAG processor, where this runs, need not import torch
            from mlops_tasks.tracking import end_abandoned_runs

            cfg = load_pipeline(self.pipeline)
            tracking_uri = MlflowHook(cfg.mlflow.connection_id).get_addresses()[0]
            end_abandoned_runs(tracking_uri, cfg.experiment_name, training_run_name(cfg, run_id or ""))
        except Exception as exc:  # the MLflow server down too: the run stays RUNNING, nothing else to do
            log.warning("Could not end the abandoned MLflow run of %s: %s", run_id, exc)


class ExportModelOperator(_DataVersionInput):
    """ONNX export with a torch-vs-onnxruntime parity check (optional int8 quantisation).

    :param training: the TrainModelOperator's result.
    """

    template_fields: Sequence[str] = ("data_version", "training")

    def __init__(self, *, training: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.training = training

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.export import export_run

        _, eval_frame = self.splits()
        result = export_run(
            self.config, self.training["run_id"], tracking_uri=self.tracking_uri, sample_frame=eval_frame
        )
        self.log.info("Exported %s", result)
        return result


class EvaluateGateOperator(_DataVersionInput):
    """Challenger vs champion on the current evaluation split; writes the gate report.

    The decision is returned, never raised: a rejected challenger is a normal outcome.

    :param export: the ExportModelOperator's result.
    """

    template_fields: Sequence[str] = ("data_version", "export")
    operator_extra_links = (GateReportLink(),)

    def __init__(self, *, export: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export = export

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.evaluation import evaluate_and_gate

        _, eval_frame = self.splits()
        decision = evaluate_and_gate(
            self.config,
            self.export["run_id"],
            eval_frame,
            tracking_uri=self.tracking_uri,
            store=self.store,
            day=as_date(self.data_version["window_end"]),
        )
        GateReportLink.persist(context, report_url(decision["report_html_uri"]))
        if not decision["promote"]:
            announce(
                self.config.name,
                "gate_rejected",
                decision["reason"],
                {"report": decision["report_html_uri"]},
                key=alert_key(context, "gate_rejected"),
            )
        emit("gate", decision, pipeline=self.pipeline)
        self.log.info(
            "Gate decision: %s. %s Report: %s",
            "PROMOTE" if decision["promote"] else "REJECT",
            decision["reason"],
            decision["report_html_uri"],
        )
        return decision


class RegisterModelOperator(PipelineOperator):
    """Register the model version; move the ``champion`` alias last, only if the gate promoted it.

    :param decision: the EvaluateGateOperator's result.
    :param export: the ExportModelOperator's result.
    :param data_version: the DataVersionOperator's result.
    """

    template_fields: Sequence[str] = ("decision", "export", "data_version")
    operator_extra_links = (RegisteredModelLink(),)

    def __init__(
        self, *, decision: dict[str, Any], export: dict[str, Any], data_version: dict[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.decision = decision
        self.export = export
        self.data_version = data_version

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.registry import register

        result = register(
            self.config,
            self.export["run_id"],
            tracking_uri=self.tracking_uri,
            decision=self.decision,
            data_version=self.data_version["data_version"],
        )
        RegisteredModelLink.persist(context, model_version_url(self.mlflow_ui_url, result))
        self.log.info("Registry: %s", result)
        return result


class LineageOperator(PipelineOperator):
    """One lineage record per model version: landing files -> ... -> gate decision.

    :param upstream: results of the upstream tasks, keyed by step name (templated XComs).
    """

    template_fields: Sequence[str] = ("upstream",)

    def __init__(self, *, upstream: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upstream = upstream

    def execute(self, context: Context) -> str:
        from mlops_tasks.lineage import assemble_record, write_record

        record = assemble_record(self.store, self.config, airflow_run_id=context["run_id"], **self.upstream)
        uri = write_record(self.store, self.config, record)
        self.log.info("Lineage record: %s", uri)
        return uri


# -- batch inference ----------------------------------------------------------------------------------


class ResolveChampionOperator(PipelineOperator):
    """Resolve the ``champion`` (and optional ``challenger``) version once per run.

    Every mapped scoring task then loads that exact version, so a promotion mid-run cannot mix models.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.registry import alias_info
        from mlops_tasks.status import without_credentials

        champion = alias_info(self.config, "champion", tracking_uri=self.tracking_uri)
        if champion is None:
            raise AirflowFailException(
                f"Model '{self.config.registered_model_name}' has no 'champion' alias in the registry at "
                f"{without_credentials(self.tracking_uri)}: run {self.config.dag_id('training')} first. "
                "Nothing was written."
            )
        challenger = alias_info(self.config, "challenger", tracking_uri=self.tracking_uri)
        self.log.info(
            "Scoring with champion v%s (challenger: %s)",
            champion["version"],
            challenger and challenger["version"],
        )
        return {"champion": champion, "challenger": challenger}


class PlanScoringOperator(PipelineOperator):
    """Split the day's curated data into work units, one mapped scoring task each.

    :param day: the day to score (templated, default the logical date).
    """

    template_fields: Sequence[str] = ("day",)

    def __init__(self, *, day: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.day = day

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from mlops_tasks.inference import plan_parts

        day = run_day(self.day, context, self.config.zone)
        units = plan_parts(self.store, self.config, day)
        if not units:
            # The run ends green (an empty day is not an error), so the skip is also announced: a
            # feed that stopped delivering shows as days without predictions, not as failures.
            message = f"no data landed for {day}: nothing scored, no predictions published for the day"
            announce(
                self.pipeline, "no_data", message, {"day": day.isoformat()}, key=alert_key(context, "no_data")
            )
            raise AirflowSkipException(f"No curated data for {day}: nothing to score.")
        self.log.info("%d work unit(s) for %s", len(units), day)
        return mappable(
            units,
            f"work units of {day}",
            "raise inference.part_rows in the pipeline config (a unit never spans two curated files, "
            "of at most 2M rows each, so beyond that only max_map_length helps)",
        )


class ScorePartOperator(PipelineOperator):
    """Score one work unit with onnxruntime into an unpublished part.

    :param unit: one element of PlanScoringOperator's result (mapped).
    :param models: ResolveChampionOperator's result.
    :param role: ``champion`` (published predictions) or ``challenger`` (shadow scoring).
    """

    template_fields: Sequence[str] = ("unit", "models")

    def __init__(
        self, *, unit: dict[str, Any], models: dict[str, Any], role: str = "champion", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.unit = unit
        self.models = models
        self.role = role

    def execute(self, context: Context) -> dict[str, Any] | None:
        import tempfile

        from mlops_tasks.inference import score_part
        from mlops_tasks.registry import download_onnx

        model = self.models.get(self.role)
        if model is None:
            raise AirflowSkipException(f"No '{self.role}' model: nothing to shadow-score.")
        with tempfile.TemporaryDirectory() as tmp, self._shadow_only(model):
            path = download_onnx(
                self.config,
                tracking_uri=self.tracking_uri,
                version=model["version"],
                dest_dir=tmp,
                role=self.role,  # its errors' advice: a challenger's fix must leave the champion alone
            )
            result = score_part(
                self.store,
                self.config,
                self.unit,
                model_path=str(path),
                model_name=self.config.registered_model_name,
                model_version=str(model["version"]),
                run_id=context["run_id"],
                output_area="predictions" if self.role == "champion" else "predictions_shadow",
            )
        emit(role_step("score", self.role), result, pipeline=self.pipeline)
        self.log.info("Scored %d rows: %s", result["rows"], result["seconds"])
        return result

    @contextmanager
    def _shadow_only(self, model: dict[str, Any]) -> Iterator[None]:
        """A challenger that cannot be scored says so as the challenger: the advice for a champion
        (retrain, change the config) would touch what serves, when only its shadow failed."""
        from mlops_tasks.inference import ModelContractError
        from mlops_tasks.registry import CHALLENGER_ELIGIBLE

        try:
            yield
        except ModelContractError as exc:
            if self.role != "challenger":
                raise
            name = self.config.registered_model_name
            raise ModelContractError(
                f"challenger v{model['version']} of '{name}' cannot be shadow-scored: {exc}. Only the "
                "shadow branch fails: the champion's predictions of the day are published as usual. To "
                "stop shadow-scoring this version, mark it ineligible and drop the alias (the registry "
                "would put the alias back on an eligible version): client = MlflowClient(); "
                f"client.set_model_version_tag({name!r}, '{model['version']}', '{CHALLENGER_ELIGIBLE}', "
                f"'false'); client.delete_registered_model_alias({name!r}, 'challenger')."
            ) from None


class PublishPredictionsOperator(PipelineOperator):
    """Publish the day's parts atomically (manifest last); emits the predictions asset.

    :param day: the scored day (templated).
    :param part_results: the mapped ScorePartOperator results.
    :param models: ResolveChampionOperator's result.
    :param role: ``champion`` or ``challenger``.
    """

    template_fields: Sequence[str] = ("day", "part_results", "models")

    def __init__(
        self,
        *,
        part_results: list[dict[str, Any]],
        models: dict[str, Any],
        day: str | None = None,
        role: str = "champion",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.part_results = part_results
        self.models = models
        self.day = day
        self.role = role

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.inference import publish_predictions
        from mlops_tasks.registry import alias_info

        def aliased_version() -> str | None:
            now = alias_info(self.config, self.role, tracking_uri=self.tracking_uri)
            return None if now is None else str(now["version"])

        model = self.models.get(self.role)
        if model is None:
            raise AirflowSkipException(f"No '{self.role}' model: nothing to publish.")
        day = run_day(self.day, context, self.config.zone)
        result = publish_predictions(
            self.store,
            self.config,
            day,
            [r for r in self.part_results if r],
            model_name=self.config.registered_model_name,
            model_version=str(model["version"]),
            run_id=context["run_id"],
            output_area="predictions" if self.role == "champion" else "predictions_shadow",
            aliased_version=aliased_version,
        )
        emit(role_step("publish", self.role), result, pipeline=self.pipeline)
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "day": day.isoformat(),
                "rows": result["rows"],
                "uri": result["uri"],
            }
        self.log.info("Published %s", result)
        return result


class ShadowReportOperator(PipelineOperator):
    """Champion vs challenger agreement on the day's rows (nothing shadow touches predictions/)."""

    template_fields: Sequence[str] = ("day", "models")

    def __init__(self, *, models: dict[str, Any], day: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = models
        self.day = day

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.inference import shadow_report

        if not self.models.get("challenger"):
            raise AirflowSkipException("No challenger: no shadow report.")
        # model_name/model_version let the report refuse predictions published by another model.
        champion, challenger = (
            {**self.models[role], "model_version": self.models[role]["version"]}
            for role in ("champion", "challenger")
        )
        report = shadow_report(
            self.store,
            self.config,
            run_day(self.day, context, self.config.zone),
            champion=champion,
            challenger=challenger,
        )
        self.log.info("Shadow report: %s", report)
        return report


# -- drift --------------------------------------------------------------------------------------------


class DriftCheckOperator(PipelineOperator):
    """Scored inputs of the window vs the champion's training data; decides whether to retrain.

    Given the retrain asset as an inlet, a check of a run that already sent its retrain event (the
    run cleared) first marks that trigger sent, so it stays and the cooldown holds.

    :param day: last day of the monitored window (templated); asset-triggered runs use the day of
        the triggering predictions event.
    """

    template_fields: Sequence[str] = ("day",)
    operator_extra_links = (DriftReportLink(),)

    def __init__(self, *, day: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.day = day

    def _day(self, context: Context) -> dt.date:
        if self.day:
            return as_date(self.day, self.config.zone)
        if (context.get("params") or {}).get("day"):
            return run_day(None, context, self.config.zone)  # the trigger form's day
        events = context.get("triggering_asset_events") or {}
        days = [e.extra["day"] for evs in events.values() for e in evs if (e.extra or {}).get("day")]
        if days:
            return as_date(max(days), self.config.zone)
        if context.get("logical_date") is not None:
            return run_day(None, context, self.config.zone)
        # An event without `day` (posted by hand or through the REST API): the newest published day.
        from mlops_tasks.storage import partition_prefix

        published = (
            day
            for day in reversed(self.store.list_partition_dates(f"{self.config.prefix}/predictions/"))
            if self.store.read_manifest(partition_prefix(self.config.prefix, "predictions", day))
        )
        day = next(published, None)
        if day is None:
            raise AirflowSkipException(
                "Triggered without a day and no predictions are published: nothing to check."
            )
        self.log.info("The triggering event names no day: checking the newest published day, %s", day)
        return day

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.monitoring import (
            DayTrainedOn,
            forget_abandoned_trigger,
            record_retrain_sent,
            run_drift_monitor,
        )

        day = self._day(context)
        sent = _retrain_event_of_this_run(self, context)
        if sent is not None:
            # This run (cleared) already requested its retrain: its trigger must stay whatever the
            # check decides now, so that the cooldown holds (see TriggerRetrainingOperator).
            sent_day = as_date((sent.extra or {}).get("window_end") or day)
            record_retrain_sent(self.store, self.config, sent_day, _check_identity(context))

        def check() -> dict[str, Any]:
            # the run id tells a retry of the run that requested retraining (which may decide again)
            # from another run checking the same day (which must not request it twice)
            try:
                return run_drift_monitor(
                    self.store,
                    self.config,
                    day,
                    tracking_uri=self.tracking_uri,
                    check_run_id=_check_identity(context),
                )
            except DayTrainedOn as exc:
                raise AirflowSkipException(str(exc)) from None

        result = check()
        pending = _unsent_request(self, context, result)
        if pending and _run_ended(context, result["requested_by"]):
            # That run is over and never sent its event: its trigger would hold the cooldown for a
            # retrain that never happens. Dropped, so this check decides as if it had not been.
            self.log.warning(
                "The run %s ended without sending the retrain it requested: its request is dropped and "
                "this check decides again",
                result["requested_by"],
            )
            forget_abandoned_trigger(self.store, self.config, result["requested_by"])
            result = check()
            pending = _unsent_request(self, context, result)
        if pending:
            self.log.warning(pending)
            result["request_pending"] = True
        if result.get("missing_values_columns"):
            # A feed that broke (or a season of missing values) is announced whatever is decided.
            announce(
                self.pipeline,
                "data_quality",
                f"drift check of {day}: " + "; ".join(result["data_quality"]),
                {
                    "day": day.isoformat(),
                    "columns": result["missing_values_columns"],
                    "report": result.get("report_html_uri"),
                },
                key=alert_key(context, "data_quality"),
            )
        DriftReportLink.persist(context, report_url(result.get("report_html_uri")))
        emit("drift", result, pipeline=self.pipeline)
        self.log.info("Drift check for %s: %s", day, result)
        return result


class TriggerRetrainingOperator(PipelineOperator):
    """Emit the retrain asset event (reason and window in its extra) when the drift check says so.

    Skipped (no event) otherwise, so one drift episode triggers one retraining. The retrain asset
    must be both an outlet and an inlet: the event a run already sent (Airflow records it when the
    task succeeds) is looked up there, so a cleared task or a cleared run sends no second one.

    :param decision: DriftCheckOperator's result.
    """

    template_fields: Sequence[str] = ("decision",)

    def __init__(self, *, decision: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decision = decision

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_tasks.monitoring import record_retrain_sent, trigger_stands

        if not self.decision.get("retrain"):
            raise AirflowSkipException(f"No retraining: {self.decision.get('status')}.")
        if not self.outlets:
            # The check has stored its trigger: returning would announce a retrain that no event
            # starts, while the trigger holds the cooldown of every check near its day.
            raise AirflowFailException(
                f"{self.task_id}: the drift check requested a retrain, but this task has no outlet "
                "asset to emit its event on: give it the pipeline's retrain asset (mlops://"
                f"{self.pipeline}/retrain) as both outlet and inlet, then clear it."
            )
        sent = _retrain_event_of_this_run(self, context)
        day, checker = as_date(self.decision["day"]), _check_identity(context)
        if sent is None and not trigger_stands(self.store, self.config, day, checker):
            # This run ended without sending its event once (a failed try, then cleared), and a later
            # check near its day took the request over (DriftCheckOperator): no second retrain.
            raise AirflowSkipException(
                f"This run's retrain request for {day} is no longer in the drift state: a later check "
                "took it over after this run had ended without sending it. One drift episode, one "
                "retraining."
            )
        if sent is not None:
            # Marked only now that the event is known to exist: marking before it went out (Airflow
            # emits it when the task succeeds) would lose the retrain of a task that died after the
            # mark, as the run's cleared drift check would then find it "already requested".
            record_retrain_sent(self.store, self.config, day, checker)
            raise AirflowSkipException(
                f"This run already requested retraining (event of {sent.timestamp}): one drift episode, "
                "one retraining."
            )
        extra = {
            "source": "drift_monitor",
            "reason": "; ".join(self.decision.get("reasons", [])) or "drift",
            "window_end": self.decision["day"],
            "report": self.decision.get("report_html_uri"),
        }
        for asset in self.outlets:
            context["outlet_events"][asset].extra = extra
        announce(
            self.config.name,
            "drift_detected",
            f"retraining requested: {extra['reason']}",
            extra,
            key=alert_key(context, "drift_detected"),
        )
        return extra


def _check_identity(context: Context) -> str:
    """The run deciding, as the drift state records its triggers: ``<dag_id>/<run_id>``. Run ids
    alone repeat across DAGs (``scheduled__<date>``): a DAG of your own checking the pipeline on the
    same cron would pass for a retry of the generated DAG's run, and request its retrain again."""
    return f"{context['ti'].dag_id}/{context['run_id']}"


def _retrain_event_of_this_run(task: BaseOperator, context: Context) -> Any:
    """The retrain event this DAG run already emitted (Airflow records an outlet event when its task
    succeeds), looked up among ``task``'s inlets; None if there is none."""
    return _retrain_event_of(task, context, _check_identity(context))


def _retrain_event_of(task: BaseOperator, context: Context, check_identity: str) -> Any:
    """The retrain event the run ``<dag_id>/<run_id>`` emitted, among ``task``'s inlets; or None.
    Triggers stored by older releases name the run id alone: any DAG's run of that id matches."""
    dag_id, slash, run_id = check_identity.partition("/")  # a dag id has no "/"
    for asset in task.inlets:
        for event in context["inlet_events"][asset]:
            if slash and (event.source_dag_id, event.source_run_id) == (dag_id, run_id):
                return event
            if not slash and event.source_run_id == check_identity:
                return event
    return None


def _run_ended(context: Context, check_identity: str) -> bool:
    """Whether the DAG run ``<dag_id>/<run_id>`` is over (success or failed), as the API server says.
    Unknown (a trigger of an older release names no DAG, the server cannot be asked): not over, and
    its trigger stays."""
    dag_id, slash, run_id = check_identity.partition("/")
    if not slash:
        return False
    try:
        state = context["ti"].get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except Exception as exc:  # the run's state is advice here: without it nothing is dropped
        log.warning(
            "Could not read the state of the run %s (%s): its retrain request stays", check_identity, exc
        )
        return False
    return str(getattr(state, "value", state)) in ("success", "failed")


def _unsent_request(task: BaseOperator, context: Context, decision: dict[str, Any]) -> str | None:
    """Why a check that defers to another run's retrain ("already_requested", "cooldown") may be
    deferring to nothing: that run's retrain event does not exist (its trigger task has not succeeded,
    yet or ever). The trigger still holds the cooldown, so the user must know where to look; None when
    the event exists, or without the retrain asset as an inlet to look it up."""
    requester = decision.get("requested_by")
    if not requester or not task.inlets or _retrain_event_of(task, context, requester) is not None:
        return None
    return (
        f"This check found reasons to retrain but defers to the retrain run {requester} requested "
        f"({decision['status']}), and that run has sent no retrain event: its retrain task "
        "(request_retraining in the generated DAG) has not succeeded, yet or at all. Until it does, no "
        "check of a day within drift.cooldown_days of that request triggers a retrain. If that run "
        "failed, clear its retrain task to send the event."
    )
