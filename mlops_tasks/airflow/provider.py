"""``apache_airflow_provider`` entry point: lets Airflow list our connection type and extra links."""

from __future__ import annotations

from typing import Any

import mlops_tasks


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "mlops-tasks",
        "name": "mlops_tasks",
        "description": "ML model lifecycle operators: ingest, validate, version, train, gate, register, "
        "batch inference and drift-triggered retraining.",
        "versions": [mlops_tasks.__version__],
        "connection-types": [
            {"hook-class-name": "mlops_tasks.airflow.hooks.MlflowHook", "connection-type": "mlflow"},
        ],
        "extra-links": [
            "mlops_tasks.airflow.links.ValidationReportLink",
            "mlops_tasks.airflow.links.MlflowRunLink",
            "mlops_tasks.airflow.links.RegisteredModelLink",
            "mlops_tasks.airflow.links.GateReportLink",
            "mlops_tasks.airflow.links.DriftReportLink",
        ],
    }
