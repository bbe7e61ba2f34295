"""The MLflow model registry, driven by aliases (not stages).

* Every exported run becomes a registered model version, tagged with its data version, gate decision,
  gate metrics, the champion its gate compared it against, the newest version its gate saw, its run id
  and the sha256 of the ONNX file its gate judged, so the registry alone explains why each version is
  where it is. A version's gate tags are written once; retries reuse them, and a later gate of the
  same run with the other outcome is not applied (the result says so, ``decision_applied`` false): a
  new decision needs a new run (a stale version is the exception, see below). A run's ONNX file is
  write-once (:mod:`mlops_tasks.export`); registering a run whose file no longer has the registered
  checksum is refused.
* ``champion`` is what batch inference serves; ``previous_champion`` is the one-step rollback target
  (the champion the serving version's gate beat); ``challenger`` marks a rejected-but-sane model that
  batch inference shadow-scores.
* Who is champion is a function of the version tags alone (:func:`_champion_line`): the versions the
  gate promoted form a tree, each under the champion its gate beat; from the top, follow the best-gated
  child down to a version that no one has beaten. Children rank on the primary metric their gates
  recorded, never on the reader's config, so changing ``gate.primary_metric`` re-ranks nothing already
  registered; children gated on different metrics (the config changed during a race) rank on the
  oldest one's, which later arrivals do not change; on a tie the older version wins; a metric tag that
  is not a number (edited by hand) counts as missing and ranks last. A rejected
  version is not in the tree, so it never becomes champion. Deleting versions (retention) cuts the
  tree: the line then starts at the versions gated against the newest deleted champion. A rollback
  fences the restored version: the versions gated against it that exist at the rollback (the
  rolled-back champion and those it beat in a race) never count again, also once the restored version
  is deleted (each carries the fence too); challengers gated against it later do. Tags an older
  release could leave (a run gated against another model's version of the same number) may chain
  into a cycle: its oldest version then reads as a first champion (:func:`_acyclic_baselines`), so
  the walk always ends and the line is not lost.
* Stale gates: siblings compete on metrics measured on different evaluation windows, which is only fair
  between registrations that raced each other from one champion. So a registration is tagged
  ``stale`` (registered, never promoted, never shadow-scored) when, by the time it registers, the tags
  already name a champion that is neither the one its gate compared with nor a sibling gated against
  that same one: the champion moved on (e.g. its register task was retried after an outage); also when
  the champion its gate compared with is not a version of this model any more (deleted since, or the
  registered model was deleted and created again while the run was in flight: a version of that
  number of another run, when the decision names the champion's run). Its result
  says so; registering the run again after a new gate (against the current champion) registers it as
  a new version (:func:`_version_for_run`), whose number is above any rollback fence since. A
  registration that comes after a sibling has already won cannot be told apart from a race
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
* Rollback acts only when the aliases agree with the champion line the tags give (``champion`` on its
  last version, ``previous_champion`` on the one before), or show one of the interrupted moves above.
  Aliases moved by hand (which the next registration would move back anyway) make it refuse, naming
  both versions and how to put the alias back, and change nothing: rolling back from them would tag
  the wrong version (even the one that keeps serving) or restore one the tags never made champion.
  ``rolled_back_at`` only ever goes on the version that stops serving.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
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

log = logging.getLogger(__name__)


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


def _version_for_run(client: Any, cfg: PipelineConfig, run_id: str, decision: dict[str, Any]) -> ModelVersion:
    """The run's model version for this gate: reused if a previous attempt created it, else created now.

    A run's versions are one per gate that counts: a version whose gate record is written (promote or
    reject) is the run's for good; one whose gate was stale is reused only by a retry of that gate (the
    same champion compared and the same newest version seen), and a new gate of the run gets a new
    version. The registry orders gates by version number (a rollback fences the versions numbered up to
    it), so a re-gate written onto the stale version's old number could be fenced out by a rollback that
    came after the stale gate, and would never be promoted as the stale reason advises."""
    name = cfg.registered_model_name
    query = f"name={tracking.quoted(name)} and run_id='{run_id}'"

    found = _gates_version(client.search_model_versions(query), decision)
    if found is not None:
        return found
    run = client.get_run(run_id)
    if tracking.ONNX_ARTIFACT not in {a.path for a in client.list_artifacts(run_id, "model")}:
        raise RegistryError(
            f"run {run_id} has no {tracking.ONNX_ARTIFACT}; export (with a passing parity check) must "
            "succeed before a model can be registered"
        )
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run_id)
    # Two attempts of one gate (a task and its zombie) may both create one: both go on with the lowest,
    # the other stays untagged and never counts.
    found = _gates_version(client.search_model_versions(query), decision)
    if found is None:  # another gate of this run tagged the new version first
        raise RegistryContention(
            f"run {run_id}: another registration of this run took the version just created for it; "
            "run the task again"
        )
    return found


def _gates_version(versions: list[ModelVersion], decision: dict[str, Any]) -> ModelVersion | None:
    """Of a run's ``versions``, the one ``decision`` (a gate) registers as (see :func:`_version_for_run`):
    the lowest whose gate record is written, else the lowest untagged one the gate did not see yet (a
    creation race, or tagging cut short; one it saw is an earlier gate's leftover, whose number a
    rollback since may fence), else a stale one of this very gate (a retry); None for a new one."""
    ordered = sorted(versions, key=lambda v: int(v.version))
    recorded = next((v for v in ordered if _tags(v).get(GATE_DECISION) in (PROMOTE, REJECT)), None)
    if recorded is not None:
        return recorded
    newest = str(decision.get("registry_newest_version") or "")
    this_gate = (str(decision.get("champion_version") or ""), newest)
    for v in ordered:
        tags = _tags(v)
        if GATE_DECISION not in tags and int(v.version) > _number(newest):
            return v
        if (
            tags.get(GATE_DECISION) == STALE
            and (tags.get(BASELINE, ""), tags.get(GATE_NEWEST, "")) == this_gate
        ):
            return v
    return None


def _tags(version: ModelVersion) -> dict[str, str]:
    return version.tags or {}


def _gate_value(version: ModelVersion | None, metric: str) -> float | None:
    """The gate metric the version's tags record, or None when missing or not a number (a tag edited
    by hand, e.g. to "n/a"): such a version ranks last among its siblings, as ``status`` shows it."""
    raw = _tags(version).get(f"gate_{metric}") if version is not None else None
    value = _float(raw) if raw is not None else None
    return None if value is None or math.isnan(value) else value


def _number(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() else 0


def _versions(client: Any, name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name={tracking.quoted(name)}"))


def _baseline(version: ModelVersion) -> str:
    """The champion the version's gate compared it with ("" for none), as its tag says."""
    return _tags(version).get(BASELINE, "")


def _acyclic_baselines(versions: list[ModelVersion]) -> dict[str, str]:
    """Each version's baseline, except that a chain of baselines closing on itself is cut: the oldest
    version of the cycle reads as a first champion. Only tags no registration writes now can close one
    (a run gated against another model's version of the same number, registered by an older release
    after the model was deleted and created again), and every version of a cycle would otherwise wait
    under another forever: no champion line at all. A baseline above the version's own number (older
    releases wrote a stale version's new gate onto it) is kept when it closes no cycle."""
    baselines = {v.version: _baseline(v) for v in versions}
    cut: set[str] = set()
    done: set[str] = set()  # versions whose chain is known to end: each is walked once, O(n) in all
    for version in baselines:
        path: dict[str, None] = {}  # ordered, with set lookups
        node = version
        while node in baselines and node not in path and node not in done:
            path[node] = None
            node = baselines[node]
        if node in path:  # the walk came back: the versions from node on form a cycle
            walked = list(path)
            cut.add(min(walked[walked.index(node) :], key=int))
        done.update(path)
    return {v: "" if v in cut else b for v, b in baselines.items()}


def _stale_against(versions: list[ModelVersion], baseline: str, champion_run: str | None) -> str | None:
    """Why a gate against ``baseline`` is out of date (a clause for the version's reason), or
    None when the champion (as the tags say) is that baseline or a sibling gated against it (a race;
    see module doc). ``champion_run``: the run of the champion the gate compared with, when known."""
    line = _champion_line(versions)
    champion = line[-1] if line else None
    if baseline:
        compared = next((v for v in versions if v.version == baseline), None)
        other_run = compared is not None and champion_run not in (None, compared.run_id)
        if compared is None or other_run:
            return (
                f"v{baseline} is not the version of this model the gate saw (deleted since, or the "
                "registered model was deleted and created again), so the comparison says nothing about "
                "this model's champions"
            )
    if champion is None or baseline in (champion.version, _baseline(champion)):
        return None
    return (
        f"v{champion.version} was the champion when it registered, and metrics of other evaluation "
        "windows do not compare"
    )


def _write_gate_tags(
    client: Any, version: ModelVersion, run_id: str, decision: dict[str, Any], data_version: str
) -> dict[str, str]:
    """Tag the version with its gate record, ``gate_decision`` last: only then does it count."""
    name = version.name
    baseline = str(decision.get("champion_version") or "")
    versions = _versions(client, name)
    champion_run = (decision.get("champion") or {}).get("run_id")
    stale = _stale_against(versions, baseline, champion_run)
    outcome = PROMOTE if decision["promote"] else REJECT
    reason = decision["reason"]
    if stale is not None:
        compared = f"v{baseline}" if baseline else "no champion"
        line = _champion_line(versions)
        again = f"against v{line[-1].version}" if line else "(against no champion: there is none now)"
        if outcome == PROMOTE:
            outcome = STALE
            reason = (
                f"not promoted, stale gate: the gate compared this model with {compared}, but {stale}; "
                f"gate it again {again} and register it again. The gate said: {reason}"
            )
        else:
            reason = (
                f"{reason} (gated against {compared}; {stale}, so it is not shadow-scored as the challenger)"
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
        version = _version_for_run(client, cfg, run_id, decision)
        tags = dict(_tags(version))
        gated, registered = decision["challenger"].get(ONNX_SHA256_TAG), tags.get(ONNX_SHA256_TAG)
        if gated and registered and gated != registered:
            raise RegistryError(
                f"run {run_id}'s ONNX model (sha256 {gated[:12]}, as gated) is not the one registered as "
                f"v{version.version} of '{name}' (sha256 {registered[:12]}): the run's "
                f"{tracking.ONNX_ARTIFACT} changed after registration. Nothing was changed; train a new "
                "run to register a new model (and roll back if the changed file is being served)."
            )
        recorded = tags.get(GATE_DECISION)
        if recorded is None:
            tags = _write_gate_tags(client, version, run_id, decision, data_version)
        champion, previous = _converge(client, name)
        promoted = champion == version.version
        reason = tags["gate_reason"]
        if tags[GATE_DECISION] == PROMOTE and not promoted:
            promoted, reason = _since_promotion(client, name, version.version, champion)
    # A version's gate record is written once (it is what the tree and every retry rely on): a retry
    # with the same outcome is quiet; another outcome (the run gated again under other rules, or
    # against another champion) is reported as not applied, and the task stays idempotent.
    new = PROMOTE if decision["promote"] else REJECT
    applied = recorded in (None, STALE) or recorded == new
    if not applied:
        reason = (
            f"gate decision not applied: v{version.version} of '{name}' already recorded the gate "
            f"decision '{recorded}' (\"{tags.get('gate_reason', '')}\"), and a version's gate record is "
            f"written once, so this gate's decision '{new}' (\"{decision['reason']}\") changes nothing. "
            f"v{version.version} stays as recorded, "
            + (
                "the champion."
                if promoted
                else f"not the champion ({f'v{champion} is' if champion else 'none is'})."
            )
            + " To have a new gate decision count, train a new run (a new version) and gate it."
        )
        log.warning("Registry: %s", reason)
    return {
        "model_name": name,
        "version": version.version,
        "promoted": promoted,
        "stale": tags[GATE_DECISION] == STALE,
        "decision_applied": applied,
        "champion_version": champion,
        "previous_champion_version": previous,
        "reason": reason,
    }


def _since_promotion(client: Any, name: str, version: str, champion: str | None) -> tuple[bool, str]:
    """Whether ``version``, gate-passed but not the champion, was promoted all the same, and why it is
    not the champion: a register task cleared days later must report what happened then (promoted,
    superseded since; or rolled back), not a race that never was. It was champion if it is on the
    champion line, if a later gate compared a model with it, or if an alias move stamped it
    ``promoted_at`` (the line alone starts below a deleted champion, retention; a race's loser may
    have served for the moments before the winner registered)."""
    versions = _versions(client, name)
    tags = next((_tags(v) for v in versions if v.version == version), {})
    if ROLLED_BACK_AT in tags:
        return False, f"promoted, then rolled back (at {tags[ROLLED_BACK_AT]}); v{champion} is the champion"
    served = FENCED_BY not in tags and (  # fenced: a race's loser that a rollback shut out for good
        any(v.version == version for v in _champion_line(versions))
        or any(_tags(v).get(BASELINE) == version for v in versions)
        or "promoted_at" in tags
    )
    if served:
        return True, f"promoted; v{champion} has been promoted since"
    return False, (
        f"not promoted: the gate passed, but v{champion} is the champion after the registrations "
        f"that raced this one (compare the gate metrics of v{champion} and v{version})"
    )


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
    baselines = _acyclic_baselines(versions)
    children: dict[str, list[ModelVersion]] = {}
    for v in versions:
        tags = _tags(v)
        baseline = baselines[v.version]
        # Under a deleted version, a rolled-back or fenced one is dropped: the fence that kept it out
        # went with it. A first champion (no baseline) is never fenced: no rollback restores a version
        # before it (an alias moved by hand once made a rollback tag it; it still counts).
        fenced = ROLLED_BACK_AT in tags or FENCED_BY in tags
        if tags.get(GATE_DECISION) == PROMOTE and (not baseline or baseline in registered or not fenced):
            children.setdefault(baseline, []).append(v)
    # The line starts under the newest champion no longer registered: none ("") at first, and once old
    # versions are deleted (retention), the deleted one the remaining line was gated against. Starting
    # at "" then would skip the line's deleted links and serve an old version again.
    start = max((b for b in children if b not in registered), key=_number, default="")
    line: list[ModelVersion] = []
    while True:  # ends: the baselines have no cycle (see _acyclic_baselines)
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
    seen = max((max(_number(_tags(v).get(GATE_NEWEST)), _number(_baseline(v))) for v in line), default=0)
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


def _fenced_out(version: ModelVersion | None, restored: ModelVersion) -> bool:
    """Whether a rollback to ``restored`` fenced ``version`` out (see module doc)."""
    if version is None:
        return False
    fence = _number(_tags(restored).get(ROLLBACK_FENCE))
    return _tags(version).get(FENCED_BY) == restored.version or (
        _baseline(version) == restored.version and int(version.version) <= fence
    )


def _rollback_plan(
    name: str,
    pipeline: str,
    versions: list[ModelVersion],
    line: list[ModelVersion],
    current: str | None,
    previous: str | None,
) -> tuple[str, str | None, bool, str]:
    """(the version to serve, the one that stops serving or None, whether to fence, what it does), from
    the aliases ``current``/``previous`` and the champion ``line`` the tags give; a RegistryError,
    changing nothing, when they disagree (aliases moved by hand): rolling back from them would tag or
    restore the wrong version."""
    champion = line[-1].version if line else None
    before = line[-2].version if len(line) > 1 else None
    if before is not None and (current, previous) == (champion, before):
        return before, champion, True, f"rolled back v{champion}: v{before} serves again"
    by_number = {v.version: v for v in versions}
    # A retried rollback (see module doc): its fence is in place, so the tags already make the
    # restored version champion; ``champion`` is still on the version it fenced out, or on it.
    if (
        previous is not None
        and previous == champion
        and ROLLBACK_FENCE in _tags(line[-1])
        and (current == previous or _fenced_out(by_number.get(current or ""), line[-1]))
    ):
        if current != previous:
            return previous, current, False, f"finished rolling back v{current}: v{previous} serves again"
        return (
            previous,
            None,
            False,
            f"finished an interrupted rollback to v{previous} (both aliases were on it); nothing else "
            "was rolled back",
        )
    # A promotion stopped between its two alias writes: undone, the version it promoted never served.
    if before is not None and current == previous == before:
        return (
            before,
            None,
            True,
            f"undid the interrupted promotion of v{champion} over v{before} (v{champion} never served); "
            f"v{before} still serves: run `mlops-tasks model rollback {pipeline}` again to roll it back",
        )
    head = f"cannot roll back '{name}'"
    if previous is None and current == champion:
        if before is None:
            raise RegistryError(
                f"{head}: it has no '{PREVIOUS_CHAMPION}' alias (no earlier champion"
                + (f": v{champion} is the first champion of its line)" if champion else ")")
            )
        raise RegistryError(
            f"{head}: it has no '{PREVIOUS_CHAMPION}' alias, but the version tags name v{before} as the "
            f"champion v{champion} beat (the alias was removed by hand?). Nothing was changed. To roll "
            f"back v{champion} to v{before}, restore the alias (MlflowClient().set_registered_model_alias("
            f"{name!r}, '{PREVIOUS_CHAMPION}', '{before}'); the next registration also restores it), then "
            f"run `mlops-tasks model rollback {pipeline}` again."
        )
    if champion is None:
        raise RegistryError(
            f"{head}: no version of it is champion by its tags (none was promoted by a gate, or all were "
            f"rolled back), so '{CHAMPION}' ({_on(current)}) and '{PREVIOUS_CHAMPION}' ({_on(previous)}) "
            "were set by hand, and the tags name nothing to roll back to. Nothing was changed; move the "
            "aliases with MlflowClient().set_registered_model_alias if another version must serve."
        )
    wrong: list[str] = []
    moves: list[str] = []
    for alias, have, want, what in (
        (CHAMPION, current, champion, f"make v{champion} the champion"),
        (
            PREVIOUS_CHAMPION,
            previous,
            before,
            f"name v{before} as the champion v{champion} beat" if before else f"name none before v{champion}",
        ),
    ):
        if have == want:
            continue
        wrong.append(f"'{alias}' is {_on(have)}, but the version tags {what}")
        moves.append(
            f"MlflowClient().set_registered_model_alias({name!r}, '{alias}', '{want}')"
            if want is not None
            else f"MlflowClient().delete_registered_model_alias({name!r}, '{alias}')"
        )
    back = f"put the aliases back ({'; '.join(moves)})"
    fix = (
        f"To roll back v{champion} to v{before}, {back}, then run `mlops-tasks model rollback {pipeline}` "
        "right after."
        if before
        else f"There is no earlier champion to roll back to (v{champion} is the first of its line); {back}."
    )
    raise RegistryError(
        f"{head}: {'; '.join(wrong)} (moved by hand, or a registration is moving them right now: then run "
        "the rollback again once it finished). Nothing was changed: a rollback from these aliases "
        "would demote or restore the wrong version, and an alias moved by hand does not last (the next "
        f"registration moves it back to what the tags say). {fix}"
    )


def _on(version: str | None) -> str:
    return f"on v{version}" if version is not None else "missing"


def rollback(cfg: PipelineConfig, *, tracking_uri: str) -> dict[str, Any]:
    """Serve ``previous_champion`` again; ``previous_champion`` then points one step further back.

    Only when the aliases agree with the champion line the version tags give (see module doc): else a
    RegistryError names both and changes nothing. Retrying a rollback that failed part-way finishes it
    (``rolled_back_version`` None when the failed attempt had already moved ``champion``) instead of
    rolling back a second step. ``reason`` in the result says what it did.
    """
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"roll back the champion of '{name}'"):
        versions = _versions(client, name)
        current = _alias(client, name, CHAMPION)
        previous = _alias(client, name, PREVIOUS_CHAMPION)
        target, demoted, fence, reason = _rollback_plan(
            name, cfg.name, versions, _champion_line(versions), current, previous
        )
        if fence:
            newest = client.search_model_versions(
                f"name={tracking.quoted(name)}", max_results=1, order_by=["version_number DESC"]
            )
            fence_at = newest[0].version
            # Each fenced version says so itself first; the restored version's fence, the commit point,
            # goes with it if it is deleted (e.g. a race's loser would then count again under it).
            for v in _versions(client, name):
                if _baseline(v) == target and _number(v.version) <= _number(fence_at):
                    _write(client.set_model_version_tag, name, v.version, FENCED_BY, target)
            _write(client.set_model_version_tag, name, target, ROLLBACK_FENCE, fence_at)
        # Only ever on a version the fence (in place by now) keeps out: the one that stops serving.
        if demoted is not None and (
            fence or ROLLED_BACK_AT not in _tags(client.get_model_version(name, demoted))
        ):
            _write(
                client.set_model_version_tag,
                name,
                demoted,
                ROLLED_BACK_AT,
                dt.datetime.now(dt.UTC).isoformat(),
            )
        champion, before = _converge(client, name)
    if champion != target:  # a registration promoted a version gated against the restored one meanwhile
        reason += f"; v{champion} is the champion after a registration that ran meanwhile"
    return {
        "model_name": name,
        "champion_version": champion,
        "rolled_back_version": demoted,
        "previous_champion_version": before,
        "reason": reason,
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


def champion_history(cfg: PipelineConfig, *, tracking_uri: str) -> tuple[bool, str | None]:
    """(whether the registered model exists, the newest version ever promoted): what tells "no champion
    yet" from a champion removed by hand (the model deleted in MLflow, or its alias)."""
    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"read registered model '{name}'"):
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                raise
            return False, None
        served = [v.version for v in _versions(client, name) if "promoted_at" in _tags(v)]
    return True, max(served, key=_number, default=None)


def _role_advice(cfg: PipelineConfig, role: str | None, version: str, fix: str) -> str:
    """What to do when ``role``'s version ``version`` cannot be scored (``fix``: e.g. "restore the
    file"): advice that fits the role, so a broken challenger never leads anyone to demote the healthy
    champion."""
    name = cfg.registered_model_name
    if role == CHAMPION:
        return (
            f"{fix[0].upper()}{fix[1:]}, or roll back to the previous champion (mlops-tasks model rollback "
            f"{cfg.name})."
        )
    if role == CHALLENGER:
        return (
            f"The champion is not affected: do not roll back. {fix[0].upper()}{fix[1:]}, or stop "
            f"shadow-scoring v{version}: mark it ineligible and remove the '{CHALLENGER}' alias "
            f"(MlflowClient().set_model_version_tag({name!r}, '{version}', '{CHALLENGER_ELIGIBLE}', "
            f"'false'), then MlflowClient().delete_registered_model_alias({name!r}, '{CHALLENGER}'); "
            "without the tag the next registration moves the alias back)."
        )
    return (
        f"v{version} is neither '{CHAMPION}' nor '{CHALLENGER}' now: re-run the inference run, which "
        f"resolves them again, or {fix}."
    )


def _role_of(found: ModelVersion, role: str | None) -> str | None:
    """``role`` if given, else the serving alias the version holds now."""
    held = set(found.aliases or [])
    return role or next((r for r in (CHAMPION, CHALLENGER) if r in held), None)


def download_onnx(
    cfg: PipelineConfig,
    *,
    tracking_uri: str,
    dest_dir: str | Path,
    alias: str | None = CHAMPION,
    version: str | int | None = None,
    role: str | None = None,
) -> Path:
    """The ONNX file of a version (by number, or by alias) as a local path under ``dest_dir``; it
    must have the sha256 the version was registered with (versions registered before the checksum
    was recorded have none to check), so nothing serves a file changed after its gate.

    ``role`` (``champion``/``challenger``): what the caller scores the version as, for errors that
    advise what fits it; by default the serving alias the version holds now."""
    from mlops_tasks.storage import sha256_file

    name = cfg.registered_model_name
    client = tracking.client(tracking_uri)
    with _reachable(tracking_uri, f"download the ONNX model of '{name}'"):
        if version is not None:
            try:
                found = client.get_model_version(name, str(version))
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    raise
                as_role = f" (resolved as the {role})" if role else ""
                raise RegistryError(
                    f"v{version} of '{name}'{as_role} no longer exists in the registry: it was deleted "
                    "after the run resolved it (retention, or by hand); nothing was scored with it. Re-run "
                    "the inference run (or the check that resolved it): it resolves the champion again"
                    + ("; the champion is not affected." if role == CHALLENGER else ".")
                ) from None
        else:
            found = tracking.alias_version(client, name, alias or CHAMPION)
            if found is None:
                raise RegistryError(f"model '{name}' has no version with alias '{alias}'")
    role = _role_of(found, role)
    who = f"{role} v{found.version}" if role else f"v{found.version}"
    try:
        path = tracking.download_run_artifact(tracking_uri, found.run_id, tracking.ONNX_ARTIFACT, dest_dir)
    except tracking.ArtifactMissingError:
        raise RegistryError(
            f"{who} of '{name}': its run {found.run_id} has no {tracking.ONNX_ARTIFACT} any more (deleted "
            f"from the artifact store?); nothing was scored with it. "
            + _role_advice(cfg, role, found.version, "restore the file")
        ) from None
    registered = (found.tags or {}).get(ONNX_SHA256_TAG)
    if registered and sha256_file(path) != registered:
        raise RegistryError(
            f"{who} of '{name}': the run's {tracking.ONNX_ARTIFACT} (run {found.run_id}) is not the file "
            f"registered and gated (sha256 {registered[:12]}); it changed after registration. Nothing was "
            "scored with it. " + _role_advice(cfg, role, found.version, "register a new run")
        )
    return path
