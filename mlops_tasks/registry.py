"""The MLflow model registry, driven by aliases (not stages).

* Every exported run becomes a registered model version, tagged with its data version, gate decision,
  gate metrics, the champion its gate compared it against, and its run id, so the registry alone
  explains why each version is where it is. A version's gate tags are written once; retries reuse them.
* ``champion`` is what batch inference serves; ``previous_champion`` is the one-step rollback target
  (the champion the serving version's gate beat); ``challenger`` marks a rejected-but-sane model that
  batch inference shadow-scores.
* Who is champion is a function of the version tags alone (:func:`_target`): the versions the gate
  promoted form a tree, each under the champion its gate beat; from the top, follow the best-gated child
  (primary metric; on a tie the older version) down to a version that no one has beaten. A rejected
  version is not in the tree, so it never becomes champion. A rollback fences the restored version: the
  versions gated against it that exist at the rollback (the rolled-back champion and those it beat in a
  race) never count again; challengers gated against it later do.
* Concurrent registrations, across processes and machines (MLflow has no compare-and-set on aliases):
  "register, then converge". A registration writes all its tags first (``gate_decision`` last, so a
  half-tagged version does not count), then loops: read the tags and both aliases; if the aliases are not
  on the target of those tags, move them and read again; return only after a read that agrees.
  Why it settles: the target depends on tags only, and they stop changing once every registration has
  written them. Take the last alias write W. Its writer reads again after W; if W came after the last tag
  write, that read sees the final tags and aliases, and a disagreement would make it write again (W was
  the last). If no alias write follows the last tag write, the last tagger's own loop reads the final tags
  and aliases, and stops only when they agree. So when all registrations have returned, the aliases are
  the final target. A writer holding stale tags can move an alias to an outdated (gate-passed) version
  for a moment, never for good. Rollback writes its fence, then runs the same loop.
* Promotion moves aliases as the very last step (``previous_champion`` first, then ``champion``), so a
  failure at any earlier point leaves the served model untouched; a retry converges again.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import IntegrityError

from mlops_tasks import tracking
from mlops_tasks.config import PipelineConfig
from mlops_tasks.evaluation import HIGHER_IS_BETTER

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
CHALLENGER = "challenger"

GATE_DECISION = "gate_decision"
# The champion version the gate compared this version against ("" when there was none).
BASELINE = "gate_champion_version"
# On a rollback target: versions gated against it numbered up to this one no longer count.
ROLLBACK_FENCE = "rollback_fence"
# Bound on read-move-verify rounds: a round after the first only follows another writer's change.
_MAX_ROUNDS = 30


class RegistryUnavailable(tracking.TrackingUnavailable):
    """The registry (MLflow tracking server) is unreachable; nothing was changed, retry later."""


class RegistryError(RuntimeError):
    """A registry operation is impossible as asked (e.g. no previous champion to roll back to)."""


def _reachable(tracking_uri: str, action: str) -> Any:
    return tracking.reachable(tracking_uri, action, RegistryUnavailable)


def _write(call: Any, *args: str) -> None:
    """One tag or alias write. MLflow's SQL store upserts by reading, then inserting: two writers inserting
    one key at once make one of them fail with an IntegrityError (a BAD_REQUEST ending in SQLAlchemy's
    error link). The key exists by then, so writing again is an update."""
    for attempt in range(3):
        try:
            call(*args)
            return
        except MlflowException as exc:
            lost_insert_race = exc.error_code == "BAD_REQUEST" and f"/{IntegrityError.code})" in str(exc)
            if attempt == 2 or not lost_insert_race:
                raise


def _ensure_model(client: Any, name: str) -> None:
    try:
        client.create_registered_model(name, description="Managed by mlops_tasks; aliases drive serving.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _version_for_run(client: Any, cfg: PipelineConfig, run_id: str) -> ModelVersion:
    """The run's model version: reused if a previous attempt created it, else created now."""
    name = cfg.registered_model_name
    query = f"name='{name}' and run_id='{run_id}'"
    existing = client.search_model_versions(query)
    if existing:
        return min(existing, key=lambda v: int(v.version))
    run = client.get_run(run_id)
    if tracking.ONNX_ARTIFACT not in {a.path for a in client.list_artifacts(run_id, "model")}:
        raise RegistryError(
            f"run {run_id} has no {tracking.ONNX_ARTIFACT}; export (with a passing parity check) must "
            "succeed before a model can be registered"
        )
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run_id)
    # Two attempts of one run (a task and its zombie) may both create one: both go on with the lowest,
    # the other stays untagged and never counts.
    return min(client.search_model_versions(query), key=lambda v: int(v.version))


def _gate_value(version: ModelVersion | None, metric: str) -> float | None:
    raw = (version.tags or {}).get(f"gate_{metric}") if version is not None else None
    return float(raw) if raw not in (None, "", "None") else None


def _write_gate_tags(
    client: Any, version: ModelVersion, run_id: str, decision: dict[str, Any], data_version: str
) -> dict[str, str]:
    """Tag the version with its gate record, ``gate_decision`` last: only then does it count."""
    name = version.name
    tags = {
        "run_id": run_id,
        "data_version": data_version,
        "gate_reason": decision["reason"][:4000],
        "gate_primary_metric": decision["primary_metric"],
        BASELINE: decision.get("champion_version") or "",
        **{f"gate_{k}": str(v) for k, v in decision["challenger"]["metrics"].items()},
    }
    for key, val in tags.items():
        _write(client.set_model_version_tag, name, version.version, key, val)
    if not decision["promote"] and not decision.get("floor_failed"):
        _write(client.set_registered_model_alias, name, CHALLENGER, version.version)
    tags[GATE_DECISION] = "promote" if decision["promote"] else "reject"
    _write(client.set_model_version_tag, name, version.version, GATE_DECISION, tags[GATE_DECISION])
    return tags


def register(
    cfg: PipelineConfig, run_id: str, *, tracking_uri: str, decision: dict[str, Any], data_version: str
) -> dict[str, Any]:
    """Register the run's model, record its gate, and converge the aliases (see module doc)."""
    name = cfg.registered_model_name
    primary = cfg.gate.primary_metric
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"register run {run_id} as a version of '{name}'"):
        _ensure_model(client, name)
        version = _version_for_run(client, cfg, run_id)
        tags = dict(version.tags or {})
        if GATE_DECISION not in tags:
            tags = _write_gate_tags(client, version, run_id, decision, data_version)
        champion, previous = _converge(client, name, primary)
    promoted = champion == version.version
    reason = tags["gate_reason"]
    if tags[GATE_DECISION] == "promote" and not promoted:
        reason = (
            f"not promoted: the gate passed, but v{champion} is the champion after the registrations "
            f"that raced this one (compare its gate {primary})"
        )
    return {
        "model_name": name,
        "version": version.version,
        "promoted": promoted,
        "champion_version": champion,
        "previous_champion_version": previous,
        "reason": reason,
    }


def _target(versions: list[ModelVersion], primary: str) -> tuple[ModelVersion | None, ModelVersion | None]:
    """(champion, previous champion) as the promoted ``versions``' tags say (see module doc)."""
    higher = HIGHER_IS_BETTER[primary]

    def rank(v: ModelVersion) -> tuple[bool, float, int]:  # a missing metric ranks last; ties: older
        value = _gate_value(v, primary)
        if value is None:
            return False, 0.0, -int(v.version)
        return True, value if higher else -value, -int(v.version)

    children: dict[str, list[ModelVersion]] = {}
    for v in versions:
        children.setdefault((v.tags or {}).get(BASELINE, ""), []).append(v)
    node: ModelVersion | None = None
    parent: ModelVersion | None = None
    while True:
        fence = int((node.tags or {}).get(ROLLBACK_FENCE, 0)) if node is not None else 0
        beaten_by = [v for v in children.get(node.version if node else "", []) if int(v.version) > fence]
        if not beaten_by:
            return node, parent
        parent, node = node, max(beaten_by, key=rank)


def _converge(client: Any, name: str, primary: str) -> tuple[str | None, str | None]:
    """Move ``champion``/``previous_champion`` to the target until a read after our last write agrees;
    returns the (champion, previous champion) versions it agreed on."""
    for _ in range(_MAX_ROUNDS):
        promoted = client.search_model_versions(f"name='{name}' and tags.{GATE_DECISION}='promote'")
        target, parent = _target(list(promoted), primary)
        champion = tracking.alias_version(client, name, CHAMPION)
        previous = tracking.alias_version(client, name, PREVIOUS_CHAMPION)
        have = (champion.version if champion else None, previous.version if previous else None)
        if target is None:  # nothing promoted (yet): leave whatever is served alone
            return have
        want = (target.version, parent.version if parent else None)
        if have == want:
            return have
        if have[0] != want[0]:
            _write(
                client.set_model_version_tag,
                name,
                target.version,
                "promoted_at",
                dt.datetime.now(dt.UTC).isoformat(),
            )
        # previous_champion first, then champion: a failure in between still serves the old champion.
        if have[1] != want[1]:
            if parent is not None:
                _write(client.set_registered_model_alias, name, PREVIOUS_CHAMPION, parent.version)
            else:
                client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
        if have[0] != want[0]:
            _write(client.set_registered_model_alias, name, CHAMPION, target.version)
    raise RegistryError(
        f"the aliases of '{name}' did not settle in {_MAX_ROUNDS} rounds of concurrent registrations; retry"
    )


def rollback(cfg: PipelineConfig, *, tracking_uri: str) -> dict[str, Any]:
    """Serve ``previous_champion`` again; ``previous_champion`` then points one step further back."""
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"roll back the champion of '{name}'"):
        previous = tracking.alias_version(client, name, PREVIOUS_CHAMPION)
        if previous is None:
            raise RegistryError(
                f"cannot roll back '{name}': it has no '{PREVIOUS_CHAMPION}' alias (no earlier champion)"
            )
        current = tracking.alias_version(client, name, CHAMPION)
        newest = client.search_model_versions(
            f"name='{name}'", max_results=1, order_by=["version_number DESC"]
        )
        _write(client.set_model_version_tag, name, previous.version, ROLLBACK_FENCE, newest[0].version)
        if current is not None:
            _write(
                client.set_model_version_tag,
                name,
                current.version,
                "rolled_back_at",
                dt.datetime.now(dt.UTC).isoformat(),
            )
        champion, before = _converge(client, name, cfg.gate.primary_metric)
    return {
        "model_name": name,
        "champion_version": champion,
        "rolled_back_version": current.version if current else None,
        "previous_champion_version": before,
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
