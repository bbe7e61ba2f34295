"""The one way the model stage talks to MLflow: an explicit-URI client that fails fast and clearly.

Why a helper: every stage function receives ``tracking_uri`` and must not depend on the process-wide
``MLFLOW_TRACKING_URI`` (Airflow workers run many pipelines), and MLflow's default HTTP retry policy
(7 retries, exponential backoff) turns a down server into minutes of silence. Here a down server
becomes :class:`TrackingUnavailable` within seconds, which the Airflow task's own retries handle.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlops_tasks
from mlops_tasks.status import redacted, without_credentials

# Fail in seconds, not minutes, when the tracking server is down (and keep task logs free of progress
# bars); explicit env settings win.
_FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

log = logging.getLogger(__name__)

ONNX_ARTIFACT = "model/model.onnx"
WEIGHTS_ARTIFACT = "model/weights.pt"
SPEC_ARTIFACT = "model/model_spec.json"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server could not be reached (or kept failing); retry later."""


def client(tracking_uri: str) -> MlflowClient:
    """An MlflowClient bound to ``tracking_uri`` with fail-fast HTTP retries."""
    for name, value in _FAST_FAIL_ENV.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def is_unreachable(exc: MlflowException) -> bool:
    """True when MLflow gave up on the HTTP request itself (refused, timeout, repeated 5xx)."""
    message = str(exc)
    return message.startswith("API request to") and (
        "failed with exception" in message or "too many" in message
    )


@contextmanager
def reachable(
    tracking_uri: str, action: str, error: type[TrackingUnavailable] = TrackingUnavailable
) -> Iterator[None]:
    """Turn "server unreachable" failures inside the block into ``error`` naming the server."""
    try:
        yield
    except MlflowException as exc:
        if is_unreachable(exc):
            raise error(
                f"Cannot {action}: the MLflow tracking server {without_credentials(tracking_uri)} is not "
                f"reachable ({redacted(str(exc).splitlines()[0][:300], tracking_uri)}). Check the MLflow "
                "connection and that the server is up; nothing was changed."
            ) from None
        raise


def quoted(value: str) -> str:
    """``value`` as a string literal of an MLflow filter, which knows no escapes: in single quotes, or
    in double quotes when it holds a single quote (a model name may: MLflow forbids only / and :)."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def version_tags() -> dict[str, str]:
    """Code identity for a run: package version and, when run from a git checkout, its commit."""
    tags = {"mlops_tasks_version": mlops_tasks.__version__}
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(mlops_tasks.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return tags
    if sha:
        tags["git_sha"] = sha
    return tags


class ArtifactMissingError(FileNotFoundError):
    """A run's artifact is not (any more) in the artifact store."""


def download_run_artifact(tracking_uri: str, run_id: str, path: str, dest_dir: str | Path) -> Path:
    """One artifact of a run as a local file (through the tracking server's artifact proxy);
    :class:`ArtifactMissingError` when the run has no such artifact (e.g. deleted from the store)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    mlflow = client(tracking_uri)
    with reachable(tracking_uri, f"download {path} of run {run_id}"):
        try:
            return Path(mlflow.download_artifacts(run_id, path, str(dest_dir)))
        except MlflowException:
            # MLflow says only that the download failed: listing tells a missing file from other failures
            folder = path.rpartition("/")[0] or None
            if path in {a.path for a in mlflow.list_artifacts(run_id, folder)}:
                raise
        raise ArtifactMissingError(f"run {run_id} has no {path} any more (deleted from the artifact store?)")


def alias_version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The model version an alias points to, or None if the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        missing_alias = exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or missing_alias:
            return None
        raise


def end_killed_attempts(client: MlflowClient, experiment_id: str, run_name: str) -> None:
    """Mark KILLED the runs of earlier attempts of this task that are still RUNNING.

    An attempt killed mid-training (``kill -9``, a lost worker) never ends its MLflow run, which would
    otherwise show as running forever next to the retry's. Its run name is the retry's (the pipeline
    and the Airflow run id), and Airflow starts a retry only once the attempt is gone.
    """
    if "'" in run_name:  # MLflow's filter syntax cannot quote it; such a run stays as it is
        return
    filter_string = f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], filter_string=filter_string):
        log.warning(
            "MLflow run %s of an earlier attempt never ended (killed): marking it KILLED", run.info.run_id
        )
        client.set_terminated(run.info.run_id, "KILLED")


def end_abandoned_runs(tracking_uri: str, experiment_name: str, run_name: str) -> None:
    """Mark KILLED the runs named ``run_name`` still RUNNING once no attempt of their task runs any
    more (its last attempt failed): a final attempt killed outright (out of memory, a lost node)
    has no next attempt to end its run, which would show as running forever."""
    mlflow = client(tracking_uri)
    with reachable(tracking_uri, f"end the abandoned runs named {run_name}"):
        experiment = mlflow.get_experiment_by_name(experiment_name)
        if experiment is not None:
            end_killed_attempts(mlflow, experiment.experiment_id, run_name)
