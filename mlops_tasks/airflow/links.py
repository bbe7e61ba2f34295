"""Extra links on task instances: reports, the MLflow run, the registered model version.

Airflow 3 stores each link's final URL in XCom under the link's ``xcom_key`` when the task runs; the
UI reads it from there. Reports live in the (private) bucket, so their links point at the
"ML models" app mounted in the Airflow API server, which serves them to logged-in users only -
never a public S3 URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import attrs
from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

UI_APP_PREFIX = "/mlops"


def ui_app_path() -> str:
    """Where the UI app is on the Airflow host: ``/mlops`` under the path of ``[api] base_url``
    (an API server behind a proxy at ``https://host/airflow`` serves it at ``/airflow/mlops``)."""
    from airflow.sdk import conf

    base = conf.get("api", "base_url", fallback="") or ""
    return urlsplit(base).path.rstrip("/") + UI_APP_PREFIX


def report_url(uri: str | None) -> str | None:
    """Link to a report in the bucket, served through the authenticated UI app."""
    if not uri:
        return None
    return f"{ui_app_path()}/reports?uri={quote(uri, safe='')}"


@attrs.define()
class StoredLink(BaseOperatorLink):
    label: str = ""

    @property
    def name(self) -> str:
        return self.label

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""

    @classmethod
    def persist(cls, context: Context, url: str | None) -> None:
        """Store the link's URL; "" when there is nothing to link (a drift check without a report):
        a link with no XCom at all makes every view of the task log an "XCom not found" error."""
        context["ti"].xcom_push(key=cls().xcom_key, value=url or "")


@attrs.define()
class ValidationReportLink(StoredLink):
    label: str = "Validation report"


@attrs.define()
class MlflowRunLink(StoredLink):
    label: str = "MLflow run"


@attrs.define()
class RegisteredModelLink(StoredLink):
    label: str = "Registered model version"


@attrs.define()
class GateReportLink(StoredLink):
    label: str = "Gate report"


@attrs.define()
class DriftReportLink(StoredLink):
    label: str = "Drift report"


def mlflow_run_url(ui_url: str, result: dict[str, Any]) -> str:
    return f"{ui_url}/#/experiments/{result['experiment_id']}/runs/{result['run_id']}"


def model_version_url(ui_url: str, result: dict[str, Any]) -> str:
    # Quoted: MLflow accepts "#", "?" and "%" in model names, which would end or break the UI's route.
    return f"{ui_url}/#/models/{quote(str(result['model_name']), safe='')}/versions/{result['version']}"
