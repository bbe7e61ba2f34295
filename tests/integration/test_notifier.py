"""Alerts reach a real webhook over HTTP on loopback when the ``mlops_alerts`` connection exists."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from mlops_tasks.airflow.notifiers import announce


def test_alert_is_posted_as_json_to_the_webhook(webhook: list[dict]) -> None:
    assert announce("flights_delay", "drift_detected", "retraining requested", {"window_end": "2013-07-01"})
    assert webhook == [
        {
            "path": "/hook",
            "pipeline": "flights_delay",
            "event": "drift_detected",
            "message": "retraining requested",
            "details": {"window_end": "2013-07-01"},
        }
    ]


def test_a_tasks_alerts_carry_a_key_that_a_retry_repeats_and_a_new_try_of_a_failure_does_not(
    webhook: list[dict],
) -> None:
    """A retried task re-announced its gate rejection or drift as a new alert; receivers (PagerDuty,
    Opsgenie) drop repeats of a key. Failures are keyed per try: each try that fails is news."""
    from types import SimpleNamespace

    from mlops_tasks.airflow.notifiers import MlopsNotifier, alert_key

    def context(try_number: int, map_index: int = -1) -> dict:
        ti = SimpleNamespace(dag_id="p_training", task_id="gate", map_index=map_index, try_number=try_number)
        return {"ti": ti, "run_id": "scheduled__2013-07-01", "exception": ValueError("boom")}

    assert alert_key(context(1), "gate_rejected") == alert_key(context(2), "gate_rejected")
    assert alert_key(context(1), "gate_rejected") == "p_training/scheduled__2013-07-01/gate/gate_rejected"
    assert alert_key(context(1, map_index=3), "x") == "p_training/scheduled__2013-07-01/gate[3]/x"
    for try_number in (1, 2):
        MlopsNotifier(pipeline="p").notify(context(try_number))
    assert [alert["key"] for alert in webhook] == [
        "p_training/scheduled__2013-07-01/gate/try-1/task_failed",
        "p_training/scheduled__2013-07-01/gate/try-2/task_failed",
    ]
    assert announce("p", "gate_rejected", "rejected", key="k") and webhook[-1]["key"] == "k"


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


@pytest.mark.parametrize(
    "connection",
    [
        # The URI form: Airflow puts the path in schema and the scheme in conn_type.
        "http://127.0.0.1:{port}/services/T000/B000/SECRET",
        # Host, port and schema, as HttpHook reads them.
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": "{port}", "schema": "http"}),
        # A signed URL (Teams Workflows, Power Automate) given whole as the host.
        json.dumps(
            {"conn_type": "http", "host": "http://127.0.0.1:{port}/workflows/abc/invoke?sig=SECRETSIG"}
        ),
        # A path ending in "/": kept as it is.
        "http://127.0.0.1:{port}/services/T000/B000/SECRET/",
    ],
    ids=["uri-form", "host-port-schema", "signed-url-as-host", "uri-form-trailing-slash"],
)
def test_every_form_of_the_connection_reaches_the_webhook(
    monkeypatch: pytest.MonkeyPatch, webhook_server: tuple[int, list[dict]], connection: str
) -> None:
    port, received = webhook_server
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", connection.replace("{port}", str(port)))
    assert announce("flights_delay", "gate_rejected", "rejected")
    expected_path = connection.split("{port}", 1)[1].split('"')[0] if "{port}/" in connection else "/"
    assert [r["path"] for r in received] == [expected_path]


def test_a_bare_host_is_reached_over_https(monkeypatch: pytest.MonkeyPatch) -> None:
    """The UI form's host without a scheme: the path of a Slack/Teams webhook is its secret."""
    from mlops_tasks.airflow.notifiers import webhook_url

    host = "hooks.slack.com/services/T0/B0/SECRET"
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_ALERTS", json.dumps({"conn_type": "http", "host": host}))
    assert webhook_url() == f"https://{host}"


def test_a_webhook_that_answers_garbage_is_logged_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An alert is best-effort: a wrong port or a broken proxy (not an OSError in urllib) must not
    fail the task that raised it - a drift trigger's retraining request included."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_garbage() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"not http at all\r\n\r\n")

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_ALERTS", f"http://127.0.0.1:{port}/services/T000/B000/SECRETTOKENxyz"
    )
    try:
        assert announce("flights_delay", "drift_detected", "retraining requested") is False
    finally:
        thread.join(timeout=5)
        listener.close()
    assert "Alert webhook http://127.0.0.1 failed: BadStatusLine" in caplog.text
    assert "SECRETTOKENxyz" not in caplog.text


def test_a_failed_post_never_logs_the_password_of_a_webhook_url(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """urllib takes ``user:password@host`` for the host and quotes it in its error ("nonnumeric port")."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_ALERTS",
        json.dumps({"conn_type": "http", "host": "http://hook:SECRETPW@localhost/services/T000/B000"}),
    )
    assert announce("flights_delay", "task_failed", "train failed") is False
    assert "Alert webhook http://localhost failed: InvalidURL" in caplog.text
    assert "SECRETPW" not in caplog.text
