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
