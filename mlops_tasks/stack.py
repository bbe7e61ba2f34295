"""The embedded local stack: real services as child processes on loopback, no Docker needed.

* S3: moto's server mode (a real HTTP S3 endpoint). It keeps objects in memory: the stack is
  ephemeral by design, and ``mlops-tasks up`` says so. Use MinIO (docker-compose.yaml) to keep data.
* MLflow: ``mlflow server`` with a SQLite backend store and artifacts proxied into the S3 bucket.

The same launchers serve the test suite, so tests run against exactly what users run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_ACCESS_KEY = "mlops-local"
LOCAL_SECRET_KEY = "mlops-local-secret"  # the throwaway local stack's own credential


class StackError(RuntimeError):
    """A local service failed to start; the message names it and points at its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Service:
    """A child process serving on a loopback port, with its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_process(
    name: str,
    argv: list[str],
    url: str,
    log_dir: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> Service:
    """Start ``argv`` in its own process group and wait until ``ready()``; fail with its log tail."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    service = Service(name, url, process, log_path, env or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise StackError(
                f"{name} exited with code {process.returncode}; log {log_path}:\n{service.log_tail()}"
            )
        if ready():
            return service
        time.sleep(0.25)
    service.stop()
    raise StackError(
        f"{name} did not become ready within {timeout:.0f}s; log {log_path}:\n{service.log_tail()}"
    )


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    return check


def s3_env(endpoint_url: str) -> dict[str, str]:
    """Environment that points boto3/s3fs clients (MLflow server, DVC) at the local endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "MLFLOW_S3_ENDPOINT_URL": endpoint_url,
    }


def start_s3(log_dir: Path, port: int | None = None) -> Service:
    """moto's S3 server on 127.0.0.1 (in-memory)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return start_process("s3", argv, url, log_dir, http_ok(url + "/moto-api/"), timeout=60)


def start_mlflow(
    log_dir: Path, s3_endpoint: str, bucket: str, backend_uri: str | None = None, port: int | None = None
) -> Service:
    """``mlflow server`` on 127.0.0.1: SQLite (or the given) backend store, artifacts in ``s3://bucket/mlflow``."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    backend_uri = backend_uri or f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"
    argv = [
        _bin("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        f"s3://{bucket}/mlflow",
        "--workers",
        "1",
    ]
    env = {**s3_env(s3_endpoint), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return start_process("mlflow", argv, url, log_dir, http_ok(url + "/health"), env=env, timeout=120)


def connection_env(
    s3_endpoint: str, mlflow_url: str, s3_conn_id: str = "mlops_s3", mlflow_conn_id: str = "mlops_mlflow"
) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` variables for the local stack (the only place its credentials appear)."""
    import json

    s3 = {
        "conn_type": "aws",
        "login": LOCAL_ACCESS_KEY,
        "password": LOCAL_SECRET_KEY,
        "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    mlflow = {"conn_type": "mlflow", "host": mlflow_url}
    return {
        f"AIRFLOW_CONN_{s3_conn_id.upper()}": json.dumps(s3),
        f"AIRFLOW_CONN_{mlflow_conn_id.upper()}": json.dumps(mlflow),
    }
