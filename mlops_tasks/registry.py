"""The MLflow model registry, driven by aliases (not stages).

* Every exported run becomes a registered model version, tagged with its data version, gate decision,
  gate metrics, the champion its gate compared it against, the newest version its gate saw, its run id
  and the sha256 of the ONNX file its gate judged, so the registry alone explains why each version is
  where it is. A version's gate tags are written once; retries reuse them (a stale version's are
  written again, see below). A run's ONNX file is write-once (:mod:`mlops_tasks.export`); registering
  a run whose file no longer has the registered checksum is refused.
* ``champion`` is what batch inference serves; ``previous_champion`` is the one-step rollback target
  (the champion the serving version's gate beat); ``challenger`` marks a rejected-but-sane model that
  batch inference shadow-scores.
* Who is champion is a function of the version tags alone (:func:`_champion_line`): the versions the
  gate promoted form a tree, each under the champion its gate beat; from the top, follow the best-gated
  child down to a version that no one has beaten. Children rank on the primary metric their gates
  recorded, never on the reader's config, so changing ``gate.primary_metric`` re-ranks nothing already
  registered; children gated on different metrics (the config changed during a race) rank on the
  oldest one's, which later arrivals do not change; on a tie the older version wins. A rejected
  version is not in the tree, so it never becomes champion. Deleting versions (retention) cuts the
  tree: the line then starts at the versions gated against the newest deleted champion. A rollback
  fences the restored version: the versions gated against it that exist at the rollback (the
  rolled-back champion and those it beat in a race) never count again, also once the restored version
  is deleted (each carries the fence too); challengers gated against it later do.
* Stale gates: siblings compete on metrics measured on different evaluation windows, which is only fair
  between registrations that raced each other from one champion. So a registration is tagged
  ``stale`` (registered, never promoted, never shadow-scored) when, by the time it registers, the tags
  already name a champion that is neither the one its gate compared with nor a sibling gated against
  that same one: the champion moved on (e.g. its register task was retried after an outage). Its result
  says so; registering the run again after a new gate (against the current champion) writes its tags
  again. A registration that comes after a sibling has already won cannot be told apart from a race
  (same tags, only timing differs), so it is judged as one.
* ``challenger`` is also a function of the tags: the newest rejected-but-sane version, unless a gate on
  the champion's line ran after that version was registered (``gate_newest_version``): the champion
  has moved past it, so there is nothing left to shadow. A challenger that raced the champion (both
  gated against the same one, before either registered) stays.
* Concurrent registrations, across processes and machines (MLflow has no compare-and-set on aliases):
  "register, then converge". A registration writes all its tags first (``gate_decision`` last, so a
  half-tagged version does not count), then loops: read the tags and the aliases; if the aliases are not
  on the target of those tags, move them and read again; return only after a read that agrees.
  Why it settles: the target depends on tags only, and they stop changing once every registration has
  written them. Take the last alias write W. Its writer reads again after W; if W came after the last tag
  write, that read sees the final tags and aliases, and a disagreement would make it write again (W was
  the last). If no alias write follows the last tag write, the last tagger's own loop reads the final tags
  and aliases, and stops only when they agree. So when all registrations have returned, the aliases are
  the final target. A writer holding stale tags can move an alias to an outdated (gate-passed) version
  for a moment, never for good. Rollback writes its fence, then runs the same loop. (The one input that
  is not a tag: a version rejected before the ``challenger_eligible`` tag existed stays eligible while it
  holds the alias; once moved off it, it never is again, so this settles too.)
* Promotion moves aliases as the very last step, so a failure at any earlier point leaves the served
  model untouched; a retry converges again. Of ``champion`` and ``previous_champion``, the one that
  moves onto the version the other holds goes first (a promotion: ``previous_champion``; a rollback:
  ``champion``), then ``challenger``. Stopped between the two writes, both aliases name one version and
  ``previous_champion`` never skips a step, so a retried rollback neither rolls back twice nor jumps
  over a champion; it sees both aliases on one version and only finishes the move.
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
from mlops_tasks.errors import DataError
from mlops_tasks.evaluation import HIGHER_IS_BETTER, ONNX_SHA256_TAG

CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous_champion"
CHALLENGER = "challenger"

GATE_DECISION = "gate_decision"
PROMOTE, REJECT, STALE = "promote", "reject", "stale"  # values of GATE_DECISION
# The metric the gate judged this version on; its value is tagged as gate_<metric>.
PRIMARY_METRIC = "gate_primary_metric"
# The champion version the gate compared this version against ("" when there was none).
BASELINE = "gate_champion_version"
# The newest version of the model when the gate ran ("" when unknown or none).
GATE_NEWEST = "gate_newest_version"
# "true" on a rejected-but-sane version that may be shadow-scored as the challenger.
CHALLENGER_ELIGIBLE = "challenger_eligible"
# On a rollback target: versions gated against it numbered up to this one no longer count.
ROLLBACK_FENCE = "rollback_fence"
# On the champion a rollback replaced: it never counts again.
ROLLED_BACK_AT = "rolled_back_at"
# On each version a rollback fenced out (the value: the version restored): it stays out when the
# restored version, and its fence with it, is deleted.
FENCED_BY = "rollback_fenced_by"
# Bound on read-move-verify rounds: a round after the first only follows another writer's change.
_MAX_ROUNDS = 30


class RegistryUnavailable(tracking.TrackingUnavailable):
    """The registry (MLflow tracking server) is unreachable; nothing was changed, retry later."""


class RegistryError(DataError):
    """A registry operation is impossible as asked (no previous champion to roll back to, a run
    without its ONNX file, a file that changed after registration): the same call fails again, so
    a task fails at once instead of retrying."""


class RegistryContention(RuntimeError):
    """Concurrent registrations kept moving the aliases; a retry (later) settles them."""


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
    query = f"name={tracking.quoted(name)} and run_id='{run_id}'"
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


def _tags(version: ModelVersion) -> dict[str, str]:
    return version.tags or {}


def _gate_value(version: ModelVersion | None, metric: str) -> float | None:
    raw = _tags(version).get(f"gate_{metric}") if version is not None else None
    return float(raw) if raw not in (None, "", "None") else None


def _number(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() else 0


def _versions(client: Any, name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name={tracking.quoted(name)}"))


def _stale_against(versions: list[ModelVersion], baseline: str) -> str | None:
    """The champion (as the tags say) that makes a gate against ``baseline`` out of date, or None when
    the champion is that baseline or a sibling gated against it (a race; see module doc)."""
    line = _champion_line(versions)
    if not line:
        return None
    champion = line[-1]
    if baseline in (champion.version, _tags(champion).get(BASELINE, "")):
        return None
    return champion.version


def _write_gate_tags(
    client: Any, version: ModelVersion, run_id: str, decision: dict[str, Any], data_version: str
) -> dict[str, str]:
    """Tag the version with its gate record, ``gate_decision`` last: only then does it count."""
    name = version.name
    baseline = decision.get("champion_version") or ""
    stale = _stale_against(_versions(client, name), baseline)
    outcome = PROMOTE if decision["promote"] else REJECT
    reason = decision["reason"]
    if stale is not None:
        compared = f"v{baseline}" if baseline else "no champion"
        if outcome == PROMOTE:
            outcome = STALE
            reason = (
                f"not promoted, stale gate: the gate compared this model with {compared}, but v{stale} "
                f"was the champion when it registered, and metrics of other evaluation windows do not "
                f"compare; gate it again against v{stale} and register it again. The gate said: {reason}"
            )
        else:
            reason = (
                f"{reason} (gated against {compared}; v{stale} was the champion when it registered, "
                "so it is not shadow-scored as the challenger)"
            )
    eligible = outcome == REJECT and not decision.get("floor_failed") and stale is None
    # The bytes the gate judged (a decision made without them: the export's record of the run's file);
    # a later gate of this run checks its ONNX against them (evaluation's already_champion).
    onnx_sha256 = decision["challenger"].get(ONNX_SHA256_TAG) or client.get_run(run_id).data.tags.get(
        "onnx_sha256", ""
    )
    tags = {
        "run_id": run_id,
        ONNX_SHA256_TAG: onnx_sha256,
        "data_version": data_version,
        "gate_reason": reason[:4000],
        PRIMARY_METRIC: decision["primary_metric"],
        BASELINE: baseline,
        GATE_NEWEST: str(decision.get("registry_newest_version") or ""),
        CHALLENGER_ELIGIBLE: "true" if eligible else "false",
        **{f"gate_{k}": str(v) for k, v in decision["challenger"]["metrics"].items()},
    }
    for key, val in tags.items():
        _write(client.set_model_version_tag, name, version.version, key, val)
    tags[GATE_DECISION] = outcome
    _write(client.set_model_version_tag, name, version.version, GATE_DECISION, outcome)
    return tags


def register(
    cfg: PipelineConfig, run_id: str, *, tracking_uri: str, decision: dict[str, Any], data_version: str
) -> dict[str, Any]:
    """Register the run's model, record its gate, and converge the aliases (see module doc).

    ``stale`` in the result: the gate compared the model with a champion that had been replaced by the
    time it registered; it is registered but never promoted until gated (and registered) again.
    """
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"register run {run_id} as a version of '{name}'"):
        _ensure_model(client, name)
        version = _version_for_run(client, cfg, run_id)
        tags = dict(_tags(version))
        gated, registered = decision["challenger"].get(ONNX_SHA256_TAG), tags.get(ONNX_SHA256_TAG)
        if gated and registered and gated != registered:
            raise RegistryError(
                f"run {run_id}'s ONNX model (sha256 {gated[:12]}, as gated) is not the one registered as "
                f"v{version.version} of '{name}' (sha256 {registered[:12]}): the run's "
                f"{tracking.ONNX_ARTIFACT} changed after registration. Nothing was changed; train a new "
                "run to register a new model (and roll back if the changed file is being served)."
            )
        # A stale version is not in the tree, so writing its tags again (after a new gate) is safe.
        if tags.get(GATE_DECISION) in (None, STALE):
            tags = _write_gate_tags(client, version, run_id, decision, data_version)
        champion, previous = _converge(client, name)
    promoted = champion == version.version
    reason = tags["gate_reason"]
    if tags[GATE_DECISION] == PROMOTE and not promoted:
        reason = (
            f"not promoted: the gate passed, but v{champion} is the champion after the registrations "
            f"that raced this one (compare the gate metrics of v{champion} and v{version.version})"
        )
    return {
        "model_name": name,
        "version": version.version,
        "promoted": promoted,
        "stale": tags[GATE_DECISION] == STALE,
        "champion_version": champion,
        "previous_champion_version": previous,
        "reason": reason,
    }


def _best(siblings: list[ModelVersion]) -> ModelVersion:
    """The best-gated of versions gated against one champion, on the metric the oldest one's gate
    judged on (see module doc)."""
    metric = _tags(min(siblings, key=lambda v: int(v.version))).get(PRIMARY_METRIC, "")
    higher = HIGHER_IS_BETTER.get(metric, True)

    def rank(v: ModelVersion) -> tuple[bool, float, int]:  # a missing metric ranks last; ties: older
        value = _gate_value(v, metric)
        if value is None:
            return False, 0.0, -int(v.version)
        return True, value if higher else -value, -int(v.version)

    return max(siblings, key=rank)


def _champion_line(versions: list[ModelVersion]) -> list[ModelVersion]:
    """The promoted versions from the first champion down to the champion, as the tags say (see module
    doc); empty when nothing is promoted."""
    registered = {v.version for v in versions}
    children: dict[str, list[ModelVersion]] = {}
    for v in versions:
        tags = _tags(v)
        baseline = tags.get(BASELINE, "")
        # Under a deleted version, a rolled-back or fenced one is dropped: the fence that kept it out
        # went with it.
        fenced = ROLLED_BACK_AT in tags or FENCED_BY in tags
        if tags.get(GATE_DECISION) == PROMOTE and (baseline in registered or not fenced):
            children.setdefault(baseline, []).append(v)
    # The line starts under the newest champion no longer registered: none ("") at first, and once old
    # versions are deleted (retention), the deleted one the remaining line was gated against. Starting
    # at "" then would skip the line's deleted links and serve an old version again.
    start = max((b for b in children if b not in registered), key=_number, default="")
    line: list[ModelVersion] = []
    while True:
        node = line[-1] if line else None
        fence = _number(_tags(node).get(ROLLBACK_FENCE)) if node is not None else 0
        beaten_by = [v for v in children.get(node.version if node else start, []) if int(v.version) > fence]
        if not beaten_by:
            return line
        line.append(_best(beaten_by))


def _challenger(versions: list[ModelVersion], line: list[ModelVersion], holder: str | None) -> str | None:
    """The newest rejected-but-sane version that no gate on the champion's ``line`` ran after (see
    module doc); ``holder`` is the version the alias is on now."""

    def eligible(v: ModelVersion) -> bool:
        tags = _tags(v)
        if tags.get(GATE_DECISION) != REJECT:  # also: not before its gate record is complete
            return False
        if CHALLENGER_ELIGIBLE in tags:
            return tags[CHALLENGER_ELIGIBLE] == "true"
        return v.version == holder  # rejected before the flag existed

    # A gate ran after every version up to the newest it saw, and after the champion it compared with.
    seen = max(
        (max(_number(_tags(v).get(GATE_NEWEST)), _number(_tags(v).get(BASELINE))) for v in line), default=0
    )
    candidates = [int(v.version) for v in versions if int(v.version) > seen and eligible(v)]
    return str(max(candidates)) if candidates else None


def _alias(client: Any, name: str, alias: str) -> str | None:
    found = tracking.alias_version(client, name, alias)
    return found.version if found is not None else None


def _converge(client: Any, name: str) -> tuple[str | None, str | None]:
    """Move ``champion``/``previous_champion``/``challenger`` to the target until a read after our last
    write agrees; returns the (champion, previous champion) versions it agreed on."""
    for _ in range(_MAX_ROUNDS):
        versions = _versions(client, name)
        line = _champion_line(versions)
        have = tuple(_alias(client, name, a) for a in (CHAMPION, PREVIOUS_CHAMPION, CHALLENGER))
        challenger = _challenger(versions, line, have[2])
        if line:
            want = (line[-1].version, line[-2].version if len(line) > 1 else None, challenger)
        else:  # nothing promoted (yet): leave whatever is served alone
            want = (have[0], have[1], challenger)
        if have == want:
            return have[0], have[1]
        if have[0] != want[0]:
            _write(
                client.set_model_version_tag,
                name,
                want[0],
                "promoted_at",
                dt.datetime.now(dt.UTC).isoformat(),
            )
        # The alias moving onto the version the other holds first (see module doc): in between, both
        # name one version, the old champion on a promotion, the restored one on a rollback.
        pair = ((1, PREVIOUS_CHAMPION), (0, CHAMPION))
        if want[0] is not None and want[0] == have[1]:
            pair = pair[::-1]
        for i, alias in (*pair, (2, CHALLENGER)):
            if have[i] == want[i]:
                continue
            if want[i] is not None:
                _write(client.set_registered_model_alias, name, alias, want[i])
            else:
                client.delete_registered_model_alias(name, alias)
    raise RegistryContention(
        f"the aliases of '{name}' did not settle in {_MAX_ROUNDS} rounds of concurrent registrations; retry"
    )


def rollback(cfg: PipelineConfig, *, tracking_uri: str) -> dict[str, Any]:
    """Serve ``previous_champion`` again; ``previous_champion`` then points one step further back.

    Retrying a rollback that failed part-way finishes it (``rolled_back_version`` None when the failed
    attempt had already moved ``champion``) instead of rolling back a second step.
    """
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"roll back the champion of '{name}'"):
        previous = tracking.alias_version(client, name, PREVIOUS_CHAMPION)
        if previous is None:
            raise RegistryError(
                f"cannot roll back '{name}': it has no '{PREVIOUS_CHAMPION}' alias (no earlier champion)"
            )
        current = tracking.alias_version(client, name, CHAMPION)
        if current is not None and current.version == previous.version:
            # Both aliases on one version: an alias move stopped between its two writes (see module
            # doc). Nothing served is rolled back; a rollback's move is finished, a promotion's undone.
            current = None
        line = _champion_line(_versions(client, name))
        # Fence, unless the tags already make it champion (a retried rollback, its fence in place):
        # fencing again would also drop the challengers gated against it since.
        if not line or line[-1].version != previous.version:
            newest = client.search_model_versions(
                f"name={tracking.quoted(name)}", max_results=1, order_by=["version_number DESC"]
            )
            fence = newest[0].version
            # Each fenced version says so itself first; the restored version's fence, the commit point,
            # goes with it if it is deleted (e.g. a race's loser would then count again under it).
            for v in _versions(client, name):
                if _tags(v).get(BASELINE) == previous.version and _number(v.version) <= _number(fence):
                    _write(client.set_model_version_tag, name, v.version, FENCED_BY, previous.version)
            _write(client.set_model_version_tag, name, previous.version, ROLLBACK_FENCE, fence)
        if current is not None:
            _write(
                client.set_model_version_tag,
                name,
                current.version,
                ROLLED_BACK_AT,
                dt.datetime.now(dt.UTC).isoformat(),
            )
        champion, before = _converge(client, name)
    return {
        "model_name": name,
        "champion_version": champion,
        "rolled_back_version": current.version if current else None,
        "previous_champion_version": before,
    }


def _describe(version: ModelVersion) -> dict[str, Any]:
    tags = dict(version.tags or {})
    primary = tags.get(PRIMARY_METRIC)
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
    """The ONNX file of a version (by number, or by alias) as a local path under ``dest_dir``; it
    must have the sha256 the version was registered with (versions registered before the checksum
    was recorded have none to check), so nothing serves a file changed after its gate."""
    from mlops_tasks.storage import sha256_file

    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"download the ONNX model of '{name}'"):
        if version is not None:
            found = client.get_model_version(name, str(version))
        else:
            found = tracking.alias_version(client, name, alias or CHAMPION)
            if found is None:
                raise RegistryError(f"model '{name}' has no version with alias '{alias}'")
    try:
        path = tracking.download_run_artifact(tracking_uri, found.run_id, tracking.ONNX_ARTIFACT, dest_dir)
    except tracking.ArtifactMissingError:
        raise RegistryError(
            f"v{found.version} of '{name}': its run {found.run_id} has no {tracking.ONNX_ARTIFACT} any more "
            f"(deleted from the artifact store?); nothing was scored with it. Roll back (mlops-tasks "
            f"model rollback {cfg.name}) or restore the file."
        ) from None
    registered = (found.tags or {}).get(ONNX_SHA256_TAG)
    if registered and sha256_file(path) != registered:
        raise RegistryError(
            f"v{found.version} of '{name}': the run's {tracking.ONNX_ARTIFACT} (run {found.run_id}) is not the "
            f"file registered and gated (sha256 {registered[:12]}); it changed after registration. Nothing was "
            f"scored with it: roll back (mlops-tasks model rollback {cfg.name}) or register a new run."
        )
    return path
