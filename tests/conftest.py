"""Shared fixtures: real services over loopback, started once per test session.

* ``s3_endpoint``: moto's S3 server as a child process (real HTTP, real boto3 wire protocol).
* ``store``: an :class:`ObjectStore` on a fresh bucket per test, so tests never see each other's keys.
* ``mlflow_server``: a real ``mlflow server`` (SQLite store, artifacts in the S3 endpoint).
* ``webhook``: an alert webhook on loopback, set as the ``mlops_alerts`` connection; the alerts it got.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlops_tasks import stack
from mlops_tasks.config import PipelineConfig, load_config
from mlops_tasks.storage import ObjectStore, S3Settings

REPO = Path(__file__).resolve().parent.parent

# Airflow reads its home at import time: give the test session its own, never the user's.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="mlops-tests-airflow-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("MLOPS_TASKS_CONFIG_DIR", str(REPO / "configs"))
EXAMPLE_CONFIG = REPO / "configs" / "flights_delay.yaml"


def tune(cfg: PipelineConfig, section: str, values: dict[str, Any]) -> PipelineConfig:
    """``cfg`` with some fields of one section (e.g. ``drift``) replaced."""
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})


def require_service(name: str, host: str, port: int) -> None:
    """Skip (laptop) or fail (CI=true) when a system service is not listening."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError:
        message = f"{name} is not reachable on {host}:{port}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI requires it")
        pytest.skip(message)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def s3_endpoint(stack_dir: Path) -> Iterator[str]:
    service = stack.start_s3(stack_dir)
    yield service.url
    service.stop()


def make_store(endpoint: str, bucket: str | None = None) -> ObjectStore:
    settings = S3Settings(
        bucket=bucket or f"t-{uuid.uuid4().hex[:12]}",
        endpoint_url=endpoint,
        aws_access_key_id=stack.LOCAL_ACCESS_KEY,
        aws_secret_access_key=stack.LOCAL_SECRET_KEY,
        max_attempts=2,
    )
    store = ObjectStore(settings)
    store.ensure_bucket()
    return store


@pytest.fixture
def store(s3_endpoint: str) -> ObjectStore:
    return make_store(s3_endpoint)


@pytest.fixture(scope="session")
def mlflow_server(stack_dir: Path, s3_endpoint: str) -> Iterator[str]:
    make_store(s3_endpoint, "mlops")
    service = stack.start_mlflow(stack_dir, s3_endpoint, "mlops")
    yield service.url
    service.stop()


@pytest.fixture
def example_config() -> PipelineConfig:
    return load_config(EXAMPLE_CONFIG)


@pytest.fixture
def webhook_server() -> Iterator[tuple[int, list[dict]]]:
    """A webhook on loopback: its port, and each POST as ``{"path", **payload}``."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, **payload})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port, received
    server.shutdown()


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch, webhook_server: tuple[int, list[dict]]) -> list[dict]:
    port, received = webhook_server
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLOPS_ALERTS",
        json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{port}/hook"}),
    )
    return received
