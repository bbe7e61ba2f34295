"""Alerts: task failures, gate rejections and drift detections, to the log and optionally a webhook.

The webhook is an Airflow connection (default id ``mlops_alerts``, type http, host = the URL, e.g. a
Slack/Teams incoming webhook); without it, alerts go to the task log only. The payload is JSON
``{"pipeline", "event", "message", "details"}`` and never contains connection secrets.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

ALERTS_CONN_ID = "mlops_alerts"
log = logging.getLogger(__name__)


def webhook_url(conn_id: str = ALERTS_CONN_ID) -> str | None:
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # "not configured" raises different exception types across secrets backends
        return None
    host = (conn.host or "").strip()
    if not host:
        return None
    return host if "://" in host else f"{conn.schema or 'https'}://{host}"


def announce(pipeline: str, event: str, message: str, details: dict[str, Any] | None = None) -> bool:
    """Log the alert; POST it to the webhook if one is configured. Returns whether it was posted."""
    log.warning("[%s] %s: %s", pipeline, event, message)
    url = webhook_url()
    if not url:
        return False
    payload = json.dumps({"pipeline": pipeline, "event": event, "message": message, "details": details or {}})
    request = urllib.request.Request(
        url, data=payload.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10):
            return True
    except OSError as exc:
        # Scheme and host only: Slack and Teams webhooks carry their secret in the path.
        parts = urllib.parse.urlsplit(url)
        log.error("Alert webhook %s://%s failed: %s", parts.scheme, parts.hostname, exc)
        return False


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
        announce(self.pipeline, "task_failed", message, {"dag_id": ti.dag_id, "task_id": ti.task_id})
