"""The MLflow model registry, driven by aliases (not stages).

* Every exported run becomes a registered model version, tagged with its data version, gate
  decision, gate metrics and run id, so the registry alone explains why each version is where it is.
* ``champion`` is what batch inference serves; ``previous_champion`` is the one-step rollback target;
  ``challenger`` marks a rejected-but-sane model that batch inference shadow-scores.
* Promotion moves aliases as the very last step (``previous_champion`` first, then ``champion``), so a
  failure at any earlier point leaves the served model untouched.
* Concurrent registrations: just before moving, the current champion is re-read; if it changed since
  the gate and the new champion scored at least as well at its own gate, this model is not promoted.
  Re-read and move happen under a per-model lock, which serialises registrations in one process; across
  Airflow workers, run the register task in a one-slot pool (MLflow has no compare-and-set on aliases).
* Retries are safe: a version already registered for the run is reused, and a champion that already
  is this version is left as it is.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mlops_tasks import tracking
from mlops_tasks.config import PipelineConfig
from mlops_tasks.evaluation import HIGHER_IS_BETTER

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
CHALLENGER = "challenger"

_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class RegistryUnavailable(tracking.TrackingUnavailable):
    """The registry (MLflow tracking server) is unreachable; nothing was changed, retry later."""


class RegistryError(RuntimeError):
    """A registry operation is impossible as asked (e.g. no previous champion to roll back to)."""


def _lock(tracking_uri: str, model_name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((tracking_uri, model_name), threading.Lock())


def _reachable(tracking_uri: str, action: str) -> Any:
    return tracking.reachable(tracking_uri, action, RegistryUnavailable)


def _ensure_model(client: Any, name: str) -> None:
    try:
        client.create_registered_model(name, description="Managed by mlops_tasks; aliases drive serving.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _version_for_run(client: Any, cfg: PipelineConfig, run_id: str) -> ModelVersion:
    """The run's model version: reused if a previous attempt created it, else created now."""
    name = cfg.registered_model_name
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return min(existing, key=lambda v: int(v.version))
    run = client.get_run(run_id)
    if tracking.ONNX_ARTIFACT not in {a.path for a in client.list_artifacts(run_id, "model")}:
        raise RegistryError(
            f"run {run_id} has no {tracking.ONNX_ARTIFACT}; export (with a passing parity check) must "
            "succeed before a model can be registered"
        )
    return client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run_id)


def _gate_value(version: ModelVersion | None, metric: str) -> float | None:
    raw = (version.tags or {}).get(f"gate_{metric}") if version is not None else None
    return float(raw) if raw not in (None, "", "None") else None


def register(
    cfg: PipelineConfig, run_id: str, *, tracking_uri: str, decision: dict[str, Any], data_version: str
) -> dict[str, Any]:
    """Register the run's model and, if the gate said so, make it the champion (see module doc)."""
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    primary = decision["primary_metric"]
    value = decision["challenger"]["metrics"].get(primary)
    with _reachable(tracking_uri, f"register run {run_id} as a version of '{name}'"):
        _ensure_model(client, name)
        version = _version_for_run(client, cfg, run_id)
        tags = {
            "run_id": run_id,
            "data_version": data_version,
            "gate_decision": "promote" if decision["promote"] else "reject",
            "gate_reason": decision["reason"][:4000],
            "gate_primary_metric": primary,
            **{f"gate_{k}": str(v) for k, v in decision["challenger"]["metrics"].items()},
        }
        for key, val in tags.items():
            client.set_model_version_tag(name, version.version, key, val)
        result = {
            "model_name": name,
            "version": version.version,
            "promoted": False,
            "champion_version": None,
            "previous_champion_version": None,
            "reason": decision["reason"],
        }
        if not decision["promote"]:
            if not decision.get("floor_failed"):
                client.set_registered_model_alias(name, CHALLENGER, version.version)
            current = tracking.alias_version(client, name, CHAMPION)
            previous = tracking.alias_version(client, name, PREVIOUS_CHAMPION)
            return result | {
                "champion_version": current.version if current else None,
                "previous_champion_version": previous.version if previous else None,
            }
        with _lock(tracking_uri, name):
            return result | _promote(client, name, version.version, decision, primary, value)


def _promote(
    client: Any, name: str, version: str, decision: dict[str, Any], primary: str, value: float | None
) -> dict[str, Any]:
    current = tracking.alias_version(client, name, CHAMPION)
    previous = tracking.alias_version(client, name, PREVIOUS_CHAMPION)
    if current is not None and current.version == version:
        return {
            "promoted": True,
            "champion_version": version,
            "previous_champion_version": previous.version if previous else None,
            "reason": f"v{version} is already the champion",
        }
    if current is not None and current.version != decision.get("champion_version"):
        theirs = _gate_value(current, primary)
        higher = HIGHER_IS_BETTER[primary]
        if theirs is not None and (value is None or (theirs >= value if higher else theirs <= value)):
            return {
                "promoted": False,
                "champion_version": current.version,
                "previous_champion_version": previous.version if previous else None,
                "reason": (
                    f"not promoted: the champion changed to v{current.version} since the gate (which saw "
                    f"{decision.get('champion_version')}) and its gate {primary} {theirs:.4f} is at least "
                    f"as good as this model's {value}"
                ),
            }
    # Aliases last: previous_champion first, then champion, so a failure in between still serves
    # the old champion and a retry completes the move.
    client.set_model_version_tag(name, version, "promoted_at", dt.datetime.now(dt.UTC).isoformat())
    if current is not None:
        client.set_model_version_tag(name, version, "replaced_version", current.version)
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current.version)
    client.set_registered_model_alias(name, CHAMPION, version)
    challenger = tracking.alias_version(client, name, CHALLENGER)
    if challenger is not None and challenger.version == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return {
        "promoted": True,
        "champion_version": version,
        "previous_champion_version": current.version if current else (previous.version if previous else None),
    }


def rollback(cfg: PipelineConfig, *, tracking_uri: str) -> dict[str, Any]:
    """Serve ``previous_champion`` again; ``previous_champion`` then points one step further back."""
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"roll back the champion of '{name}'"), _lock(tracking_uri, name):
        previous = tracking.alias_version(client, name, PREVIOUS_CHAMPION)
        if previous is None:
            raise RegistryError(
                f"cannot roll back '{name}': it has no '{PREVIOUS_CHAMPION}' alias (no earlier champion)"
            )
        current = tracking.alias_version(client, name, CHAMPION)
        client.set_registered_model_alias(name, CHAMPION, previous.version)
        if current is not None:
            client.set_model_version_tag(
                name, current.version, "rolled_back_at", dt.datetime.now(dt.UTC).isoformat()
            )
        before = (previous.tags or {}).get("replaced_version")
        if before:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, before)
        else:
            client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    return {
        "model_name": name,
        "champion_version": previous.version,
        "rolled_back_version": current.version if current else None,
        "previous_champion_version": before or None,
    }


def _describe(version: ModelVersion) -> dict[str, Any]:
    tags = dict(version.tags or {})
    primary = tags.get("gate_primary_metric")
    return {
        "model_name": version.name,
        "version": version.version,
        "run_id": version.run_id,
        "source": version.source,
        "aliases": sorted(version.aliases or []),
        "data_version": tags.get("data_version"),
        "gate_decision": tags.get("gate_decision"),
        "primary_metric": primary,
        "metrics": {
            k[5:]: _float(v) for k, v in tags.items() if k.startswith("gate_") and k[5:] in HIGHER_IS_BETTER
        },
        "promoted_at": tags.get("promoted_at"),
        "created_at": dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.UTC).isoformat(),
    }


def _float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def alias_info(cfg: PipelineConfig, alias: str, *, tracking_uri: str) -> dict[str, Any] | None:
    """What ``alias`` points to (version, run, data version, gate metrics), or None."""
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"read alias '{alias}' of '{cfg.registered_model_name}'"):
        version = tracking.alias_version(client, cfg.registered_model_name, alias)
    return _describe(version) if version is not None else None


def champion_info(cfg: PipelineConfig, *, tracking_uri: str) -> dict[str, Any] | None:
    """The served model's version, run, data version, gate metrics and promotion time, or None."""
    return alias_info(cfg, CHAMPION, tracking_uri=tracking_uri)


def download_onnx(
    cfg: PipelineConfig,
    *,
    tracking_uri: str,
    dest_dir: str | Path,
    alias: str | None = CHAMPION,
    version: str | int | None = None,
) -> Path:
    """The ONNX file of a version (by number, or by alias) as a local path under ``dest_dir``."""
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"download the ONNX model of '{name}'"):
        if version is not None:
            found = client.get_model_version(name, str(version))
        else:
            found = tracking.alias_version(client, name, alias or CHAMPION)
            if found is None:
                raise RegistryError(f"model '{name}' has no version with alias '{alias}'")
    return tracking.download_run_artifact(tracking_uri, found.run_id, tracking.ONNX_ARTIFACT, dest_dir)
