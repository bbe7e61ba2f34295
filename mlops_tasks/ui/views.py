"""View-models of the "ML models" page beyond :mod:`mlops_tasks.status`: a pipeline's registry history,
lineage and links, which bucket objects may be served as reports, and redaction of URLs.

Everything here is read-only and returns plain JSON-able dicts, so the HTML renderer and the JSON API
show the same facts and tests can assert on them without parsing HTML.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mlops_tasks.status import json_safe, pipeline_status, redacted

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.storage import ObjectStore

REPORT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json"}
SERVED_AREAS = ("reports/", "lineage/")
DAG_KINDS = ("training", "batch_inference", "drift_monitor")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9_\-.=/]+$")


class ReportRefused(ValueError):
    """A report URI the app will not serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ReportRef:
    """A report the app may serve: the pipeline it belongs to, its key and its media type."""

    cfg: PipelineConfig
    key: str
    media_type: str


def resolve_report(uri: str, configs: list[PipelineConfig]) -> ReportRef:
    """Map ``s3://bucket/key`` to a servable report, or raise :class:`ReportRefused`.

    Only ``.html``/``.json`` objects under a configured pipeline's ``reports/`` or ``lineage/`` area of
    its own bucket are served; keys with empty, ``.`` or ``..`` segments or unusual characters are
    refused outright, so no URI can reach curated data, models or another tenant's prefix.
    """
    if not uri.startswith("s3://"):
        raise ReportRefused(f"report URI must start with s3:// (got {uri[:100]!r})")
    bucket, _, key = uri[5:].partition("/")
    segments = key.split("/")
    if not _KEY_CHARS.match(key) or any(s in ("", ".", "..") for s in segments):
        raise ReportRefused(f"report URI {uri[:200]!r} is not a plain object key")
    suffix = "." + segments[-1].rpartition(".")[2]
    if suffix not in REPORT_TYPES:
        raise ReportRefused(f"report URI {uri[:200]!r}: only {' and '.join(REPORT_TYPES)} reports are served")
    for cfg in configs:
        if cfg.storage.bucket == bucket and any(key.startswith(f"{cfg.prefix}/{a}") for a in SERVED_AREAS):
            return ReportRef(cfg, key, REPORT_TYPES[suffix])
    raise ReportRefused(f"{uri[:200]!r} is not a report of a configured pipeline", status=404)


def report_link(root: str, uri: str | None) -> str | None:
    """The app's own link to a report (same form as the operators' extra links)."""
    return f"{root}/reports?uri={quote(uri, safe='')}" if uri else None


def redact(value: Any) -> Any:
    """``value`` with credentials removed from every URL in it (``scheme://user:pass@host`` -> ``scheme://host``).

    Tracking URIs may carry basic-auth credentials; pages and JSON show only the host.
    """
    if isinstance(value, str):
        return redacted(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def version_history(cfg: PipelineConfig, tracking_uri: str) -> list[dict[str, Any]]:
    """Every registered version of the pipeline's model, oldest first, with its gate value of the
    primary metric (tag ``gate_<metric>`` set at registration), decision and aliases."""
    from mlops_tasks import tracking

    name = cfg.registered_model_name
    metric = cfg.gate.primary_metric
    client = tracking.client(tracking_uri)
    with tracking.reachable(tracking_uri, f"read the versions of model '{name}'"):
        versions = client.search_model_versions(f"name={tracking.quoted(name)}")
        aliases = client.get_registered_model(name).aliases if versions else {}
    by_version: dict[str, list[str]] = {}
    for alias, version in (aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    history = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        tags = v.tags or {}
        raw = tags.get(f"gate_{metric}")
        history.append(
            {
                "version": v.version,
                "value": _number(raw),
                "decision": tags.get("gate_decision"),
                "reason": tags.get("gate_reason"),
                "aliases": sorted(by_version.get(str(v.version), [])),
                "run_id": v.run_id,
                "created_at": dt.datetime.fromtimestamp(v.creation_timestamp / 1000, dt.UTC).isoformat(),
            }
        )
    return history


def _number(raw: str | None) -> float | None:
    """A metric tag as a number; None when absent or not finite (a "nan" metric is no point on a
    chart, and would make every point's position NaN)."""
    try:
        value = float(raw) if raw not in (None, "", "None") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_lineage(store: ObjectStore, cfg: PipelineConfig, version: str | None) -> dict[str, Any] | None:
    """The lineage record of ``version`` (or of the newest version), None when there is none, and
    ``{"error": <why>}`` when it cannot be read (edited by hand, written by another tool): one bad
    record must not take the rest of the page with it."""
    from mlops_tasks.errors import DataError
    from mlops_tasks.lineage import read_record

    try:
        return read_record(store, cfg, version)
    except FileNotFoundError:
        return None
    except DataError as exc:  # LineageError, CorruptObjectError
        return {"error": str(exc)}


def _run_url(tracking_uri: str, ui_url: str, run_id: str | None) -> str | None:
    from mlops_tasks import tracking

    if not run_id:
        return None
    with tracking.reachable(tracking_uri, f"read run {run_id}"):
        experiment_id = tracking.client(tracking_uri).get_run(run_id).info.experiment_id
    return f"{ui_url}/#/experiments/{experiment_id}/runs/{run_id}"


def pipeline_detail(
    store: ObjectStore,
    cfg: PipelineConfig,
    *,
    tracking_uri: str,
    ui_url: str | None = None,
    airflow_path: str = "",
) -> dict[str, Any]:
    """The drill-down of one pipeline: the status row, version history, lineage of the champion (or
    of the newest version) and links into MLflow (at ``ui_url``, default the tracking URI) and the
    pipeline's Airflow DAGs (under ``airflow_path``, the path of Airflow's UI on its host). Redacted."""
    status = pipeline_status(store, cfg, tracking_uri=tracking_uri, ui_url=ui_url)
    ui_url = ui_url or tracking_uri
    champion = status["champion"]
    history = version_history(cfg, tracking_uri)
    shown = champion["version"] if champion else (history[-1]["version"] if history else None)
    model = quote(cfg.registered_model_name, safe="")
    detail = {
        "status": status,
        "history": history,
        "lineage": read_lineage(store, cfg, shown) if shown else None,
        "links": {
            "mlflow_model": f"{ui_url}/#/models/{model}",
            "mlflow_champion_version": f"{ui_url}/#/models/{model}/versions/{champion['version']}"
            if champion
            else None,
            "mlflow_champion_run": _run_url(tracking_uri, ui_url, champion["run_id"]) if champion else None,
            "dags": {kind: f"{airflow_path}/dags/{cfg.dag_id(kind)}" for kind in DAG_KINDS},
        },
    }
    return json_safe(redact(detail))
