"""The Airflow API server with the repo's plugins, on the local stack's S3 and MLflow, for the UI tests.

Only the api-server of Airflow's four components runs: it alone serves the plugin's app, logins and
``/api/v2``, and it starts in a fraction of the full stack's time and CPU. Settings, connections and
the admin login are the stack's own (:meth:`LocalStack.airflow_env`, :attr:`LocalStack.ui_login`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlops_tasks import stack
from mlops_tasks.config import load_config
from tests.conftest import EXAMPLE_CONFIG
from tests.ui_state import seed_lifecycle

AIRFLOW = str(Path(sys.executable).parent / "airflow")


@contextmanager
def api_server_with_lifecycle(
    state_dir: Path, base_path: str = ""
) -> Iterator[tuple[stack.LocalStack, dict[str, Any]]]:
    """A running api-server (plugins loaded) and the example pipeline's seeded lifecycle state.

    ``base_path`` (e.g. ``/airflow``) is the path of ``[api] base_url``, as behind a proxy that
    serves Airflow under a sub-path; the api-server then answers under that path too."""
    local = stack.LocalStack(state_dir)
    local.airflow_overrides["AIRFLOW__API__BASE_URL"] = local.airflow_url + base_path
    local.start()
    try:
        env = local.airflow_env()
        local.airflow_home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [AIRFLOW, "db", "migrate"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            timeout=300,
        )
        argv = [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(urlparse(local.airflow_url).port)]
        local.services["airflow-api-server"] = stack.start_process(
            "airflow-api-server",
            [*argv, "--workers", "1"],
            local.airflow_url,
            local.log_dir,
            stack.http_ok(local.airflow_url + "/api/v2/monitor/health"),
            env=env,
            timeout=240,
        )
        cfg = load_config(EXAMPLE_CONFIG)
        state = seed_lifecycle(local.store(cfg.storage.bucket), cfg, local.mlflow_url)
        yield local, state
    finally:
        local.stop()


def get(url: str, token: str | None = None) -> tuple[int, str, dict[str, str]]:
    """(status, body, lower-cased headers) of a GET with an optional bearer token; HTTP errors are returned."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status, resp.read().decode(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace"), {k.lower(): v for k, v in exc.headers.items()}


def get_json(url: str, token: str) -> Any:
    status, body, _ = get(url, token)
    assert status == 200, f"GET {url}: {status} {body[:300]}"
    return json.loads(body)
