"""Import the stage libraries once, in the long-lived process that Airflow forks task processes from.

Airflow 3 runs every task in a process forked by the task supervisor. That process parses the DAG
file and imports the libraries its stage needs: pandas, pyarrow and boto3 to ingest, Great
Expectations to validate (seconds on its own), DVC to version, torch to train, MLflow, onnxruntime,
Evidently. For the short mapped tasks of a pipeline (one ingest and one validate per day of the
training window) those imports were most of the task's time. Imported here, in the parent, every
forked task inherits them copy-on-write and starts at the stage's real work.

With the LocalExecutor (Airflow >= 3.3), in ``airflow.cfg`` or the environment::

    [scheduler]
    mp_start_method = forkserver
    mp_forkserver_preload = mlops_tasks.airflow.preload

The scheduler then forks its executor workers from a server process that imported this module once
(the embedded stack sets both: ``PRELOAD_SETTINGS`` in ``mlops_tasks/stack.py``). Stage code changed
after the scheduler started is picked up at its next restart, like any library a worker has imported.
"""

from __future__ import annotations

import gc
import importlib
import logging
import time

log = logging.getLogger(__name__)

# What the operators' execute() import (directly or through the stage modules), plus the libraries
# those import lazily. The DAG factory comes first: every task parses the DAG file.
STAGE_MODULES = (
    "mlops_tasks.airflow.dag_factory",
    "mlops_tasks.ingestion",
    "mlops_tasks.validation",
    "great_expectations",
    "great_expectations.data_context.types.base",
    "great_expectations.expectations",
    "great_expectations.expectations.registry",
    "mlops_tasks.versioning",
    "dvc.repo",
    "mlops_tasks.training",
    "mlops_tasks.export",
    "onnxruntime",
    "mlops_tasks.evaluation",
    "mlops_tasks.registry",
    "mlops_tasks.lineage",
    "mlops_tasks.inference",
    "mlops_tasks.monitoring",
    "evidently",
    "evidently.metrics",
    "evidently.presets",
)


def preload(modules: tuple[str, ...] = STAGE_MODULES) -> list[str]:
    """Import ``modules``; returns those that failed (logged, not raised: a task that needs one
    imports it itself and fails there with the real error).

    Then freezes the garbage collector's view of everything imported, so forked children neither
    copy those pages when the collector touches them nor spend time traversing them.
    """
    started = time.monotonic()
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            log.exception("preload: cannot import %s; tasks that need it will import it themselves", name)
            failed.append(name)
    gc.freeze()
    log.info("preloaded %d stage modules in %.1fs", len(modules) - len(failed), time.monotonic() - started)
    return failed


FAILED = preload()
