"""Build every DAG of a pipeline from its config.

Per pipeline ``p``:

* ``p_training``: plan -> ingest (mapped per day) -> validate (mapped) -> version (DVC) -> train ->
  export (ONNX + parity) -> evaluate & gate -> register (alias moved last) -> lineage. Scheduled on
  its cron OR the ``mlops://p/retrain`` asset (drift monitor, or an external POST of an asset event).
* ``p_batch_inference``: resolve champion once -> ingest + validate the day -> plan parts ->
  score (mapped) -> publish atomically (emits the predictions asset); shadow-scores the challenger.
* ``p_drift_monitor``: on the predictions asset: Evidently drift check -> retrain asset event.

Only Airflow and the config are imported here; stage libraries load inside tasks.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, XComArg

from mlops_tasks.airflow.notifiers import MlopsNotifier
from mlops_tasks.airflow.operators import (
    DataVersionOperator,
    DriftCheckOperator,
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
from mlops_tasks.config import PipelineConfig

NONE_FAILED = "none_failed"


def predictions_asset(cfg: PipelineConfig) -> Asset:
    return Asset(name=f"{cfg.name}_predictions", uri=f"s3://{cfg.storage.bucket}/{cfg.prefix}/predictions")


def retrain_asset(cfg: PipelineConfig) -> Asset:
    """External systems request retraining by POSTing an event for this asset (docs/operators.md)."""
    return Asset(name=f"{cfg.name}_retrain", uri=f"mlops://{cfg.name}/retrain")


def _schedule(cron: str | None, asset: Asset) -> Any:
    if not cron:
        return asset
    presets = {"@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@hourly": "0 * * * *"}
    timetable = CronTriggerTimetable(presets.get(cron, cron), timezone="UTC")
    return AssetOrTimeSchedule(timetable=timetable, assets=asset)


def _dag(cfg: PipelineConfig, kind: str, schedule: Any, doc: str) -> DAG:
    notifier = MlopsNotifier(pipeline=cfg.name)
    return DAG(
        dag_id=cfg.dag_id(kind),  # type: ignore[arg-type]
        schedule=schedule,
        start_date=dt.datetime.combine(cfg.start_date, dt.time(), tzinfo=dt.UTC),
        end_date=dt.datetime.combine(cfg.end_date, dt.time(), tzinfo=dt.UTC) if cfg.end_date else None,
        catchup=False,
        max_active_runs=1 if kind == "training" else 4,
        tags=["mlops", cfg.name, kind],
        doc_md=f"**{cfg.name}** — {cfg.description}\n\n{doc}",
        default_args={
            "owner": cfg.owner,
            "retries": cfg.retries,
            "retry_delay": dt.timedelta(seconds=30),
            "retry_exponential_backoff": True,
            "max_retry_delay": dt.timedelta(minutes=10),
            "on_failure_callback": notifier,
        },
    )


def build_training_dag(cfg: PipelineConfig) -> DAG:
    common = {"pipeline": cfg.name}
    with _dag(
        cfg,
        "training",
        _schedule(cfg.training.schedule, retrain_asset(cfg)),
        "Ingest, validate and version the training window, train, export, gate and register.",
    ) as dag:
        plan = PlanIngestionOperator(task_id="plan_ingestion", **common)
        ingest = IngestDayOperator.partial(task_id="ingest", **common).expand(day=plan.output)
        validate = ValidateDayOperator.partial(task_id="validate", **common).expand(
            ingest_result=ingest.output
        )
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
        cfg.inference.schedule,
        "Score the day's validated data with the champion ONNX model; publish atomically.",
    ) as dag:
        models = ResolveChampionOperator(task_id="resolve_champion", **common)
        ingest = IngestDayOperator(task_id="ingest", **common)
        validate = ValidateDayOperator(task_id="validate", ingest_result=ingest.output, **common)
        plan = PlanScoringOperator(task_id="plan_parts", **common)
        models >> ingest
        validate >> plan
        score = ScorePartOperator.partial(task_id="score", models=models.output, **common).expand(
            unit=plan.output
        )
        PublishPredictionsOperator(
            task_id="publish",
            part_results=score.output,
            models=models.output,
            outlets=[predictions_asset(cfg)],
            **common,
        )
        shadow = ScorePartOperator.partial(
            task_id="shadow_score", models=models.output, role="challenger", **common
        ).expand(unit=plan.output)
        publish_shadow = PublishPredictionsOperator(
            task_id="publish_shadow",
            part_results=shadow.output,
            models=models.output,
            role="challenger",
            **common,
        )
        publish_shadow >> ShadowReportOperator(task_id="shadow_report", models=models.output, **common)
    return dag


def build_drift_dag(cfg: PipelineConfig) -> DAG:
    common = {"pipeline": cfg.name}
    with _dag(
        cfg,
        "drift_monitor",
        _schedule(cfg.drift.schedule, predictions_asset(cfg)),
        "Compare scored inputs with the champion's training data; request retraining on drift.",
    ) as dag:
        check = DriftCheckOperator(task_id="drift_check", **common)
        TriggerRetrainingOperator(
            task_id="request_retraining", decision=check.output, outlets=[retrain_asset(cfg)], **common
        )
    return dag


def build_dags(cfg: PipelineConfig) -> dict[str, DAG]:
    dags = [build_training_dag(cfg), build_batch_inference_dag(cfg), build_drift_dag(cfg)]
    return {dag.dag_id: dag for dag in dags}
