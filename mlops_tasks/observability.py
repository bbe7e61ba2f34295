"""Model and data metrics of the pipeline, sent through Airflow's own metrics interface.

Operators call :func:`emit` with a step name and the stage result they already return; whatever
``[metrics]`` configures for Airflow itself (StatsD, Datadog or OpenTelemetry) then carries them, next
to Airflow's scheduler and task metrics, so one Prometheus/Grafana (monitoring/) shows both.

Names: ``mlops.<pipeline>.<step>.<metric>`` (dots, StatsD style: the statsd-exporter mapping in
monitoring/ turns them into labelled Prometheus series; OpenTelemetry prefixes them with ``airflow.``).
All are gauges: each is the value of the latest run of that step.

The mapping from a stage result to metrics (:func:`metrics_for`) is pure and does not import Airflow;
only :func:`emit` does, lazily, so this module stays importable without Airflow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def _ingest(result: Mapping[str, Any]) -> dict[str, float]:
    return {
        "rows": result.get("rows", 0),
        "files": result.get("files", 0),
        "rejected_files": len(result.get("rejected_files") or []),
        "malformed_lines": result.get("malformed_lines", 0),
    }


def _validate(result: Mapping[str, Any]) -> dict[str, float]:
    return {
        "good_rows": result["good_rows"],
        "quarantined_rows": result["bad_rows"],
        "bad_fraction": result["bad_fraction"],
    }


def _gate(decision: Mapping[str, Any]) -> dict[str, float]:
    """The two models on the rows the gate compared them on: a champion is scored only on evaluation
    days it did not train on, and the challenger's figure beside it is then its metric on those rows
    (``champion.challenger_metrics``), not on all of them."""
    metric = decision["primary_metric"]
    metrics: dict[str, float] = {"promoted": 1.0 if decision["promote"] else 0.0}
    champion = decision.get("champion") or {}
    compared = {
        "challenger": champion.get("challenger_metrics", (decision.get("challenger") or {}).get("metrics")),
        "champion": champion.get("metrics"),
    }
    for role, values in compared.items():
        value = (values or {}).get(metric)
        if value is not None:
            metrics[f"{role}_{metric}"] = value
    return metrics


def _score(result: Mapping[str, Any]) -> dict[str, float]:
    seconds = sum((result.get("seconds") or {}).values())
    metrics = {"rows": result["rows"], "seconds": seconds}
    if seconds > 0:
        metrics["rows_per_second"] = result["rows"] / seconds
    return metrics


def _publish(result: Mapping[str, Any]) -> dict[str, float]:
    return {"rows": result["rows"], "parts": result["parts"]}


def _drift(result: Mapping[str, Any]) -> dict[str, float]:
    metrics = {"retrain": 1.0 if result.get("retrain") else 0.0}
    if result.get("share_drifted") is not None:
        metrics["drift_share"] = result["share_drifted"]
    return metrics


STEPS: dict[str, Callable[[Mapping[str, Any]], dict[str, float]]] = {
    "ingest": _ingest,
    "validate": _validate,
    "gate": _gate,
    "score": _score,
    "publish": _publish,
    # the challenger's shadow branch: its own series, so the served day's never show its figures
    "shadow_score": _score,
    "shadow_publish": _publish,
    "drift": _drift,
}


def role_step(step: str, role: str) -> str:
    """The metrics step of a scoring or publishing task: the challenger's shadow branch has its own
    (``shadow_score``), so the figures of the served day are never the shadow's."""
    return step if role == "champion" else f"shadow_{step}"


class UnknownStepError(ValueError):
    """``emit``/``metrics_for`` was called with a step that has no metric mapping."""


def metrics_for(step: str, result: Mapping[str, Any]) -> dict[str, float]:
    """``{metric: value}`` of one stage result (e.g. ``validate`` -> good/quarantined rows)."""
    try:
        extract = STEPS[step]
    except KeyError:
        raise UnknownStepError(
            f"no metrics defined for step '{step}'; known steps: {sorted(STEPS)}"
        ) from None
    return {name: float(value) for name, value in extract(result).items()}


def emit(step: str, result: Mapping[str, Any] | None, *, pipeline: str) -> dict[str, float]:
    """Send the step's metrics as gauges through Airflow's configured metrics backend.

    Returns the metrics by full name (also handy in logs). A ``None`` result (skipped part) sends
    nothing. A metrics backend that is down never fails the task: Airflow's loggers drop on error.
    """
    if result is None:
        return {}
    from airflow.sdk.observability import stats

    sent = {f"mlops.{pipeline}.{step}.{name}": value for name, value in metrics_for(step, result).items()}
    for name, value in sent.items():
        stats.gauge(name, value, tags={"pipeline": pipeline, "step": step})
    return sent
