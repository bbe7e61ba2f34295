"""Build every DAG of a pipeline from its config.

Per pipeline ``p``:

* ``p_training``: plan -> ingest (mapped per day) -> validate (mapped) -> version (DVC) -> train ->
  export (ONNX + parity) -> evaluate & gate -> register (alias moved last) -> lineage. Scheduled on
  its cron OR the ``mlops://p/retrain`` asset (drift monitor, or an external POST of an asset event).
* ``p_batch_inference``: resolve champion once -> ingest + validate the day -> plan parts ->
  score (mapped) -> publish atomically (emits the predictions asset); shadow-scores the challenger
  (a branch skipped as a whole when there is none, whose failure fails its tasks, not the run).
* ``p_drift_monitor``: on the predictions asset: Evidently drift check -> retrain asset event.

Batch inference (and the drift monitor's optional cron) run once a day is over, the classic daily
batch: the run for day D has logical date D and starts at D+1 00:00 (``CronDataIntervalTimetable``),
so it scores a complete day. Training's cron fires at the start of a day and trains up to the day
before (``CronTriggerTimetable``: its logical date is when it fires).

Only Airflow and the config are imported here; stage libraries load inside tasks.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    BaseOperator,
    CronDataIntervalTimetable,
    CronTriggerTimetable,
    Param,
    XComArg,
)
from airflow.sdk.exceptions import AirflowFailException

from mlops_tasks.airflow.notifiers import MlopsNotifier
from mlops_tasks.airflow.operators import (
    DataVersionOperator,
    DriftCheckOperator,
    EndAbandonedTrainingRun,
    EvaluateGateOperator,
    ExportModelOperator,
    IngestDayOperator,
    LineageOperator,
    PlanIngestionOperator,
    PlanScoringOperator,
    PublishPredictionsOperator,
    RegisterModelOperator,
    ResolveChampionOperator,
    ScorePartOperator,
    ShadowReportOperator,
    TrainModelOperator,
    TriggerRetrainingOperator,
    ValidateDayOperator,
)
from mlops_tasks.config import (
    CONFIG_DIR_ENV,
    PRESET_CRONS,
    ConfigError,
    PipelineConfig,
    config_dir,
    config_paths,
    load_each,
)

NONE_FAILED = "none_failed"
ALL_DONE = "all_done"
CONFIG_ERROR_DAG = "mlops_config_error_{stem}"
CONFIG_DIR_ERROR_DAG = "mlops_config_error_config_dir"
log = logging.getLogger(__name__)


# A scoring unit in the grid: the predictions part it writes, and its rows.
UNIT_LABEL = "part {{ task.unit['part_index'] }}: {{ '{:,}'.format(task.unit['rows']) }} rows"
# Which DAG's tasks a worker slot goes to first when they queue together (absolute weights: the
# default sums the tasks downstream, so a training run's many mapped ingest/validate tasks came
# before the day's scoring): serving, then the drift check, then training.
PRIORITY = {"batch_inference": 3, "drift_monitor": 2, "training": 1}
# The shadow branch of batch inference serves nobody: its tasks queue after the champion's scoring,
# as the drift check's do, so a challenger's units never delay the published day.
SHADOW_PRIORITY = PRIORITY["drift_monitor"]


def predictions_asset(cfg: PipelineConfig) -> Asset:
    return Asset(name=f"{cfg.name}_predictions", uri=f"s3://{cfg.storage.bucket}/{cfg.prefix}/predictions")


def retrain_asset(cfg: PipelineConfig) -> Asset:
    """External systems request retraining by POSTing an event for this asset (docs/operators.md)."""
    return Asset(name=f"{cfg.name}_retrain", uri=f"mlops://{cfg.name}/retrain")


def _after_each_day(cron: str | None, cfg: PipelineConfig) -> CronDataIntervalTimetable | None:
    """Runs whose logical date is the start of the interval they process, started at its end; in
    the pipeline's time zone, where its days begin and end."""
    return CronDataIntervalTimetable(PRESET_CRONS.get(cron, cron), timezone=cfg.timezone) if cron else None


def _schedule(timetable: Any, asset: Asset) -> Any:
    return AssetOrTimeSchedule(timetable=timetable, assets=asset) if timetable else asset


def _params(kind: str) -> dict[str, Param]:
    """The trigger form's fields ("Trigger DAG" in the UI, or conf={...} through the REST API):
    empty by default, so scheduled and asset-triggered runs go by their dates and events as ever."""
    if kind == "training":
        name, meaning = (
            "window_end",
            "Last day of the training window (default: the day before the run's date).",
        )
    else:
        name = "day"
        meaning = (
            "Day to score (default: the run's date)."
            if kind == "batch_inference"
            else "Last day of the window to check (default: the run's date, or the predictions event's)."
        )
    return {name: Param(None, type=["null", "string"], format="date", description=meaning)}


def _end(cfg: PipelineConfig, kind: str) -> dt.datetime | None:
    """The DAG's end_date: the end of ``end_date``'s day (a cron firing later than midnight, 0 3 * * *,
    runs its last day too). Training trains on the days before each of its fire times, so it runs
    once more: at its first fire time after that day, whose window holds the last days."""
    if cfg.end_date is None:
        return None
    last_day = dt.datetime.combine(cfg.end_date, dt.time.max, tzinfo=cfg.zone)
    if kind != "training" or not cfg.training.schedule:
        return last_day
    from croniter import croniter

    cron = PRESET_CRONS.get(cfg.training.schedule, cfg.training.schedule)
    return croniter(cron, last_day).get_next(dt.datetime)


def _dag(cfg: PipelineConfig, kind: str, schedule: Any, doc: str, on_failure: Any = None) -> DAG:
    notifier = MlopsNotifier(pipeline=cfg.name)
    return DAG(
        params=_params(kind),
        dag_id=cfg.dag_id(kind),  # type: ignore[arg-type]
        schedule=schedule,
        start_date=dt.datetime.combine(cfg.start_date, dt.time(), tzinfo=cfg.zone),
        end_date=_end(cfg, kind),
        # Each scoring run is one day of its own; training trains on a window and the drift monitor
        # checks one up to its day, so their latest run covers the days missed.
        catchup=cfg.inference.catchup if kind == "batch_inference" else False,
        # Training and the drift monitor read and write state shared across runs (the registry, the
        # retrain cooldown): one run at a time. Scoring runs of different days are independent.
        max_active_runs=4 if kind == "batch_inference" else 1,
        tags=["mlops", cfg.name, kind],
        # Only the DAGs the DAG file puts in its globals: a pipeline whose build fails half-way
        # must not leave its first DAGs scheduled (see build_all_dags).
        auto_register=False,
        doc_md=f"**{cfg.name}** — {cfg.description}\n\n{doc}",
        on_failure_callback=on_failure,
        default_args={
            "owner": cfg.owner,
            "retries": cfg.retries,
            "execution_timeout": dt.timedelta(minutes=cfg.task_timeout_minutes),
            "retry_delay": dt.timedelta(seconds=30),
            "retry_exponential_backoff": True,
            "max_retry_delay": dt.timedelta(minutes=10),
            "on_failure_callback": notifier,
            "weight_rule": "absolute",
            "priority_weight": PRIORITY[kind],
        },
    )


def build_training_dag(cfg: PipelineConfig) -> DAG:
    common = {"pipeline": cfg.name}
    with _dag(
        cfg,
        "training",
        _schedule(
            cfg.training.schedule
            and CronTriggerTimetable(
                PRESET_CRONS.get(cfg.training.schedule, cfg.training.schedule), timezone=cfg.timezone
            ),
            retrain_asset(cfg),
        ),
        "Ingest, validate and version the training window, train, export, gate and register.",
        on_failure=EndAbandonedTrainingRun(cfg.name),
    ) as dag:
        plan = PlanIngestionOperator(task_id="plan_ingestion", **common)
        # Mapped tasks labelled by their day in the grid: which day failed the gate, at a glance.
        ingest = IngestDayOperator.partial(
            task_id="ingest", map_index_template="{{ task.day }}", **common
        ).expand(day=plan.output)
        validate = ValidateDayOperator.partial(
            task_id="validate", map_index_template="{{ task.ingest_result['date'] }}", **common
        ).expand(ingest_result=ingest.output)
        version = DataVersionOperator(
            task_id="version_data", window=XComArg(plan, key="window"), trigger_rule=NONE_FAILED, **common
        )
        validate >> version
        train = TrainModelOperator(task_id="train", data_version=version.output, **common)
        export = ExportModelOperator(
            task_id="export_onnx", data_version=version.output, training=train.output, **common
        )
        gate = EvaluateGateOperator(
            task_id="evaluate_gate", data_version=version.output, export=export.output, **common
        )
        register = RegisterModelOperator(
            task_id="register",
            decision=gate.output,
            export=export.output,
            data_version=version.output,
            # Not needed for correctness (the registry converges across workers); avoids alias churn.
            max_active_tis_per_dag=1,
            **common,
        )
        LineageOperator(
            task_id="lineage",
            upstream={
                "data_version": version.output,
                "training": train.output,
                "export": export.output,
                "decision": gate.output,
                "registration": register.output,
            },
            **common,
        )
    return dag


def build_batch_inference_dag(cfg: PipelineConfig) -> DAG:
    common = {"pipeline": cfg.name}
    with _dag(
        cfg,
        "batch_inference",
        _after_each_day(cfg.inference.schedule, cfg),
        "Score the day's validated data with the champion ONNX model; publish atomically.",
    ) as dag:
        models = ResolveChampionOperator(task_id="resolve_champion", **common)
        ingest = IngestDayOperator(task_id="ingest", only_if_needed=True, **common)
        validate = ValidateDayOperator(task_id="validate", ingest_result=ingest.output, **common)
        # Runs when the day needed no ingest (already curated: ingest and validate skip).
        plan = PlanScoringOperator(task_id="plan_parts", trigger_rule=NONE_FAILED, **common)
        models >> ingest
        validate >> plan
        score = ScorePartOperator.partial(
            task_id="score", models=models.output, map_index_template=UNIT_LABEL, **common
        ).expand(unit=plan.output)
        publish = PublishPredictionsOperator(
            task_id="publish",
            part_results=score.output,
            models=models.output,
            outlets=[predictions_asset(cfg)],
            **common,
        )
        # Without a challenger the whole shadow branch is skipped here, before the mapped task
        # expands: one skipped task instance, not one per work unit, each taking a worker slot.
        shadowing = {**common, "priority_weight": SHADOW_PRIORITY}
        has_challenger = ShortCircuitOperator(
            task_id="has_challenger",
            python_callable=_has_challenger,
            op_args=[models.output],
            priority_weight=SHADOW_PRIORITY,
        )
        shadow = ScorePartOperator.partial(
            task_id="shadow_score",
            models=models.output,
            role="challenger",
            map_index_template=UNIT_LABEL,
            **shadowing,
        ).expand(unit=plan.output)
        has_challenger >> shadow
        publish_shadow = PublishPredictionsOperator(
            task_id="publish_shadow",
            part_results=shadow.output,
            models=models.output,
            role="challenger",
            **shadowing,
        )
        # The report reads both published days.
        report = ShadowReportOperator(task_id="shadow_report", models=models.output, **shadowing)
        [publish, publish_shadow] >> report
        # Airflow judges a run by its leaf tasks. The run's state follows serving alone: `served`
        # fails the run when publishing did not succeed, while `shadow_settled` succeeds however the
        # shadow branch ended. A challenger that cannot be scored fails its own tasks (red in the grid,
        # alerted) but not the day whose predictions were published and announced.
        publish >> EmptyOperator(task_id="served")
        report >> EmptyOperator(
            task_id="shadow_settled", trigger_rule=ALL_DONE, priority_weight=SHADOW_PRIORITY
        )
    return dag


def _has_challenger(models: dict[str, Any]) -> bool:
    """ResolveChampionOperator found a ``challenger`` alias to shadow-score."""
    return bool(models.get("challenger"))


def build_drift_dag(cfg: PipelineConfig) -> DAG:
    common = {"pipeline": cfg.name}
    with _dag(
        cfg,
        "drift_monitor",
        _schedule(_after_each_day(cfg.drift.schedule, cfg), predictions_asset(cfg)),
        "Compare scored inputs with the champion's training data; request retraining on drift.",
    ) as dag:
        # One check at a time across all runs, backfills included (they ignore max_active_runs): two
        # checks of a day would render its reports at once. Their shared cooldown state is safe
        # without it (a conditional write, ObjectStore.update_json) on stores with conditional PUT.
        # Both look up the retrain event their run already sent (a cleared run): see the operators.
        check = DriftCheckOperator(
            task_id="drift_check", max_active_tis_per_dag=1, inlets=[retrain_asset(cfg)], **common
        )
        TriggerRetrainingOperator(
            task_id="request_retraining",
            decision=check.output,
            outlets=[retrain_asset(cfg)],
            inlets=[retrain_asset(cfg)],
            **common,
        )
    return dag


def build_dags(cfg: PipelineConfig) -> dict[str, DAG]:
    dags = [build_training_dag(cfg), build_batch_inference_dag(cfg), build_drift_dag(cfg)]
    return {dag.dag_id: dag for dag in dags}


class _ConfigErrorOperator(BaseOperator):
    """Fails with the reason its pipeline's config could not become DAGs."""

    ui_color = "#fde8e8"

    def __init__(self, *, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def execute(self, context: Any) -> None:
        raise AirflowFailException(self.reason)


def config_error_dag_base(path: Path) -> str:
    """The id of the error DAG of the config file ``path``: this, or with a "_<n>" suffix where
    another file's name differs only in punctuation (:func:`config_error_dag`)."""
    # Cut to stay under Airflow's 250 characters with a "_<n>" suffix: a longer id raises, and an
    # exception in the DAG file would take every pipeline's DAGs down with this one.
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)[:200]
    return CONFIG_ERROR_DAG.format(stem=stem)


def config_error_dag(
    path: Path, reason: str, taken: Iterable[str] = (), *, base: str | None = None, description: str = ""
) -> DAG:
    """Stands in for the DAGs of a config that cannot be built: its description and its one task
    say why (a run fails with the reason), and it never runs on its own. Files whose names differ
    only in punctuation (a-b.yaml, a_b.yaml) get distinct ids: ``taken`` are the ids in use."""
    base = base or config_error_dag_base(path)
    taken = set(taken)
    dag_id = next(
        i for i in itertools.chain([base], (f"{base}_{n}" for n in itertools.count(2))) if i not in taken
    )
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        tags=["mlops", "config-error"],
        # the full path: with the bare file name the command works only from the config directory
        description=description
        or f"{path.name} is invalid: fix it (mlops-tasks config validate {shlex.quote(str(path.absolute()))})",
        doc_md=f"**{path.absolute()}** could not become DAGs:\n\n```\n{reason}\n```",
    ) as dag:
        _ConfigErrorOperator(task_id="config_error", reason=reason)
    return dag


def build_all_dags(directory: Path | None = None) -> dict[str, DAG]:
    """The DAGs of every pipeline config in ``directory``. One config's mistake must not stop the
    others: an exception in a DAG file discards every DAG of the file, and the scheduler then stops
    scheduling all of them. A config that cannot be built (invalid, or a pipeline name or storage
    location another config already uses: :func:`mlops_tasks.config.load_each`) gets an error DAG
    instead (:func:`config_error_dag`), and the reason is logged by the DAG processor. A missing or
    empty config directory (a mistyped ``$MLOPS_TASKS_CONFIG_DIR``) is one error DAG too, not zero DAGs."""
    dags: dict[str, DAG] = {}
    try:
        paths = config_paths(directory)
    except ConfigError as exc:
        missing = Path(directory or config_dir())
        log.error("No pipeline is scheduled: %s", exc)
        error = config_error_dag(
            missing,
            f"{type(exc).__name__}: {exc}",
            base=CONFIG_DIR_ERROR_DAG,
            description=f"no pipeline config in {missing}: set ${CONFIG_DIR_ENV}",
        )
        return {error.dag_id: error}
    for path, loaded in load_each(paths):
        try:
            if isinstance(loaded, Exception):
                raise loaded
            built = build_dags(loaded)
        except Exception as exc:  # any error: it is reported in the error DAG, the others still load
            reason = f"{type(exc).__name__}: {exc}"
            log.error("Pipeline config %s is not scheduled: %s", path, reason)
            error = config_error_dag(path, reason, taken=dags)
            dags[error.dag_id] = error
            continue
        dags.update(built)
    return dags
