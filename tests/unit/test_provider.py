"""Airflow discovers the package as a provider: its connection type and extra links are listed."""

from __future__ import annotations


def test_airflow_lists_the_mlflow_connection_type_and_the_extra_links() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "mlops-tasks" in manager.providers
    # hooks as the task runtime (task SDK) resolves them; ProvidersManager.hooks is deprecated
    assert (
        ProvidersManagerTaskRuntime().hooks["mlflow"].hook_class_name
        == "mlops_tasks.airflow.hooks.MlflowHook"
    )
    assert "mlops_tasks.airflow.links.GateReportLink" in manager.extra_links_class_names
