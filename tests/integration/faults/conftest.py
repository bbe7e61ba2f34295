"""Fault-injection fixtures: a TCP proxy that can cut the S3 endpoint off, and an MLflow server on
PostgreSQL that can be stopped and started again on the same port and database."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_tasks import stack
from tests.conftest import make_store, require_service
from tests.integration.faults.stage_runner import config, pump
from tests.integration.onnx_fixtures import EXAMPLE_VOCAB, build_model, random_params
from tests.integration.services import PG_HOST, PG_PORT, postgres_database


class OutageProxy:
    """Forwards 127.0.0.1:<port> to the S3 endpoint; :meth:`outage` refuses and drops every
    connection for a while (what clients see when the endpoint is stopped), then serves again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._closed = False
        self._listen()

    def _listen(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.requests += 1
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                # Not closed here: outage() resets them (SO_LINGER 0) to look like a stopped endpoint.
                threading.Thread(target=pump, args=(src, dst), kwargs={"close": False}, daemon=True).start()

    def outage(self, seconds: float) -> None:
        """Close the listener and reset every open connection; listen again after ``seconds``."""
        self._stop_listening()
        with self._lock:
            for sock in self._open:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
                except OSError:
                    pass
            self._open.clear()
        time.sleep(seconds)
        if not self._closed:
            self._listen()

    def _stop_listening(self) -> None:
        """shutdown() first: on Linux it wakes the thread blocked in accept(), which close() does not,
        and only then is the port free to listen on again."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self._closed = True
        self._stop_listening()


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[OutageProxy]:
    proxy = OutageProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


class RestartableMlflow:
    """``mlflow server`` on a PostgreSQL database of its own; stop() and start() keep port and data."""

    def __init__(self, log_dir: Path, s3_endpoint: str, backend_uri: str) -> None:
        self.log_dir, self.s3_endpoint, self.backend_uri = log_dir, s3_endpoint, backend_uri
        self.port = stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service: stack.Service | None = None

    def start(self) -> None:
        self.service = stack.start_mlflow(
            self.log_dir, self.s3_endpoint, "mlops", backend_uri=self.backend_uri, port=self.port
        )

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None


@pytest.fixture(scope="package")
def pg_mlflow(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[RestartableMlflow]:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    make_store(s3_endpoint, "mlops")
    with postgres_database("mlops_test_mlflow") as backend_uri:
        server = RestartableMlflow(tmp_path_factory.mktemp("pg-mlflow"), s3_endpoint, backend_uri)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="package")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small ONNX classifier honouring the package's input/output contract."""
    features = config().features
    params = random_params(features, EXAMPLE_VOCAB, hidden=[16], seed=3)
    return str(build_model(tmp_path_factory.mktemp("model") / "m.onnx", features, params, classes=[0.0, 1.0]))
