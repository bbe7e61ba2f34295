"""Airflow plugin: the "ML models" view (mlops_tasks.ui) mounted in the API server at /mlops and
listed in the Airflow UI navigation.

It ships with the package: Airflow loads it from the ``airflow.plugins`` entry point (pyproject.toml),
so an image or a git-synced dags/ folder needs no plugins/ folder for it.

Importing this module is cheap: the app is built on its first request, in the API server only.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlops_tasks.ui.app import app

UI_PREFIX = "/mlops"


class MlopsPlugin(AirflowPlugin):
    name = "mlops_tasks"
    fastapi_apps = [{"app": app, "url_prefix": UI_PREFIX, "name": "ML models"}]
    # url_route is required: without it Airflow 3 drops the view. The UI embeds href under /plugin/ml-models.
    # The href is relative (no leading slash): the browser resolves it against the <base> the Airflow UI
    # sets from [api] base_url, so behind a proxy at https://host/airflow the view is /airflow/mlops/.
    external_views = [
        {
            "name": "ML models",
            "href": f"{UI_PREFIX.lstrip('/')}/",
            "destination": "nav",
            "url_route": "ml-models",
        }
    ]
