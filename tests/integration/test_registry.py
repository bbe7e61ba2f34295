"""Registry behaviour on the real MLflow server: promotion by aliases, rollback, refusals, races.

Three exported runs are shared by every test (a good model, a second good model with another seed, and
a model trained on label-shuffled rows); each test registers them under its own model name.
"""

from __future__ import annotations

import datetime as dt
import html
import threading
import uuid
from pathlib import Path

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from mlops_tasks import evaluation, export, registry, stack, tracking, training
from mlops_tasks.config import GateSpec, PipelineConfig, load_config
from mlops_tasks.storage import ObjectStore
from tests.conftest import EXAMPLE_CONFIG, tune
from tests.integration.faults.stage_runner import alias, exported_run
from tests.integration.faults.stage_runner import decision as gate
from tests.model_frames import example_rows, small_config, with_shuffled_labels

DAY = dt.date(2013, 2, 14)


@pytest.fixture(scope="module")
def base_cfg() -> PipelineConfig:
    return small_config(load_config(EXAMPLE_CONFIG), f"reg_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def split(base_cfg: PipelineConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    return training.split_window(example_rows(dt.date(2013, 1, 1), DAY, max_rows=6000), base_cfg)


@pytest.fixture(scope="module")
def runs(base_cfg: PipelineConfig, split: tuple, mlflow_server: str) -> dict[str, str]:
    """name -> run id of an exported model."""
    seeded = tune(base_cfg, "model", {"seed": 7})
    plans = {
        "good": (base_cfg, split[0]),
        "good_other_seed": (seeded, split[0]),
        "shuffled": (base_cfg, with_shuffled_labels(split[0], base_cfg.target.column)),
    }
    out = {}
    for name, (cfg, rows) in plans.items():
        run_id = training.train(cfg, rows, tracking_uri=mlflow_server, data_version=name, trigger="test")[
            "run_id"
        ]
        export.export_run(cfg, run_id, tracking_uri=mlflow_server, sample_frame=split[1])
        out[name] = run_id
    return out


def model_cfg(base: PipelineConfig, **gate: object) -> PipelineConfig:
    """A fresh registered model name per test, with the given gate rules."""
    name = f"m_{uuid.uuid4().hex[:10]}"
    gate_spec = GateSpec(latency_batch_rows=256, **gate)
    return base.model_copy(
        update={"mlflow": base.mlflow.model_copy(update={"registered_model": name}), "gate": gate_spec}
    )


def gate_and_register(
    cfg: PipelineConfig, run_id: str, split: tuple, mlflow_server: str, store: ObjectStore
) -> tuple[dict, dict]:
    decision = evaluation.evaluate_and_gate(
        cfg, run_id, split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    result = registry.register(cfg, run_id, tracking_uri=mlflow_server, decision=decision, data_version="dv")
    return decision, result


def champion_version(cfg: PipelineConfig, mlflow_server: str) -> str | None:
    info = registry.champion_info(cfg, tracking_uri=mlflow_server)
    return info["version"] if info else None


def test_first_registration_becomes_champion(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg, min_value=0.55)
    decision, result = gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    assert (
        decision["promote"] and decision["champion"] is None and decision["registry_newest_version"] is None
    )
    assert result["promoted"] and result["version"] == "1" and result["previous_champion_version"] is None
    info = registry.champion_info(cfg, tracking_uri=mlflow_server)
    assert info["run_id"] == runs["good"] and info["data_version"] == "dv" and info["promoted_at"]
    assert info["metrics"]["roc_auc"] == pytest.approx(decision["challenger"]["metrics"]["roc_auc"])


def test_better_model_promotes_and_keeps_previous_champion(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg)  # no floor: the shuffled model is champion first
    gate_and_register(cfg, runs["shuffled"], split, mlflow_server, store)
    decision, result = gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    assert decision["champion_version"] == "1" and decision["promote"]
    assert (result["promoted"], result["version"], result["previous_champion_version"]) == (True, "2", "1")
    assert registry.alias_info(cfg, registry.PREVIOUS_CHAMPION, tracking_uri=mlflow_server)["version"] == "1"


def test_rollback_restores_the_previous_champion(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg)
    gate_and_register(cfg, runs["shuffled"], split, mlflow_server, store)
    gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    result = registry.rollback(cfg, tracking_uri=mlflow_server)
    assert (result["champion_version"], result["rolled_back_version"]) == ("1", "2")
    assert champion_version(cfg, mlflow_server) == "1"
    assert registry.alias_info(cfg, registry.PREVIOUS_CHAMPION, tracking_uri=mlflow_server) is None


def test_rollback_without_previous_champion_is_a_clear_error(
    base_cfg: PipelineConfig, mlflow_server: str
) -> None:
    cfg = model_cfg(base_cfg)
    with pytest.raises(registry.RegistryError, match="no 'previous_champion' alias"):
        registry.rollback(cfg, tracking_uri=mlflow_server)


def test_label_shuffled_model_is_never_promoted(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg, min_value=0.55)
    gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    decision, result = gate_and_register(cfg, runs["shuffled"], split, mlflow_server, store)
    assert not decision["promote"] and decision["floor_failed"]
    assert {"min_value", "beats_champion"} <= {c["name"] for c in decision["checks"] if not c["passed"]}
    assert not result["promoted"] and champion_version(cfg, mlflow_server) == "1"
    assert registry.alias_info(cfg, registry.CHALLENGER, tracking_uri=mlflow_server) is None


def test_model_rejected_only_for_not_beating_the_champion_becomes_challenger(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg)
    gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    _, result = gate_and_register(cfg, runs["shuffled"], split, mlflow_server, store)
    assert not result["promoted"] and result["champion_version"] == "1"
    assert (
        registry.alias_info(cfg, registry.CHALLENGER, tracking_uri=mlflow_server)["version"]
        == result["version"]
    )


def test_registration_retry_reuses_the_version(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg)
    decision, first = gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    again = registry.register(
        cfg, runs["good"], tracking_uri=mlflow_server, decision=decision, data_version="dv"
    )
    assert again["version"] == first["version"] == "1" and again["promoted"]
    assert again["previous_champion_version"] is None


def test_unreachable_registry_raises_registry_unavailable_and_keeps_the_champion(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg)
    gate_and_register(cfg, runs["shuffled"], split, mlflow_server, store)
    decision = evaluation.evaluate_and_gate(
        cfg, runs["good"], split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    down = f"http://127.0.0.1:{stack.free_port()}"
    with pytest.raises(registry.RegistryUnavailable, match="not reachable"):
        registry.register(cfg, runs["good"], tracking_uri=down, decision=decision, data_version="dv")
    assert champion_version(cfg, mlflow_server) == "1"


def test_concurrent_registrations_end_with_one_consistent_champion(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg)
    names = ["good", "good_other_seed"]
    decisions = {
        n: evaluation.evaluate_and_gate(
            cfg, runs[n], split[1], tracking_uri=mlflow_server, store=store, day=DAY
        )
        for n in names
    }
    assert all(d["promote"] and d["champion_version"] is None for d in decisions.values())
    results: dict[str, dict] = {}
    barrier = threading.Barrier(len(names))

    def register(name: str) -> None:
        barrier.wait()
        results[name] = registry.register(
            cfg, runs[name], tracking_uri=mlflow_server, decision=decisions[name], data_version="dv"
        )

    threads = [threading.Thread(target=register, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    champion = registry.champion_info(cfg, tracking_uri=mlflow_server)
    previous = registry.alias_info(cfg, registry.PREVIOUS_CHAMPION, tracking_uri=mlflow_server)
    auc = {n: d["challenger"]["metrics"]["roc_auc"] for n, d in decisions.items()}
    best = max(names, key=lambda n: auc[n])
    assert champion["run_id"] == runs[best] or auc[names[0]] == auc[names[1]]
    assert previous is None or previous["version"] != champion["version"]
    assert sorted(r["version"] for r in results.values()) == ["1", "2"]
    winner = next(n for n in names if results[n]["version"] == champion["version"])
    assert results[winner]["promoted"] and results[winner]["champion_version"] == champion["version"]


def test_download_onnx_by_alias_and_by_version(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    by_alias = registry.download_onnx(cfg, tracking_uri=mlflow_server, dest_dir=tmp_path / "a")
    by_version = registry.download_onnx(cfg, tracking_uri=mlflow_server, version=1, dest_dir=tmp_path / "v")
    assert by_alias.name == "model.onnx" and by_alias.read_bytes() == by_version.read_bytes()
    with pytest.raises(registry.RegistryError, match="no version with alias 'challenger'"):
        registry.download_onnx(cfg, tracking_uri=mlflow_server, alias="challenger", dest_dir=tmp_path / "c")


# -- stale gates and the challenger's lifetime --------------------------------------------------------


def register_bare(cfg: PipelineConfig, run_id: str, decision: dict, mlflow_server: str) -> dict:
    return registry.register(cfg, run_id, tracking_uri=mlflow_server, decision=decision, data_version="dv")


def test_late_registration_gated_against_a_replaced_champion_is_stale_and_rollback_keeps_the_chain(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    late = exported_run(
        mlflow_server, tmp_path
    )  # gated against v1; its register task retried after an outage
    for auc, baseline in ((0.70, None), (0.72, "1"), (0.73, "2")):
        register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(auc, baseline), mlflow_server)

    result = register_bare(cfg, late, gate(0.75, "1"), mlflow_server)

    assert (result["version"], result["promoted"], result["stale"]) == ("4", False, True)
    assert "stale gate" in result["reason"] and "gate it again against v3" in result["reason"]
    assert (result["champion_version"], result["previous_champion_version"]) == ("3", "2")
    assert registry.alias_info(cfg, "champion", tracking_uri=mlflow_server)["version"] == "3"
    stale = tracking.client(mlflow_server).get_model_version(cfg.registered_model_name, "4")
    assert stale.tags["gate_decision"] == "stale" and stale.tags["gate_champion_version"] == "1"
    assert alias(cfg, registry.CHALLENGER, mlflow_server) is None  # never shadow-scored either
    rolled = registry.rollback(cfg, tracking_uri=mlflow_server)
    assert (rolled["champion_version"], rolled["rolled_back_version"]) == ("2", "3")


def test_a_stale_version_gated_again_against_the_champion_is_promoted(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    late = exported_run(mlflow_server, tmp_path)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.70, None), mlflow_server)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.72, "1"), mlflow_server)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.73, "2"), mlflow_server)
    assert register_bare(cfg, late, gate(0.75, "1"), mlflow_server)["stale"]
    assert register_bare(cfg, late, gate(0.75, "1"), mlflow_server)["stale"]  # a retry: still stale

    again = register_bare(cfg, late, gate(0.76, "3"), mlflow_server)

    # The new gate is a new version of the run: v4 keeps the stale record that explains it.
    assert (again["version"], again["promoted"], again["stale"]) == ("5", True, False)
    assert again["previous_champion_version"] == "3"
    assert register_bare(cfg, late, gate(0.76, "3"), mlflow_server)["version"] == "5"  # a retry
    old = tracking.client(mlflow_server).get_model_version(cfg.registered_model_name, "4")
    assert old.tags["gate_decision"] == "stale" and old.tags["gate_champion_version"] == "1"


def test_a_stale_version_gated_again_after_a_rollback_is_promoted(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """The rollback fences the versions gated against the restored v2 that exist when it runs (up to
    v4). The stale run's new gate against v2, written onto v4 as older releases did, fell under that
    fence: the gate passed, its reason had advised exactly this, and it was never promoted."""
    cfg = model_cfg(base_cfg)
    late = exported_run(mlflow_server, tmp_path)
    promoted_chain(cfg, mlflow_server, tmp_path)
    assert register_bare(cfg, late, gate(0.75, "1"), mlflow_server)["stale"]  # v4
    assert registry.rollback(cfg, tracking_uri=mlflow_server)["champion_version"] == "2"

    again = register_bare(cfg, late, gate(0.76, "2"), mlflow_server)

    assert (again["version"], again["promoted"], again["stale"]) == ("5", True, False)
    assert (again["champion_version"], again["previous_champion_version"]) == ("5", "2")


def test_a_re_gate_does_not_take_an_untagged_version_an_earlier_gate_left(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """Two attempts of one gate may both create a version; the second stays untagged. A later gate
    of the run saw it (its registry_newest_version): reused, its old number fell under the fence of
    the rollback in between, and the re-gate was never promoted."""
    cfg = model_cfg(base_cfg)
    late = exported_run(mlflow_server, tmp_path)
    promoted_chain(cfg, mlflow_server, tmp_path)
    assert register_bare(cfg, late, gate(0.75, "1"), mlflow_server)["stale"]  # v4
    client = tracking.client(mlflow_server)
    source = f"{client.get_run(late).info.artifact_uri}/model"
    assert client.create_model_version(cfg.registered_model_name, source, run_id=late).version in (5, "5")
    assert registry.rollback(cfg, tracking_uri=mlflow_server)["champion_version"] == "2"

    again = register_bare(cfg, late, {**gate(0.76, "2"), "registry_newest_version": "5"}, mlflow_server)

    assert (again["version"], again["promoted"], again["champion_version"]) == ("6", True, "6")


def test_a_stale_version_gated_again_against_a_champion_registered_after_it_is_promoted_and_rolls_back(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """v4 (stale) gated again against v5, registered after it: the new gate is v6, under v5."""
    cfg = model_cfg(base_cfg)
    late = exported_run(mlflow_server, tmp_path)
    promoted_chain(cfg, mlflow_server, tmp_path)
    assert register_bare(cfg, late, gate(0.75, "1"), mlflow_server)["stale"]
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.74, "3"), mlflow_server)  # v5

    again = register_bare(cfg, late, gate(0.76, "5"), mlflow_server)

    assert (again["version"], again["promoted"], again["stale"]) == ("6", True, False)
    assert (again["champion_version"], again["previous_champion_version"]) == ("6", "5")
    rolled = registry.rollback(cfg, tracking_uri=mlflow_server)
    assert (rolled["champion_version"], rolled["rolled_back_version"]) == ("5", "6")
    later = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.77, "5"), mlflow_server)
    assert (later["version"], later["promoted"], later["previous_champion_version"]) == ("7", True, "5")


def test_a_stale_version_re_tagged_by_an_older_release_above_its_own_number_keeps_the_line(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """Older releases wrote a stale version's new gate onto it: v4 promoted over v5, a baseline above
    its own number, which a cycle guard once read as "no champion" (the line was lost)."""
    cfg = model_cfg(base_cfg)
    late = exported_run(mlflow_server, tmp_path)
    promoted_chain(cfg, mlflow_server, tmp_path)
    assert register_bare(cfg, late, gate(0.75, "1"), mlflow_server)["stale"]  # v4
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.74, "3"), mlflow_server)  # v5
    client, name = hand_edited(cfg, mlflow_server)
    for key, value in (
        (registry.BASELINE, "5"),
        ("gate_roc_auc", "0.76"),
        (registry.GATE_DECISION, "promote"),
    ):
        client.set_model_version_tag(name, "4", key, value)

    later = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.77, "4"), mlflow_server)

    assert (later["version"], later["promoted"], later["previous_champion_version"]) == ("6", True, "4")
    rolled = registry.rollback(cfg, tracking_uri=mlflow_server)
    assert (rolled["champion_version"], rolled["rolled_back_version"]) == ("4", "6")


def test_registration_gated_against_the_champion_s_own_baseline_races_it_on_the_gate_metric(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """Both gated against v1: registered one after the other or at once is the same tags, so the same
    outcome (see the registry's module doc): the better gate wins, neither is stale."""
    cfg = model_cfg(base_cfg)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.70, None), mlflow_server)
    first = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.72, "1"), mlflow_server)
    second = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.75, "1"), mlflow_server)
    assert first["promoted"] and not (first["stale"] or second["stale"])
    assert (second["promoted"], second["previous_champion_version"]) == (True, "1")


def test_challenger_is_cleared_once_a_champion_gated_after_it_is_promoted(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    cfg = model_cfg(base_cfg)
    gate_and_register(cfg, runs["shuffled"], split, mlflow_server, store)  # v1
    strict = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"min_improvement": 0.99})})
    decision, rejected = gate_and_register(strict, runs["good"], split, mlflow_server, store)  # v2
    assert not decision["promote"] and not decision["floor_failed"]
    assert alias(cfg, registry.CHALLENGER, mlflow_server) == rejected["version"] == "2"

    decision, promoted = gate_and_register(cfg, runs["good_other_seed"], split, mlflow_server, store)

    assert decision["registry_newest_version"] == "2" and promoted["promoted"]
    assert promoted["champion_version"] == "3"
    assert alias(cfg, registry.CHALLENGER, mlflow_server) is None


def test_challenger_gated_before_the_new_champion_registered_stays(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    """Both gated against v1 before either registered (a race): the new champion's gate never saw the
    challenger, so shadow-scoring it against the new champion still tells something."""
    cfg = model_cfg(base_cfg)
    gate_and_register(cfg, runs["shuffled"], split, mlflow_server, store)  # v1
    strict = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"min_improvement": 0.99})})
    decisions = {
        name: evaluation.evaluate_and_gate(
            c, runs[name], split[1], tracking_uri=mlflow_server, store=store, day=DAY
        )
        for name, c in (("good", strict), ("good_other_seed", cfg))
    }
    assert {d["registry_newest_version"] for d in decisions.values()} == {"1"}

    rejected = register_bare(cfg, runs["good"], decisions["good"], mlflow_server)
    promoted = register_bare(cfg, runs["good_other_seed"], decisions["good_other_seed"], mlflow_server)

    assert not rejected["promoted"] and promoted["promoted"]
    assert alias(cfg, registry.CHALLENGER, mlflow_server) == rejected["version"]


# -- interrupted alias moves ---------------------------------------------------------------------


def failing_alias_write_once(monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """The first write of alias ``failing`` fails as an unreachable server does (the write is lost)."""
    real_client = tracking.client
    state = {"failed": False}

    class Client:
        def __init__(self, tracking_uri: str) -> None:
            self._client = real_client(tracking_uri)

        def __getattr__(self, name: str) -> object:
            return getattr(self._client, name)

        def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
            if alias == failing and not state["failed"]:
                state["failed"] = True
                raise MlflowException(f"API request to {alias} failed with exception simulated outage")
            self._client.set_registered_model_alias(name, alias, version)

    monkeypatch.setattr(tracking, "client", Client)


@pytest.mark.parametrize("failing", [registry.CHAMPION, registry.PREVIOUS_CHAMPION])
def test_rollback_retried_after_an_alias_write_failed_rolls_back_one_step(
    base_cfg: PipelineConfig,
    mlflow_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    cfg = model_cfg(base_cfg)
    for auc, baseline in ((0.70, None), (0.72, "1"), (0.73, "2")):
        register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(auc, baseline), mlflow_server)
    failing_alias_write_once(monkeypatch, failing)
    with pytest.raises(registry.RegistryUnavailable, match="not reachable"):
        registry.rollback(cfg, tracking_uri=mlflow_server)

    retried = registry.rollback(cfg, tracking_uri=mlflow_server)

    assert (retried["champion_version"], retried["previous_champion_version"]) == ("2", "1")
    assert alias(cfg, registry.CHAMPION, mlflow_server) == "2"
    assert alias(cfg, registry.PREVIOUS_CHAMPION, mlflow_server) == "1"
    # A champion the failed attempt had already restored is not reported (nor tagged) as rolled back.
    assert retried["rolled_back_version"] == ("3" if failing == registry.CHAMPION else None)
    restored = tracking.client(mlflow_server).get_model_version(cfg.registered_model_name, "2")
    assert "rolled_back_at" not in restored.tags


# -- the gate's own primary metric --------------------------------------------------------------------


def gated_on(metric: str, auc: float, log_loss: float, baseline: str | None, promote: bool = True) -> dict:
    return {
        **gate(auc, baseline, promote),
        "primary_metric": metric,
        "challenger": {"metrics": {"roc_auc": auc, "log_loss": log_loss}},
    }


def on_metric(cfg: PipelineConfig, metric: str) -> PipelineConfig:
    return cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"primary_metric": metric})})


def reject_then_roll_back(
    cfg: PipelineConfig, decision: dict, mlflow_server: str, tmp_path: Path
) -> tuple[dict, dict]:
    """A rejected registration (which converges the aliases on the tags), then a rollback."""
    rejected = register_bare(cfg, exported_run(mlflow_server, tmp_path), decision, mlflow_server)
    return rejected, registry.rollback(cfg, tracking_uri=mlflow_server)


def test_changing_the_primary_metric_re_ranks_no_registered_version(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """v2 beat v3 in a race on roc_auc; v3 has the better log_loss. After the config switches to
    log_loss, neither a registration nor a rollback makes v3 champion."""
    cfg = model_cfg(base_cfg)
    for auc, ll, baseline in ((0.60, 0.60, None), (0.70, 0.50, "1"), (0.68, 0.45, "1"), (0.75, 0.40, "2")):
        register_bare(
            cfg, exported_run(mlflow_server, tmp_path), gated_on("roc_auc", auc, ll, baseline), mlflow_server
        )
    assert (
        alias(cfg, registry.CHAMPION, mlflow_server),
        alias(cfg, registry.PREVIOUS_CHAMPION, mlflow_server),
    ) == ("4", "2")
    by_log_loss = on_metric(cfg, "log_loss")

    rejected, rolled = reject_then_roll_back(
        by_log_loss, gated_on("log_loss", 0.5, 0.9, "4", False), mlflow_server, tmp_path
    )

    assert (rejected["champion_version"], rejected["previous_champion_version"]) == ("4", "2")
    assert (rolled["champion_version"], rolled["previous_champion_version"]) == ("2", "1")


def test_a_race_gated_on_two_metrics_ranks_on_the_first_registration_s(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    register_bare(
        cfg, exported_run(mlflow_server, tmp_path), gated_on("roc_auc", 0.6, 0.6, None), mlflow_server
    )
    first = register_bare(
        cfg, exported_run(mlflow_server, tmp_path), gated_on("roc_auc", 0.70, 0.50, "1"), mlflow_server
    )
    second = register_bare(
        on_metric(cfg, "log_loss"),
        exported_run(mlflow_server, tmp_path),
        gated_on("log_loss", 0.68, 0.45, "1"),
        mlflow_server,
    )
    assert (first["version"], second["version"], second["champion_version"]) == ("2", "3", "2")
    assert "compare the gate metrics of v2 and v3" in second["reason"] and not second["promoted"]


# -- deleted versions ----------------------------------------------------------------------------------


def promoted_chain(cfg: PipelineConfig, mlflow_server: str, tmp_path: Path) -> None:
    """v1 -> v2 -> v3: each promoted over the one before; v3 serves, v2 is previous_champion."""
    for auc, baseline in ((0.70, None), (0.72, "1"), (0.73, "2")):
        register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(auc, baseline), mlflow_server)


def test_deleting_the_first_champion_s_version_keeps_promoting(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """Retention deletes old versions; the champion line must not need them."""
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    tracking.client(mlflow_server).delete_model_version(cfg.registered_model_name, "1")

    result = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.75, "3"), mlflow_server)

    assert (result["version"], result["promoted"], result["stale"]) == ("4", True, False)
    assert (result["champion_version"], result["previous_champion_version"]) == ("4", "3")


def test_deleting_the_previous_champion_s_version_leaves_the_champion_serving(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    tracking.client(mlflow_server).delete_model_version(cfg.registered_model_name, "2")

    rejected = register_bare(
        cfg, exported_run(mlflow_server, tmp_path), gate(0.71, "3", promote=False), mlflow_server
    )

    assert (rejected["champion_version"], rejected["stale"]) == ("3", False)
    assert alias(cfg, registry.CHAMPION, mlflow_server) == "3"
    assert alias(cfg, registry.CHALLENGER, mlflow_server) == "4"


def test_deleting_the_versions_rollbacks_restored_never_serves_a_rolled_back_one_again(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    registry.rollback(cfg, tracking_uri=mlflow_server)  # v3 rolled back, v2 serves
    registry.rollback(cfg, tracking_uri=mlflow_server)  # v2 rolled back, v1 serves
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.71, "1"), mlflow_server)  # v4
    client = tracking.client(mlflow_server)
    client.delete_model_version(cfg.registered_model_name, "1")

    rejected = register_bare(
        cfg, exported_run(mlflow_server, tmp_path), gate(0.70, "4", promote=False), mlflow_server
    )
    assert rejected["champion_version"] == "4"  # not v2, the better gate metric
    client.delete_model_version(cfg.registered_model_name, "2")

    promoted = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.75, "4"), mlflow_server)

    assert (promoted["version"], promoted["promoted"]) == ("6", True)
    assert (promoted["champion_version"], promoted["previous_champion_version"]) == ("6", "4")


def test_the_losers_a_rollback_fenced_out_stay_out_once_the_restored_version_is_deleted(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    for auc, baseline in ((0.70, None), (0.72, "1"), (0.80, "2"), (0.78, "2")):  # v3 and v4 race from v2
        register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(auc, baseline), mlflow_server)
    assert registry.rollback(cfg, tracking_uri=mlflow_server)["champion_version"] == "2"  # fences v3, v4
    promoted = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.75, "2"), mlflow_server)
    assert (promoted["version"], promoted["champion_version"]) == ("5", "5")
    client = tracking.client(mlflow_server)
    for version in ("1", "2"):
        client.delete_model_version(cfg.registered_model_name, version)

    later = register_bare(
        cfg, exported_run(mlflow_server, tmp_path), gate(0.60, "5", promote=False), mlflow_server
    )

    assert later["champion_version"] == "5"  # not v4, the race's loser, on a metric of another window


def test_a_model_name_with_a_quote_registers_promotes_and_rolls_back(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    name = f"Flights' delay {cfg.registered_model_name}"  # MLflow allows any name without / or :
    cfg = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(update={"registered_model": name})})
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.70, None), mlflow_server)

    result = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.72, "1"), mlflow_server)

    assert (result["champion_version"], result["previous_champion_version"]) == ("2", "1")
    assert registry.rollback(cfg, tracking_uri=mlflow_server)["champion_version"] == "1"


# -- tags and aliases edited by hand, deleted versions and models ------------------------------------


def hand_edited(cfg: PipelineConfig, mlflow_server: str) -> tuple:
    """A client and the model's name, to edit tags and aliases as someone in the MLflow UI does."""
    return tracking.client(mlflow_server), cfg.registered_model_name


def test_a_gate_metric_tag_edited_to_a_non_number_ranks_last_and_keeps_register_and_rollback_working(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    for auc, baseline in ((0.70, None), (0.72, "1"), (0.80, "2"), (0.75, "2")):  # v3 and v4 race from v2
        register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(auc, baseline), mlflow_server)
    client, name = hand_edited(cfg, mlflow_server)
    client.set_model_version_tag(name, "3", "gate_roc_auc", "n/a")  # e.g. in the MLflow UI

    rejected, rolled = reject_then_roll_back(cfg, gate(0.5, "4", promote=False), mlflow_server, tmp_path)

    assert (rejected["champion_version"], rejected["previous_champion_version"]) == ("4", "2")
    assert (rolled["champion_version"], rolled["rolled_back_version"]) == ("2", "4")


def test_rollback_refuses_when_champion_was_moved_by_hand_and_the_registry_keeps_promoting(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.5, "3", promote=False), mlflow_server)
    client, name = hand_edited(cfg, mlflow_server)
    for moved_to in ("1", "4"):  # the first champion; a rejected version
        client.set_registered_model_alias(name, registry.CHAMPION, moved_to)
        with pytest.raises(registry.RegistryError) as refused:
            registry.rollback(cfg, tracking_uri=mlflow_server)
        message = str(refused.value)
        assert f"'champion' is on v{moved_to}, but the version tags make v3 the champion" in message
        assert "Nothing was changed" in message and "set_registered_model_alias(" in message
        assert "'champion', '3')" in message and "mlops-tasks model rollback" in message
        assert alias(cfg, registry.CHAMPION, mlflow_server) == moved_to
        for version in ("1", "3", "4"):
            tags = client.get_model_version(name, version).tags
            assert "rolled_back_at" not in tags and "rollback_fence" not in tags

    promoted = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.9, "3"), mlflow_server)

    assert (promoted["version"], promoted["promoted"], promoted["previous_champion_version"]) == (
        "5",
        True,
        "3",
    )


def test_rollback_refuses_a_previous_champion_moved_outside_the_line_and_tags_nothing(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.5, "3", promote=False), mlflow_server)
    client, name = hand_edited(cfg, mlflow_server)
    client.set_registered_model_alias(name, registry.PREVIOUS_CHAMPION, "4")

    with pytest.raises(
        registry.RegistryError,
        match="'previous_champion' is on v4, but the version tags name v2 as the champion v3 beat",
    ):
        registry.rollback(cfg, tracking_uri=mlflow_server)

    assert "rolled_back_at" not in client.get_model_version(name, "3").tags  # it still serves
    client.delete_model_version(name, "2")  # retention: v3 keeps serving
    later = register_bare(
        cfg, exported_run(mlflow_server, tmp_path), gate(0.5, "3", promote=False), mlflow_server
    )
    assert later["champion_version"] == "3"


def test_rollback_without_its_previous_champion_alias_names_the_version_the_tags_give(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    client, name = hand_edited(cfg, mlflow_server)
    client.delete_registered_model_alias(name, registry.PREVIOUS_CHAMPION)

    with pytest.raises(registry.RegistryError) as refused:
        registry.rollback(cfg, tracking_uri=mlflow_server)

    message = str(refused.value)
    assert "no 'previous_champion' alias, but the version tags name v2 as the champion v3 beat" in message
    assert f"set_registered_model_alias({name!r}, 'previous_champion', '2')" in message
    assert "no earlier champion" not in message
    assert alias(cfg, registry.CHAMPION, mlflow_server) == "3"


def test_rollback_of_an_interrupted_promotion_undoes_it_and_says_so(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """previous_champion moved onto v2, champion not yet moved to v3: v2 still serves."""
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    client, name = hand_edited(cfg, mlflow_server)
    client.set_registered_model_alias(name, registry.CHAMPION, "2")

    rolled = registry.rollback(cfg, tracking_uri=mlflow_server)

    assert (rolled["champion_version"], rolled["previous_champion_version"]) == ("2", "1")
    assert rolled["rolled_back_version"] is None and "interrupted promotion of v3" in rolled["reason"]
    assert "rolled_back_at" not in client.get_model_version(name, "2").tags


def test_a_registration_gated_against_a_deleted_model_s_version_is_stale_and_the_line_keeps_promoting(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    in_flight = exported_run(mlflow_server, tmp_path)  # its gate compared it with v3
    client, name = hand_edited(cfg, mlflow_server)
    client.delete_registered_model(name)

    late = register_bare(cfg, in_flight, gate(0.80, "3"), mlflow_server)
    assert (late["version"], late["promoted"], late["stale"], late["champion_version"]) == (
        "1",
        False,
        True,
        None,
    )
    assert "v3 is not the version of this model the gate saw" in late["reason"]
    champion = None
    for auc in (0.85, 0.90, 0.95):
        result = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(auc, champion), mlflow_server)
        assert result["promoted"] and not result["stale"], result
        champion = result["version"]
    assert (champion, alias(cfg, registry.PREVIOUS_CHAMPION, mlflow_server)) == ("4", "3")


def test_a_tag_cycle_left_by_a_deleted_model_neither_loops_nor_loses_the_line(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """v1 tagged as gated against "v3" (another model's, as older code registered an in-flight run):
    v1 -> v2 -> v3 -> v1 would close a cycle."""
    cfg = model_cfg(base_cfg)
    promoted_chain(cfg, mlflow_server, tmp_path)
    client, name = hand_edited(cfg, mlflow_server)
    client.set_model_version_tag(name, "1", registry.BASELINE, "3")

    result = register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.75, "3"), mlflow_server)

    assert (result["version"], result["promoted"]) == ("4", True)
    assert (result["champion_version"], result["previous_champion_version"]) == ("4", "3")


def test_the_same_run_gated_again_with_another_outcome_is_reported_as_not_applied(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.70, None), mlflow_server)
    run_id = exported_run(mlflow_server, tmp_path)
    first = register_bare(cfg, run_id, gate(0.60, "1", promote=False), mlflow_server)

    retried = register_bare(cfg, run_id, gate(0.60, "1", promote=False), mlflow_server)
    regated = register_bare(cfg, run_id, gate(0.90, "1"), mlflow_server)

    assert retried == first and first["decision_applied"]  # a retry is quiet
    assert (regated["version"], regated["promoted"], regated["decision_applied"]) == ("2", False, False)
    reason = regated["reason"]
    assert "v2 of" in reason and "already recorded the gate decision 'reject'" in reason
    assert "gate failed with roc_auc 0.6" in reason and "'promote'" in reason
    assert "gate passed with roc_auc 0.9" in reason and "not the champion (v1 is)" in reason
    client, name = hand_edited(cfg, mlflow_server)
    assert client.get_model_version(name, "2").tags["gate_decision"] == "reject"
    assert alias(cfg, registry.CHAMPION, mlflow_server) == "1"


def test_download_onnx_errors_name_the_role_and_never_advise_a_rollback_for_the_challenger(
    base_cfg: PipelineConfig, mlflow_server: str, s3_endpoint: str, tmp_path: Path
) -> None:
    from tests.conftest import make_store

    cfg = model_cfg(base_cfg)
    champion_run = exported_run(mlflow_server, tmp_path)
    register_bare(cfg, champion_run, gate(0.70, None), mlflow_server)
    challenger_run = exported_run(mlflow_server, tmp_path)
    register_bare(cfg, challenger_run, gate(0.60, "1", promote=False), mlflow_server)
    assert alias(cfg, registry.CHALLENGER, mlflow_server) == "2"
    client, name = hand_edited(cfg, mlflow_server)
    client.set_model_version_tag(name, "2", evaluation.ONNX_SHA256_TAG, "0" * 64)

    with pytest.raises(registry.RegistryError) as changed:
        registry.download_onnx(cfg, tracking_uri=mlflow_server, version="2", dest_dir=tmp_path / "c1")
    artifacts = make_store(s3_endpoint, "mlops")
    for run_id in (champion_run, challenger_run):
        artifacts.delete([o.key for o in artifacts.list("mlflow/") if run_id in o.key])
    with pytest.raises(registry.RegistryError) as challenger_gone:
        registry.download_onnx(cfg, tracking_uri=mlflow_server, version="2", dest_dir=tmp_path / "c2")
    with pytest.raises(registry.RegistryError) as champion_gone:
        registry.download_onnx(cfg, tracking_uri=mlflow_server, version="1", dest_dir=tmp_path / "c3")

    for error in (changed, challenger_gone):
        message = str(error.value)
        assert message.startswith("challenger v2 of") and "do not roll back" in message
        assert "model rollback" not in message
        assert f"delete_registered_model_alias({name!r}, 'challenger')" in message
    assert "it changed after registration" in str(changed.value)
    assert "has no model/model.onnx any more" in str(challenger_gone.value)
    message = str(champion_gone.value)
    assert message.startswith("champion v1 of") and "has no model/model.onnx any more" in message
    assert f"mlops-tasks model rollback {cfg.name}" in message


def test_download_onnx_of_a_version_deleted_after_it_was_resolved_says_to_re_run(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    cfg = model_cfg(base_cfg)
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.70, None), mlflow_server)
    resolved = registry.champion_info(cfg, tracking_uri=mlflow_server)["version"]  # as inference does
    register_bare(cfg, exported_run(mlflow_server, tmp_path), gate(0.75, "1"), mlflow_server)
    client, name = hand_edited(cfg, mlflow_server)
    client.delete_model_version(name, resolved)

    with pytest.raises(registry.RegistryError, match=r"v1 of .* no longer exists in the registry.*Re-run"):
        registry.download_onnx(cfg, tracking_uri=mlflow_server, version=resolved, dest_dir=tmp_path)


def test_a_register_task_cleared_after_later_promotions_reports_what_happened_to_its_version(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """Cleared days later, the register task of v2 (promoted, then superseded by v3) and of v3
    (promoted, then rolled back) must not report a race that never was: the lineage record is
    written from this result."""
    cfg = model_cfg(base_cfg)
    runs = [exported_run(mlflow_server, tmp_path) for _ in range(3)]
    gates = [gate(0.70, None), gate(0.72, "1"), gate(0.73, "2")]
    for run, decided in zip(runs, gates, strict=True):
        register_bare(cfg, run, decided, mlflow_server)

    superseded = register_bare(cfg, runs[1], gates[1], mlflow_server)
    assert (superseded["version"], superseded["promoted"], superseded["decision_applied"]) == (
        "2",
        True,
        True,
    )
    assert superseded["reason"] == "promoted; v3 has been promoted since"

    registry.rollback(cfg, tracking_uri=mlflow_server)  # v2 serves again
    rolled_back = register_bare(cfg, runs[2], gates[2], mlflow_server)
    assert (rolled_back["promoted"], rolled_back["champion_version"]) == (False, "2")
    assert rolled_back["reason"].startswith("promoted, then rolled back (at ")
    assert rolled_back["reason"].endswith("); v2 is the champion")


def test_a_register_task_cleared_after_a_later_champion_was_deleted_still_reports_its_promotion(
    base_cfg: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """v1 -> v2 -> v3 -> v4, then v3 deleted (retention): the champion line starts below it, at v4,
    but v2 and v1 were champions all the same."""
    cfg = model_cfg(base_cfg)
    runs = [exported_run(mlflow_server, tmp_path) for _ in range(4)]
    gates = [gate(0.70, None), gate(0.72, "1"), gate(0.73, "2"), gate(0.74, "3")]
    for run, decided in zip(runs, gates, strict=True):
        register_bare(cfg, run, decided, mlflow_server)
    tracking.client(mlflow_server).delete_model_version(cfg.registered_model_name, "3")

    for index in (1, 0):
        again = register_bare(cfg, runs[index], gates[index], mlflow_server)
        assert (again["promoted"], again["reason"]) == (True, "promoted; v4 has been promoted since")


def test_status_tells_a_champion_removed_by_hand_from_no_champion_yet(
    base_cfg: PipelineConfig, split: tuple, runs: dict, mlflow_server: str, store: ObjectStore
) -> None:
    """Before any registration: "no champion yet". The alias taken off, or the registered model
    deleted in MLflow after a gate promoted a version: the status says so, and what it stops."""
    from mlops_tasks.status import format_status, pipeline_status
    from mlops_tasks.ui.render import overview

    cfg = tune(model_cfg(base_cfg), "storage", {"prefix": f"status-{uuid.uuid4().hex[:8]}"})

    def no_champion() -> str:
        row = pipeline_status(store, cfg, tracking_uri=mlflow_server)
        assert row["champion"] is None
        assert f"{cfg.name}: champion: {row['no_champion']}" in format_status([row])
        assert html.escape(row["no_champion"], quote=True) in overview([row], "")
        return row["no_champion"]

    assert no_champion() == "no champion yet"
    gate_and_register(cfg, runs["good"], split, mlflow_server, store)
    client, name = tracking.client(mlflow_server), cfg.registered_model_name
    client.delete_registered_model_alias(name, registry.CHAMPION)
    assert no_champion() == (
        "no version holds the alias 'champion', though v1 was promoted (alias removed?): batch inference "
        "fails until a version serves (set the alias on a version, or train again)"
    )
    client.delete_registered_model(name)
    assert no_champion() == (
        f"'{name}' is not in the registry, though the gate of {DAY} promoted a version (deleted in "
        "MLflow?): batch inference fails until a version serves (train again)"
    )
