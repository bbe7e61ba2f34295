"""Airflow plugin: the "ML models" view (mlops_tasks.ui) mounted in the API server at /mlops and
listed in the Airflow UI navigation.

It ships with the package: Airflow loads it from the ``airflow.plugins`` entry point (pyproject.toml),
so an image or a git-synced dags/ folder needs no plugins/ folder for it.

Importing this module is cheap: every Airflow process imports plugins (a task process too, when it
builds its template context), but only the API server serves the app, which is imported and built
on its first request (FastAPI, the app and Airflow's API security module: a third of a second and
more in each task otherwise).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

UI_PREFIX = "/mlops"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _build_app() -> Any:
    from mlops_tasks.ui.app import build_app

    return build_app()


class LazyApp:
    """ASGI app that imports and builds the real one on its first request."""

    def __init__(self, factory: Callable[[], Any] = _build_app) -> None:
        self._factory = factory
        self._app: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = self._factory()
        await self._app(scope, receive, send)


app = LazyApp()


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
