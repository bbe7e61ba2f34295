"""The one exception base the stages share, importable without loading any stage library."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input or a broken contract (data, config, model): the message names the file, column or
    field and the rule. Running the same task again cannot fix it, so the operators fail the task at
    once instead of retrying it (see :class:`mlops_tasks.airflow.operators.PipelineOperator`)."""
