"""The "ML models" plugin now ships with the package (:mod:`mlops_tasks.airflow.plugin`), registered
through the ``airflow.plugins`` entry point: Airflow loads it without this folder.

This module only keeps ``from mlops_plugin import MlopsPlugin`` working. The names resolve lazily
(PEP 562) on purpose: Airflow registers every AirflowPlugin class it finds in a plugins-folder
module's namespace, and a second registration of the name "mlops_tasks" (the entry point's) would
be skipped and reported as a plugin import error.
"""

from __future__ import annotations

from typing import Any

_REEXPORTED = ("UI_PREFIX", "MlopsPlugin")


def __getattr__(name: str) -> Any:
    if name in _REEXPORTED:
        from mlops_tasks.airflow import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
