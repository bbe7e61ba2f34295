"""The embedded stack's LocalExecutor workers start with the stage libraries already imported.

Airflow's own ``set_component_mp_start_method("scheduler")`` reads the stack's settings, exactly as
``airflow scheduler`` does; a process started through it must find Great Expectations, torch and
the stage modules in ``sys.modules`` without importing them, while its parent never imported them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_tasks.stack import PRELOAD_SETTINGS

REPO = Path(__file__).resolve().parents[2]
HEAVY = [
    "great_expectations",
    "torch",
    "onnxruntime",
    "evidently",
    "mlops_tasks.validation",
    "mlops_tasks.training",
]


def loaded_in_child(names: list[str]) -> dict[str, object]:
    """Runs in the forked worker: what it has imported, and what the preload could not import."""
    preload = sys.modules.get("mlops_tasks.airflow.preload")
    return {"loaded": [n for n in names if n in sys.modules], "failed": getattr(preload, "FAILED", None)}


SCHEDULER_LIKE = """
import json, multiprocessing, sys
from airflow.utils.process_utils import set_component_mp_start_method
from tests.unit.test_preload import HEAVY, loaded_in_child

set_component_mp_start_method("scheduler")
in_parent = [n for n in HEAVY if n in sys.modules]
with multiprocessing.Pool(1) as pool:
    child = pool.apply(loaded_in_child, (HEAVY,))
print(json.dumps({"start_method": multiprocessing.get_start_method(), "in_parent": in_parent, **child}))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_forked_under_the_stack_settings_inherit_every_stage_library() -> None:
    env = {**os.environ, **PRELOAD_SETTINGS, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", SCHEDULER_LIKE], env=env, cwd=REPO, capture_output=True, text=True, timeout=170
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["start_method"] == "forkserver"
    assert report["in_parent"] == []
    assert report["loaded"] == HEAVY
    assert report["failed"] == []
