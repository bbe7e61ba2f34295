"""Pipeline metrics reach a real OpenTelemetry (OTLP/HTTP) listener on loopback from a real DAG run.

The training DAG runs with ``airflow dags test`` (the real DAG file, task code in process) with
Airflow's ``[metrics] otel_on``; a small HTTP server plays the OpenTelemetry collector and decodes
the protobuf export requests. StatsD is the other transport of the same interface: it needs the
``statsd`` package, which this environment does not install (docker-compose's image does).
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from mlops_tasks import stack
from tests.conftest import make_store
from tests.e2e.conftest import airflow_db, small_config  # noqa: F401  (airflow_db: a fixture used by name)


class _Collector(http.server.BaseHTTPRequestHandler):
    gauges: dict[str, list[float]] = {}

    def do_POST(self) -> None:
        request = ExportMetricsServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = metric.gauge.data_points or metric.sum.data_points
                    self.gauges.setdefault(metric.name, []).extend(p.as_double or p.as_int for p in points)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[dict[str, list[float]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.gauges = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"port": server.server_address[1], "gauges": _Collector.gauges}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def metrics(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    collector: dict,
    s3_endpoint: str,
    mlflow_server: str,
) -> dict[str, list[float]]:
    """Gauges received from one training run (3-day window, own bucket and registered model)."""
    from mlops_tasks.config import load_config
    from mlops_tasks.example import seed_landing

    request.getfixturevalue("airflow_db")
    bucket = f"met-{uuid.uuid4().hex[:12]}"
    config_dir = small_config(
        tmp_path_factory.mktemp("metrics"),
        name="metrics_probe",
        storage={"bucket": bucket},
        mlflow={"registered_model": f"flights_delay_{bucket}"},
        training={"window_days": 3, "evaluation_days": 1},
    )
    cfg = load_config(config_dir / "metrics_probe.yaml")
    seed_landing(make_store(s3_endpoint, bucket), cfg, dt.date(2013, 1, 1), dt.date(2013, 1, 3))
    env = {
        **os.environ,
        **stack.connection_env(s3_endpoint, mlflow_server),
        "MLOPS_TASKS_CONFIG_DIR": str(config_dir),
        "AIRFLOW__METRICS__OTEL_ON": "True",
        "AIRFLOW__METRICS__OTEL_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__OTEL_PORT": str(collector["port"]),
        "AIRFLOW__METRICS__OTEL_INTERVAL_MILLISECONDS": "1000",
    }
    proc = subprocess.run(
        [stack._bin("airflow"), "dags", "test", cfg.dag_id("training"), "2013-01-04"],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return collector["gauges"]


def test_rows_ingested_and_quarantined_per_day_reach_the_collector(metrics: dict[str, list[float]]) -> None:
    ingested = metrics["airflow.mlops.metrics_probe.ingest.rows"]
    quarantined = metrics["airflow.mlops.metrics_probe.validate.quarantined_rows"]
    assert len(ingested) >= 1 and all(rows > 100 for rows in ingested)
    assert sum(quarantined) > 0  # 2013-01-01..03 had cancelled flights


def test_gate_metric_and_decision_reach_the_collector(metrics: dict[str, list[float]]) -> None:
    assert 0.5 <= metrics["airflow.mlops.metrics_probe.gate.challenger_roc_auc"][-1] <= 1.0
    assert metrics["airflow.mlops.metrics_probe.gate.promoted"][-1] == 1.0


def test_airflow_own_task_metrics_share_the_transport(metrics: dict[str, list[float]]) -> None:
    assert "airflow.ti.finish.metrics_probe_training.register.success" in metrics
