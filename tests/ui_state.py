"""Registry and bucket state for the "ML models" view tests: what a short lifecycle leaves behind.

Versions are registered through :func:`mlops_tasks.registry.register` on the real MLflow server, from
runs that carry a placeholder ``model/model.onnx`` (the registry only checks the export exists; the
view never loads a model). Reports, predictions and lineage are written to the real S3 endpoint at the
keys the stages use.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from mlops_tasks import lineage, registry, tracking
from mlops_tasks.config import PipelineConfig
from mlops_tasks.storage import ObjectStore, partition_prefix, publish_manifest, write_part

EARLIER_GATE_DAY = dt.date(2013, 2, 1)
GATE_DAY = dt.date(2013, 3, 1)
DRIFT_DAY = dt.date(2013, 3, 9)
INFERENCE_DAY = dt.date(2013, 3, 8)
DRIFT_HTML = "<html><body><h1>Evidently drift report</h1></body></html>"


def isolated_config(cfg: PipelineConfig, bucket: str) -> PipelineConfig:
    """``cfg`` with its own bucket, prefix, experiment and registered model, so tests sharing one
    MLflow server never see each other's state."""
    tag = f"ui_{uuid.uuid4().hex[:10]}"
    return cfg.model_copy(
        update={
            "storage": cfg.storage.model_copy(update={"bucket": bucket, "prefix": tag}),
            "mlflow": cfg.mlflow.model_copy(update={"experiment": tag, "registered_model": tag}),
        }
    )


def register_version(
    cfg: PipelineConfig, tracking_uri: str, *, value: float, promote: bool, trigger: str = "schedule"
) -> dict[str, Any]:
    """A finished training run with an exported model, registered with a gate decision on ``value``."""
    client = tracking.client(tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment_name)
    data_version = f"dv-{uuid.uuid4().hex[:8]}"
    run = client.create_run(experiment_id, tags={"trigger": trigger, "data_version": data_version})
    client.log_text(run.info.run_id, "placeholder", tracking.ONNX_ARTIFACT)
    client.set_terminated(run.info.run_id)
    metric = cfg.gate.primary_metric
    reason = f"{'promoted' if promote else 'rejected'}: {metric} {value:.4f}"
    decision = {
        "promote": promote,
        "reason": reason,
        "primary_metric": metric,
        "challenger": {"metrics": {metric: value}},
        "floor_failed": False,
    }
    result = registry.register(
        cfg, run.info.run_id, tracking_uri=tracking_uri, decision=decision, data_version=data_version
    )
    return {**result, "run_id": run.info.run_id, "data_version": data_version, "decision": decision}


def write_gate_report(
    store: ObjectStore, cfg: PipelineConfig, version: dict[str, Any], day: dt.date = GATE_DAY
) -> str:
    """gate.json + gate.html of the version's gate, where evaluation writes them; returns the HTML key."""
    base = partition_prefix(cfg.prefix, "reports/gate", day) + f"{version['run_id']}/"
    store.put_json(base + "gate.json", version["decision"] | {"run_id": version["run_id"]})
    store.put_bytes(base + "gate.html", b"<html><body>gate report</body></html>", "text/html; charset=utf-8")
    return base + "gate.html"


def write_drift_report(store: ObjectStore, cfg: PipelineConfig, status: str, share: float) -> str:
    """drift.json + drift.html where the drift monitor writes them; returns the HTML key."""
    prefix = partition_prefix(cfg.prefix, "reports/drift", DRIFT_DAY)
    decision = {
        "status": status,
        "retrain": status == "drift",
        "share_drifted": share,
        "reasons": ["dep_hour"],
    }
    store.put_json(prefix + "drift.json", {"decision": decision})
    store.put_bytes(prefix + "drift.html", DRIFT_HTML.encode(), "text/html; charset=utf-8")
    return prefix + "drift.html"


def write_predictions(store: ObjectStore, cfg: PipelineConfig, rows: int, model_version: str) -> None:
    partition = partition_prefix(cfg.prefix, "predictions", INFERENCE_DAY)
    part = write_part(store, partition, "part-0.parquet", b"not read by the view", rows)
    publish_manifest(store, partition, [part], model_version=model_version)


def write_lineage(
    store: ObjectStore, cfg: PipelineConfig, version: dict[str, Any], gate_html_key: str
) -> None:
    validation = partition_prefix(cfg.prefix, "reports/validation", GATE_DAY) + "validation.json"
    lineage.write_record(
        store,
        cfg,
        {
            "model_name": cfg.registered_model_name,
            "model_version": version["version"],
            "landing_files": [store.uri(partition_prefix(cfg.prefix, "landing", GATE_DAY) + "flights.csv")],
            "curated_partitions": [store.uri(partition_prefix(cfg.prefix, "curated", GATE_DAY))],
            "validation_reports": [store.uri(validation)],
            "data_version": version["data_version"],
            "run_id": version["run_id"],
            "onnx_artifact_uri": "mlflow-artifacts:/placeholder/model/model.onnx",
            "gate": {
                "promote": version["decision"]["promote"],
                "reason": version["decision"]["reason"],
                "report_html_uri": store.uri(gate_html_key),
            },
            "promoted": version["promoted"],
            "trigger": "schedule",
        },
    )


def seed_lifecycle(store: ObjectStore, cfg: PipelineConfig, tracking_uri: str) -> dict[str, Any]:
    """v1 promoted (roc_auc 0.70), v2 promoted (0.74, the champion), v3 rejected (0.69) after a drift-
    triggered retraining; gate report of v3, a drift report (drift, 42% drifted), predictions of
    1234 rows by v2, lineage of v2."""
    v1 = register_version(cfg, tracking_uri, value=0.70, promote=True)
    v2 = register_version(cfg, tracking_uri, value=0.74, promote=True)
    write_lineage(store, cfg, v2, write_gate_report(store, cfg, v2, EARLIER_GATE_DAY))
    v3 = register_version(cfg, tracking_uri, value=0.69, promote=False, trigger="drift")
    gate_html = write_gate_report(store, cfg, v3)
    drift_html = write_drift_report(store, cfg, "drift", 0.42)
    write_predictions(store, cfg, 1234, v2["version"])
    return {"versions": [v1, v2, v3], "gate_html": gate_html, "drift_html": drift_html}
