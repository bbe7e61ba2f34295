"""DAG files must parse fast: no heavy ML library may be imported while Airflow parses dags/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = [
    "torch",
    "onnxruntime",
    "onnx",
    "evidently",
    "great_expectations",
    "mlflow",
    "dvc",
    "pandas",
    "sklearn",
]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))

PROBE = """
import json, runpy, sys, time
start = time.perf_counter()
runpy.run_path(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start,
                  "heavy": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_library(dag_file: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(dag_file), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{dag_file.name}: parsed in {result['seconds']:.2f}s")
    assert result["heavy"] == [], f"{dag_file.name} imports {result['heavy']} at parse time"


CALLBACK_PROBE = """
import json, os, runpy, sys
dags = runpy.run_path(sys.argv[1])
training = next(d for d in dags.values() if getattr(d, "dag_id", "").endswith("_training"))
os.environ["AIRFLOW_CONN_MLOPS_MLFLOW"] = "http://127.0.0.1:9"  # nothing listens: best effort, no raise
training.on_failure_callback({"run_id": "manual__probe", "reason": "task_failure"})
print(json.dumps([m for m in json.loads(sys.argv[2]) if m in sys.modules]))
"""


def test_the_training_dags_failure_callback_needs_no_ml_library_in_the_dag_processor() -> None:
    """The DAG processor runs DAG callbacks: ending an abandoned MLflow run takes MLflow's client,
    not torch (a slim processor image may not have it)."""
    out = subprocess.run(
        [sys.executable, "-c", CALLBACK_PROBE, str(REPO / "dags" / "mlops_pipelines.py"), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert [m for m in loaded if m not in ("mlflow", "pandas")] == []


HUNG_CALLBACK_PROBE = """
import json, os, runpy, socket, sys, time
hung = socket.socket()  # accepts connections (the backlog) and never answers
hung.bind(("127.0.0.1", 0))
hung.listen(16)
dags = runpy.run_path(sys.argv[1])
training = next(d for d in dags.values() if getattr(d, "dag_id", "").endswith("_training"))
os.environ["AIRFLOW_CONN_MLOPS_MLFLOW"] = f"http://127.0.0.1:{hung.getsockname()[1]}"
callback = training.on_failure_callback
callback = callback[0] if isinstance(callback, list) else callback
callback.SECONDS = 2
start = time.monotonic()
callback({"run_id": "manual__probe", "reason": "task_failure"})
print(json.dumps(time.monotonic() - start))
"""


def test_the_training_dags_failure_callback_gives_up_on_a_hung_mlflow_server_in_bounded_time() -> None:
    """The DAG processor kills a file's callbacks after dag_file_processor_timeout (50 s): a server
    that accepts and never answers took this one 94 s, and the callbacks run with it were lost."""
    out = subprocess.run(
        [sys.executable, "-c", HUNG_CALLBACK_PROBE, str(REPO / "dags" / "mlops_pipelines.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seconds = json.loads(out.stdout.strip().splitlines()[-1])
    assert 2 <= seconds < 10, seconds
    assert "Gave up ending the abandoned MLflow run of manual__probe after 2 s" in out.stderr + out.stdout


def test_importing_the_plugin_leaves_the_ui_app_to_the_api_server() -> None:
    """Every task process imports plugins when it builds its template context; the app (FastAPI,
    Airflow's API security) is the API server's alone."""
    probe = "import json, sys; import mlops_tasks.airflow.plugin; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"fastapi", "mlops_tasks.ui.app", "airflow.api_fastapi.core_api.security"}
