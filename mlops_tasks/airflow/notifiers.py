"""Alerts: task failures, gate rejections and drift detections, to the log and optionally a webhook.

The webhook is an Airflow connection (default id ``mlops_alerts``, type http): either host = the
whole URL (e.g. a Slack/Teams incoming webhook), or the URI form
``AIRFLOW_CONN_MLOPS_ALERTS=https://hooks.slack.com/services/...`` (Airflow puts the path in
``schema`` there; it moves a query string into extra, where it cannot be told from HttpHook options,
so a signed URL - Teams Workflows, Power Automate - goes whole into host), or host, port and schema (``http``/``https``) as HttpHook reads them. Without it,
alerts go to the task log only. The payload is JSON ``{"pipeline", "event", "message", "details"}``
(plus ``key`` for the alerts of a task: the same for every attempt that raises it, so a receiver can
drop the repeat a retried task sends) and never contains connection secrets. An alert is best-effort: a webhook that is down, misnamed or
answers garbage is logged (scheme and host only) and never fails the task that raised the alert.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseNotifier

from mlops_tasks.airflow.hooks import connection_url

if TYPE_CHECKING:
    from airflow.sdk import Context

ALERTS_CONN_ID = "mlops_alerts"
log = logging.getLogger(__name__)


def webhook_url(conn_id: str = ALERTS_CONN_ID) -> str | None:
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # "not configured" raises different exception types across secrets backends
        return None
    if not (conn.host or "").strip():
        return None
    # a bare host: https, never the secret path in clear text on a guess
    return connection_url(conn, "https")


def alert_key(context: Context, event: str, attempt: bool = False) -> str:
    """The identity of a task's alert: ``<dag_id>/<run_id>/<task_id>[<map_index>]/<event>``, with the
    try number when ``attempt`` (a failure of each try is news; a decision re-announced by a retry of
    the task that made it is not)."""
    ti = context["ti"]
    index = getattr(ti, "map_index", -1)
    task = ti.task_id + (f"[{index}]" if index is not None and index >= 0 else "")
    try_part = f"/try-{ti.try_number}" if attempt else ""
    return f"{ti.dag_id}/{context['run_id']}/{task}{try_part}/{event}"


def announce(
    pipeline: str, event: str, message: str, details: dict[str, Any] | None = None, key: str | None = None
) -> bool:
    """Log the alert; POST it to the webhook if one is configured. Returns whether it was posted.
    ``key``: see :func:`alert_key`."""
    log.warning("[%s] %s: %s", pipeline, event, message)
    url = webhook_url()
    if not url:
        return False
    body = {"pipeline": pipeline, "event": event, "message": message, "details": details or {}}
    payload = json.dumps(body | ({"key": key} if key else {}), default=str)
    try:
        request = urllib.request.Request(
            url, data=payload.encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10):
            return True
    except Exception as exc:  # best-effort (module docstring): bad URL, refused, non-HTTP answer, ...
        # Scheme and host only, and the error's type, not its text: Slack and Teams webhooks carry
        # their secret in the path, which urllib quotes in some errors (e.g. "unknown url type").
        parts = urllib.parse.urlsplit(url)
        log.error("Alert webhook %s://%s failed: %s", parts.scheme, parts.hostname, _described(exc, url))
        return False


def _described(exc: Exception, url: str) -> str:
    """The error without the URL's path and query, which hold a webhook's secret, nor its password
    (urllib quotes ``user:password@host`` as a bad port)."""
    parts = urllib.parse.urlsplit(url)
    text = str(exc)
    for secret in (parts.path.strip("/"), parts.query, parts.password):
        if secret:
            text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}"


class MlopsNotifier(BaseNotifier):
    """``on_failure_callback`` of every mlops_tasks DAG.

    :param pipeline: pipeline name shown in the alert.
    """

    template_fields = ("pipeline",)

    def __init__(self, pipeline: str) -> None:
        super().__init__()
        self.pipeline = pipeline

    def notify(self, context: Context) -> None:
        ti = context["ti"]
        exception = context.get("exception")
        message = f"task {ti.task_id} of {ti.dag_id} failed (run {context['run_id']}): {exception}"
        announce(
            self.pipeline,
            "task_failed",
            message,
            {"dag_id": ti.dag_id, "task_id": ti.task_id},
            key=alert_key(context, "task_failed", attempt=True),
        )
