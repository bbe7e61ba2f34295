"""Alerts reach a real webhook over HTTP on loopback when the ``mlops_alerts`` connection exists."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mlops_tasks.airflow.notifiers import announce


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch):
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_ALERTS",
        json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{server.server_port}/hook"}),
    )
    yield received
    server.shutdown()


def test_alert_is_posted_as_json_to_the_webhook(webhook: list[dict]) -> None:
    assert announce("flights_delay", "drift_detected", "retraining requested", {"window_end": "2013-07-01"})
    assert webhook == [
        {
            "pipeline": "flights_delay",
            "event": "drift_detected",
            "message": "retraining requested",
            "details": {"window_end": "2013-07-01"},
        }
    ]


def test_without_a_webhook_connection_the_alert_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert announce("flights_delay", "gate_rejected", "roc_auc 0.55 must be >= 0.6") is False
    assert "gate_rejected: roc_auc 0.55 must be >= 0.6" in caplog.text


def test_a_failed_post_logs_the_webhook_host_not_its_secret_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing listens on port 9 of loopback: the POST fails at once.
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_ALERTS",
        json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9/services/T000/B000/SECRETTOKENxyz"}),
    )
    assert announce("flights_delay", "task_failed", "train failed") is False
    assert "Alert webhook http://127.0.0.1 failed" in caplog.text
    assert "SECRETTOKENxyz" not in caplog.text
