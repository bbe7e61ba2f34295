"""The REST client's handling of a flaky api-server: a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from mlops_tasks import airflow_client
from mlops_tasks.airflow_client import AirflowApi, AirflowApiError


@pytest.fixture
def flaky_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """Answers 503, then drops a connection, then answers; records the methods it saw."""
    monkeypatch.setattr(airflow_client, "RETRY_SECONDS", 0.01)
    state: dict = {"seen": [], "faults": ["503", "drop"]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            state["seen"].append(self.command)
            fault = state["faults"].pop(0) if state["faults"] else None
            if fault == "drop":
                self.connection.close()
                return
            body = json.dumps({"state": "running"}).encode()
            self.send_response(503 if fault else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["api"] = AirflowApi(f"http://127.0.0.1:{server.server_address[1]}", "token")
    yield state
    server.shutdown()
    server.server_close()


def test_a_poll_outlives_an_api_server_answering_503_and_dropping_a_connection(flaky_server: dict) -> None:
    assert flaky_server["api"].run("d", "r") == {"state": "running"}
    assert flaky_server["seen"] == ["GET", "GET", "GET"]


def test_a_post_is_sent_once_and_its_failure_named(flaky_server: dict) -> None:
    with pytest.raises(AirflowApiError, match=r"POST /dags/d/dagRuns: HTTP 503"):
        flaky_server["api"].trigger("d", "2013-01-01")
    assert flaky_server["seen"] == ["POST"]


def test_an_api_server_that_is_gone_is_one_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(airflow_client, "RETRY_SECONDS", 0.01)
    api = AirflowApi("http://127.0.0.1:9", "token")  # the discard port: nothing listens
    with pytest.raises(AirflowApiError, match=r"GET /dags/d/dagRuns/r: the api-server at .* did not answer"):
        api.run("d", "r")
