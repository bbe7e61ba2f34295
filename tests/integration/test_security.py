"""Security checks as tests: connection secrets never leak; nothing unsafe is deserialised.

The training DAG runs once (``airflow dags test``, the real DAG file, in a subprocess) with the
S3 secret key of the local stack and an MLflow password in its connections; then the task logs
(``dags test`` prints them), every XCom value and every object the run wrote to the
bucket (reports, manifests, DVC files, lineage) are searched for both secrets.

Config hardening (path traversal in prefixes, unknown keys) is covered by tests/unit/test_config.py;
the log files written by Celery workers are searched in tests/integration/test_celery.py.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import secrets
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from mlops_tasks import stack
from tests.conftest import REPO, make_store
from tests.e2e.conftest import airflow_db, small_config  # noqa: F401  (airflow_db: a fixture used by name)

PACKAGE = REPO / "mlops_tasks"
MLFLOW_PASSWORD = f"mlflow-pw-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def training_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    mlflow_server: str,
) -> dict:
    """One training run on its own bucket and registered model (the session's MLflow is shared)."""
    request.getfixturevalue("airflow_db")
    from mlops_tasks.config import load_config
    from mlops_tasks.example import seed_landing

    tmp = tmp_path_factory.mktemp("security")
    bucket = f"sec-{uuid.uuid4().hex[:12]}"
    config_dir = small_config(
        tmp,
        name="security_probe",
        storage={"bucket": bucket},
        mlflow={"registered_model": f"flights_delay_{bucket}"},
        training={"window_days": 4, "evaluation_days": 1},
    )
    cfg = load_config(config_dir / "security_probe.yaml")
    store = make_store(s3_endpoint, bucket)
    seed_landing(store, cfg, dt.date(2013, 1, 1), dt.date(2013, 1, 4))
    conns = stack.connection_env(s3_endpoint, mlflow_server)
    mlflow_conn = json.loads(conns["AIRFLOW_CONN_MLOPS_MLFLOW"])
    conns["AIRFLOW_CONN_MLOPS_MLFLOW"] = json.dumps(
        {**mlflow_conn, "login": "ml", "password": MLFLOW_PASSWORD}
    )
    env = {**os.environ, **conns, "MLOPS_TASKS_CONFIG_DIR": str(config_dir)}
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    proc = subprocess.run(
        [str(Path(stack._bin("airflow"))), "dags", "test", cfg.dag_id("training"), "2013-01-05"],
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return {"output": proc.stdout + proc.stderr, "store": store, "dag_id": cfg.dag_id("training")}


SECRETS = pytest.mark.parametrize("secret", [stack.LOCAL_SECRET_KEY, MLFLOW_PASSWORD], ids=["s3", "mlflow"])


@SECRETS
def test_secrets_absent_from_task_output(training_run: dict, secret: str) -> None:
    assert b"Registry:" in training_run["output"]  # the run's task logs are in the output
    assert secret.encode() not in training_run["output"]


@SECRETS
def test_secrets_absent_from_xcom(training_run: dict, secret: str) -> None:
    with sqlite3.connect(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db") as db:
        values = db.execute(
            "SELECT task_id, value FROM xcom WHERE dag_id = ?", (training_run["dag_id"],)
        ).fetchall()
    assert len(values) >= 8  # plan, ingest x4, validate x4, version, train, export, gate, register...
    assert [task for task, value in values if secret in str(value)] == []


@SECRETS
def test_secrets_absent_from_objects_in_the_bucket(training_run: dict, secret: str) -> None:
    store = training_run["store"]
    keys = [o.key for o in store.list("")]
    assert any("/reports/gate/" in key for key in keys)
    assert [key for key in keys if secret.encode() in store.get_bytes(key)] == []


def _unsafe_loads(tree: ast.AST) -> list[int]:
    """Lines calling pickle-family loaders, ``torch.load`` without ``weights_only=True``, or
    ``yaml.load`` (use ``yaml.safe_load``)."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = node.func.attr
        keywords = {k.arg: k.value for k in node.keywords}
        weights_only = keywords.get("weights_only")
        if (
            (owner in {"pickle", "cPickle", "dill", "joblib", "cloudpickle"} and name in {"load", "loads"})
            or name in {"read_pickle", "unsafe_load", "full_load"}
            or (owner == "yaml" and name == "load")
            or (
                owner == "torch"
                and name == "load"
                and not (isinstance(weights_only, ast.Constant) and weights_only.value is True)
            )
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_package_never_unpickles_or_loads_torch_files_without_weights_only() -> None:
    found = {
        str(path.relative_to(REPO)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _unsafe_loads(ast.parse(path.read_text(), str(path))))
    }
    assert found == {}


def test_unsafe_load_scan_flags_what_it_must() -> None:
    source = (
        "import pickle, torch, yaml\n"
        "pickle.loads(b'')\n"
        "torch.load('w.pt')\n"
        "torch.load('w.pt', weights_only=False)\n"
        "yaml.load('a: 1')\n"
        "torch.load('w.pt', weights_only=True)\n"
        "yaml.safe_load('a: 1')\n"
    )
    assert _unsafe_loads(ast.parse(source)) == [2, 3, 4, 5]
