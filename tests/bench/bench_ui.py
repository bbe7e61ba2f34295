"""Benchmark of the "ML models" view: what the plugin costs every Airflow component at import, and how
long each page takes against a real S3 endpoint and MLflow server.

Run: ``.venv/bin/python tests/bench/bench_ui.py`` (about a minute and a half on 2 shared cores).

1. Import, in fresh interpreters (median of 3): Airflow's plugins manager alone, plus our plugin (the
   app is built lazily on the first request), plus Airflow's API security module (what building the
   app at import would add to the scheduler, dag-processor, triggerer and workers).
2. Requests through FastAPI's TestClient (logged-in user), one seeded pipeline (3 versions, reports,
   predictions, lineage): median and max of 10 requests per route.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

IMPORTS = {
    "airflow.plugins_manager (baseline)": "import airflow.plugins_manager",
    "+ mlops_tasks.airflow.plugin (lazy app)": "import airflow.plugins_manager, mlops_tasks.airflow.plugin",
    "+ API security module (eager app)": (
        "import airflow.plugins_manager, mlops_tasks.airflow.plugin, airflow.api_fastapi.core_api.security"
    ),
}
PROBE = (
    "import resource, time; t = time.perf_counter(); {stmt}; "
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def import_cost(stmt: str, home: str) -> tuple[float, float]:
    """Median (seconds, peak RSS MiB) of 3 fresh interpreters running ``stmt``."""
    env = {**os.environ, "AIRFLOW_HOME": home}
    samples = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(stmt=stmt)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        samples.append((float(out[-2]), int(out[-1]) / 1024))
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def bench_imports() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ui-airflow-") as home:
        rows = {name: import_cost(stmt, home) for name, stmt in IMPORTS.items()}
    base_s, base_mb = rows["airflow.plugins_manager (baseline)"]
    print(f"{'import':40} {'seconds':>8} {'+s':>7} {'peak MiB':>9} {'+MiB':>7}")
    for name, (secs, mib) in rows.items():
        print(f"{name:40} {secs:8.2f} {secs - base_s:7.2f} {mib:9.0f} {mib - base_mb:7.0f}")


def bench_requests() -> None:
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-ui-airflow-"))
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from mlops_tasks import stack
    from mlops_tasks.config import load_config
    from mlops_tasks.ui.app import Sources, build_app
    from tests.conftest import EXAMPLE_CONFIG, make_store
    from tests.ui_state import isolated_config, seed_lifecycle

    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        s3 = stack.start_s3(Path(tmp))
        mlflow = None
        try:
            make_store(s3.url, "mlops")
            mlflow = stack.start_mlflow(Path(tmp), s3.url, "mlops")
            store = make_store(s3.url)
            cfg = isolated_config(load_config(EXAMPLE_CONFIG), store.bucket)
            state = seed_lifecycle(store, cfg, mlflow.url)
            create_auth_manager()  # the view asks it whether the user may read DAGs
            app = build_app(
                Sources(
                    configs=lambda: [cfg],
                    store=lambda c: store,
                    mlflow=lambda c: (mlflow.url, mlflow.url),
                )
            )
            app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="bench", role="admin")
            routes = {
                "GET / (overview)": "/",
                "GET /api/status": "/api/status",
                "GET /pipelines/<name> (drill-down)": f"/pipelines/{cfg.name}",
                "GET /reports (drift.html)": f"/reports?uri={quote(store.uri(state['drift_html']), safe='')}",
            }
            print(f"\n{'route (1 pipeline, 3 versions)':40} {'median ms':>10} {'max ms':>8} {'bytes':>7}")
            with TestClient(app) as client:
                client.get("/")  # warm-up: first MLflow/S3 connections
                for name, path in routes.items():
                    times, size = [], 0
                    for _ in range(10):
                        start = time.perf_counter()
                        response = client.get(path)
                        times.append((time.perf_counter() - start) * 1000)
                        assert response.status_code == 200, (path, response.status_code, response.text[:200])
                        size = len(response.content)
                    print(f"{name:40} {statistics.median(times):10.1f} {max(times):8.1f} {size:7d}")
        finally:
            if mlflow is not None:
                mlflow.stop()
            s3.stop()


if __name__ == "__main__":
    bench_imports()
    bench_requests()
