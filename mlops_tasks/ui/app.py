"""The "ML models" app, mounted by the package's Airflow plugin (:mod:`mlops_tasks.airflow.plugin`) at
``/mlops`` in the Airflow API server.

Routes (all require an authenticated Airflow user allowed to read DAGs, via Airflow's own
``requires_access_dag`` dependency: the ``Authorization: Bearer`` header or the ``_token`` cookie the
Airflow UI sets; 401 when anonymous, 403 without DAG read access). Each user sees the pipelines of
which the auth manager lets them read at least one DAG; the others are absent (404):

* ``GET /``                 one row per pipeline (champion, last gate, training, drift, inference)
* ``GET /pipelines/{name}`` drill-down: metric history chart, gate report, lineage, MLflow/DAG links
* ``GET /api/status``       the same rows as JSON (the view-model of ``mlops-tasks status``)
* ``GET /reports?uri=...``  a report from a pipeline's ``reports/`` or ``lineage/`` area, streamed
                            from the private bucket; HTML reports are sandboxed (no access to the
                            Airflow origin, its cookies or its API)

Pipelines, stores and tracking URIs come from :class:`Sources`: by default the pipeline configs and
their Airflow connections, exactly as the DAGs use them. Connection secrets never reach a page.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mlops_tasks.config import ConfigError, PipelineConfig, config_dir, config_paths, load_each
from mlops_tasks.status import json_safe, pipeline_status
from mlops_tasks.storage import ObjectStore, StorageError

PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; "
    "base-uri 'none'; form-action 'none'"
)
# Reports are rendered by other tools (Evidently ships its own scripts): run them in an opaque origin.
REPORT_CSP = "sandbox allow-scripts allow-popups; frame-ancestors 'self'"
# MLflow's client takes basic-auth credentials from the process environment only, which MlflowHook
# sets for its connection when it resolves the tracking URI: the API server runs requests in a thread
# pool, so a pipeline's MLflow calls hold this lock from resolving its connection to the last call.
_MLFLOW_CREDENTIALS = threading.Lock()


def _hook_store(cfg: PipelineConfig) -> ObjectStore:
    from mlops_tasks.airflow.hooks import ObjectStoreHook

    return ObjectStoreHook(cfg.storage.connection_id, cfg.storage.bucket).get_store()


def _hook_mlflow(cfg: PipelineConfig) -> tuple[str, str]:
    from mlops_tasks.airflow.hooks import MlflowHook

    return MlflowHook(cfg.mlflow.connection_id).get_addresses()


@dataclass(frozen=True)
class BrokenConfig:
    """A config file the DAG factory refuses too (it shows an error DAG for it): one error row."""

    path: Path
    error: ConfigError
    no_directory: bool = False  # no config directory at all (path): one error DAG of its own


def _dag_ids(config: PipelineConfig | BrokenConfig, configs: int) -> set[str]:
    """The DAGs a config's row is about: a pipeline's, or the error DAG of a broken file (its id
    gets a "_<n>" suffix where another file's name differs only in punctuation: any of ``configs``)."""
    from mlops_tasks.airflow.dag_factory import CONFIG_DIR_ERROR_DAG, config_error_dag_base
    from mlops_tasks.ui.views import DAG_KINDS

    if isinstance(config, PipelineConfig):
        return {config.dag_id(kind) for kind in DAG_KINDS}
    if config.no_directory:
        return {CONFIG_DIR_ERROR_DAG}
    base = config_error_dag_base(config.path)
    return {base, *(f"{base}_{n}" for n in range(2, configs + 2))}


def _every_config() -> list[PipelineConfig | BrokenConfig]:
    """Every config file as the DAG factory loads it: one broken file is its own error row, not a
    page that fails for every pipeline."""
    try:
        paths = config_paths()
    except ConfigError as exc:  # no config directory: one row saying so, not an empty page
        return [BrokenConfig(config_dir(), exc, no_directory=True)]
    return [
        BrokenConfig(path, loaded) if isinstance(loaded, ConfigError) else loaded
        for path, loaded in load_each(paths)
    ]


@dataclass(frozen=True)
class Sources:
    """Where the app reads from: the pipeline configs and, per pipeline, its store and MLflow's
    addresses: ``(tracking URI, UI address for links)``.

    Configs are re-read on every request, so a new pipeline shows up without restarting Airflow.
    """

    configs: Callable[[], list[PipelineConfig | BrokenConfig]] = field(default=_every_config)
    store: Callable[[PipelineConfig], ObjectStore] = field(default=_hook_store)
    mlflow: Callable[[PipelineConfig], tuple[str, str]] = field(default=_hook_mlflow)


def _failure(name: str, exc: Exception) -> dict[str, Any]:
    from mlops_tasks.ui.views import redact

    first_line = (str(exc).splitlines() or [""])[0]
    return {"pipeline": name, "error": redact(f"{type(exc).__name__}: {first_line[:500]}")}


def _unavailable() -> tuple[type[Exception], ...]:
    """Failures of one pipeline's backends (or its connections) that must not take the whole page down."""
    from airflow.sdk.exceptions import AirflowException
    from mlflow.exceptions import MlflowException

    from mlops_tasks.tracking import TrackingUnavailable

    return (StorageError, TrackingUnavailable, MlflowException, AirflowException, OSError, ValueError)


def _by_team(dag_ids: set[str]) -> dict[str | None, set[str]]:
    """``dag_ids`` grouped by the team owning their bundle (all under None unless
    ``[core] multi_team``; a DAG not in the metadata database yet belongs to no team)."""
    from airflow.configuration import conf

    if not conf.getboolean("core", "multi_team", fallback=False):
        return {None: dag_ids}
    from airflow.models.dag import DagModel

    teams = DagModel.get_dag_id_to_team_name_mapping(sorted(dag_ids))
    grouped: dict[str | None, set[str]] = {}
    for dag_id in dag_ids:
        grouped.setdefault(teams.get(dag_id), set()).add(dag_id)
    return grouped


def build_app(sources: Sources | None = None) -> FastAPI:
    """The FastAPI app; every route requires DAG read access (401 when anonymous, 403 without it)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import get_user, requires_access_dag

    from mlops_tasks.ui import render, views

    src = sources or Sources()

    def readable(configs: list[Any], user: Any) -> list[Any]:
        """``configs`` less the pipelines of which the user may read no DAG: an auth manager with
        per-DAG (or per-team) permissions shows each user the rows, pages and reports of their
        pipelines only. A broken config's row (its error quotes the file's values, and other files'
        buckets) goes to those who may read the error DAG the DAG file shows in its place."""
        about = {id(c): _dag_ids(c, len(configs)) for c in configs}
        wanted = set().union(*about.values())
        manager = get_auth_manager()
        allowed = set()
        # Multi-team mode: a DAG's team goes with the check, or a user of one team would be shown
        # another team's pipelines (as Airflow's own get_authorized_dag_ids groups them).
        for team, dag_ids in _by_team(wanted).items():
            allowed |= manager.filter_authorized_dag_ids(
                dag_ids=dag_ids, user=user, method="GET", team_name=team
            )
        return [c for c in configs if about[id(c)] & allowed]

    the_user = Depends(get_user)  # resolved once per request, after the app's access check

    def pipelines(user: Any) -> list[PipelineConfig]:
        return [c for c in readable(src.configs(), user) if isinstance(c, PipelineConfig)]

    app = FastAPI(
        title="ML models",
        # Logged in is not enough: the view shows what the pipelines' DAGs produce, so it takes the
        # permission to read DAGs, checked by the configured auth manager.
        dependencies=[Depends(requires_access_dag("GET"))],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def private_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    def rows(user: Any) -> list[dict[str, Any]]:
        out = []
        for cfg in readable(src.configs(), user):
            if isinstance(cfg, BrokenConfig):
                out.append(_failure(cfg.path.stem, cfg.error))
                continue
            try:
                with _MLFLOW_CREDENTIALS:
                    tracking_uri, ui_url = src.mlflow(cfg)
                    out.append(pipeline_status(src.store(cfg), cfg, tracking_uri=tracking_uri, ui_url=ui_url))
            except _unavailable() as exc:
                out.append(_failure(cfg.name, exc))
        return json_safe(views.redact(out))

    def root_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def airflow_root_of(request: Request) -> str:
        """Airflow's own path: this app's, less the one segment the plugin mounts it at
        (``/airflow/mlops`` -> ``/airflow`` behind a proxy at /airflow, ``/mlops`` -> "")."""
        return root_of(request).rsplit("/", 1)[0]

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: Any = the_user) -> HTMLResponse:
        return HTMLResponse(render.overview(rows(user), root_of(request)))

    @app.get("/api/status")
    def api_status(user: Any = the_user) -> JSONResponse:
        return JSONResponse({"pipelines": rows(user)})

    @app.get("/pipelines/{name}", response_class=HTMLResponse)
    def pipeline_page(name: str, request: Request, user: Any = the_user) -> HTMLResponse:
        # a pipeline the user may not read is as absent as one that does not exist
        cfg = next((c for c in pipelines(user) if c.name == name), None)
        if cfg is None:
            raise HTTPException(404, f"no pipeline named {name!r}")
        try:
            with _MLFLOW_CREDENTIALS:
                tracking_uri, ui_url = src.mlflow(cfg)
                view = views.pipeline_detail(
                    src.store(cfg),
                    cfg,
                    tracking_uri=tracking_uri,
                    ui_url=ui_url,
                    airflow_path=airflow_root_of(request),
                )
        except _unavailable() as exc:
            failure = _failure(cfg.name, exc)
            return HTMLResponse(render.overview([failure], root_of(request)), status_code=503)
        return HTMLResponse(render.detail(view, cfg.name, cfg.gate.primary_metric, root_of(request)))

    @app.get("/reports")
    def report(uri: str = Query(..., max_length=1024), user: Any = the_user) -> Response:
        try:
            ref = views.resolve_report(uri, pipelines(user))
            body = src.store(ref.cfg).get_bytes(ref.key)
        except views.ReportRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except FileNotFoundError:
            raise HTTPException(404, "no such report") from None
        except _unavailable() as exc:  # the store down, its connection missing: not a server bug
            raise HTTPException(503, _failure(ref.cfg.name, exc)["error"]) from None
        headers = {"Content-Security-Policy": REPORT_CSP} if ref.media_type.startswith("text/html") else {}
        return Response(body, media_type=ref.media_type, headers=headers)

    return app
