"""Registry faults on MLflow with a PostgreSQL store: the tracking server down at registration, eight
registrations of one model racing each other (threads, and separate OS processes), and a rollback that
the race's retried registrations must not undo."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlops_tasks import registry, tracking
from mlops_tasks.config import PipelineConfig, load_config
from tests.conftest import EXAMPLE_CONFIG
from tests.integration.faults.conftest import RestartableMlflow
from tests.integration.faults.stage_runner import alias, decision, exported_run

pytestmark = pytest.mark.services


@pytest.fixture
def cfg() -> PipelineConfig:
    base = load_config(EXAMPLE_CONFIG)
    return base.model_copy(
        update={
            "mlflow": base.mlflow.model_copy(update={"registered_model": f"fault_{uuid.uuid4().hex[:8]}"})
        }
    )


def model_versions(tracking_uri: str, cfg: PipelineConfig) -> dict[str, str]:
    """version -> run id of every version of the model."""
    found = tracking.client(tracking_uri).search_model_versions(f"name='{cfg.registered_model_name}'")
    return {v.version: v.run_id for v in found}


def test_mlflow_down_at_registration_fails_fast_then_retry_promotes_exactly_once(
    pg_mlflow: RestartableMlflow, cfg: PipelineConfig, tmp_path: Path
) -> None:
    run_id = exported_run(pg_mlflow.url, tmp_path)
    pg_mlflow.stop()
    try:
        started = time.monotonic()
        with pytest.raises(registry.RegistryUnavailable, match="not reachable"):
            registry.register(
                cfg, run_id, tracking_uri=pg_mlflow.url, decision=decision(0.7), data_version="dv"
            )
        failed_after = time.monotonic() - started
    finally:
        pg_mlflow.start()
    assert registry.champion_info(cfg, tracking_uri=pg_mlflow.url) is None  # nothing half-registered

    first = registry.register(
        cfg, run_id, tracking_uri=pg_mlflow.url, decision=decision(0.7), data_version="dv"
    )
    again = registry.register(
        cfg, run_id, tracking_uri=pg_mlflow.url, decision=decision(0.7), data_version="dv"
    )

    versions = tracking.client(pg_mlflow.url).search_model_versions(f"name='{cfg.registered_model_name}'")
    assert failed_after < 60
    assert [v.version for v in versions] == ["1"]
    assert first["promoted"] and again["promoted"] and again["version"] == "1"
    assert registry.champion_info(cfg, tracking_uri=pg_mlflow.url)["version"] == "1"


def test_eight_concurrent_registrations_give_unique_versions_and_the_best_gated_champion(
    pg_mlflow: RestartableMlflow, cfg: PipelineConfig, tmp_path: Path
) -> None:
    aucs = [0.61, 0.74, 0.66, 0.79, 0.63, 0.71, 0.68, 0.65]
    runs = [exported_run(pg_mlflow.url, tmp_path) for _ in aucs]

    def register(i: int) -> dict:
        return registry.register(
            cfg, runs[i], tracking_uri=pg_mlflow.url, decision=decision(aucs[i]), data_version=f"dv{i}"
        )

    with ThreadPoolExecutor(len(aucs)) as pool:
        results = list(pool.map(register, range(len(aucs))))

    versions = tracking.client(pg_mlflow.url).search_model_versions(f"name='{cfg.registered_model_name}'")
    best = aucs.index(max(aucs))
    assert sorted(int(v.version) for v in versions) == list(range(1, len(aucs) + 1))
    assert len({r["version"] for r in results}) == len(aucs)
    champion = registry.champion_info(cfg, tracking_uri=pg_mlflow.url)
    assert champion["version"] == results[best]["version"]
    assert {v.run_id for v in versions if v.version == champion["version"]} == {runs[best]}


# A registrar process: imports the registry, says "ready", then registers one job per stdin line and
# answers with the result as one JSON line. The test writes a round's jobs to all processes only once
# every one of them is ready and the previous round has answered: a barrier across OS processes.
REGISTRAR = """
import json, sys
from mlops_tasks import registry
from mlops_tasks.config import PipelineConfig
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    result = registry.register(
        PipelineConfig.model_validate(job["cfg"]), job["run_id"], tracking_uri=job["tracking_uri"],
        decision=job["decision"], data_version=job["data_version"],
    )
    print(json.dumps(result), flush=True)
"""


def answer(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    assert line, f"registrar {proc.pid} died: {proc.stderr.read()[-3000:]}"
    return line.strip()


@pytest.mark.timeout(300)
def test_eight_registrar_processes_racing_give_unique_versions_and_the_best_gated_champion(
    pg_mlflow: RestartableMlflow, cfg: PipelineConfig, tmp_path: Path
) -> None:
    """Each round races 8 processes on a model of its own; one of them was rejected by the gate with the
    best metric of all (it must never serve). Odd rounds race against an existing champion v1."""
    rounds = [
        [0.61, 0.74, 0.66, 0.79, 0.63, 0.71, 0.68, 0.65],
        [0.72, 0.64, 0.81, 0.69, 0.77, 0.62, 0.70, 0.66],
        [0.68, 0.83, 0.61, 0.75, 0.66, 0.79, 0.71, 0.64],
        [0.76, 0.67, 0.63, 0.71, 0.69, 0.65, 0.62, 0.85],
    ]
    rejected = 5  # gets roc_auc 0.99 and a "reject" decision in every round
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTRAR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        assert [answer(p) for p in procs] == ["ready"] * 8
        for r, aucs in enumerate(rounds):
            round_cfg = cfg.model_copy(
                update={
                    "mlflow": cfg.mlflow.model_copy(
                        update={"registered_model": f"{cfg.registered_model_name}_{r}"}
                    )
                }
            )
            baseline = None
            if r % 2:
                seed = exported_run(pg_mlflow.url, tmp_path)
                baseline = registry.register(
                    round_cfg, seed, tracking_uri=pg_mlflow.url, decision=decision(0.6), data_version="seed"
                )["version"]
            runs = [exported_run(pg_mlflow.url, tmp_path) for _ in aucs]
            jobs = [
                {
                    "cfg": round_cfg.model_dump(mode="json"),
                    "run_id": run_id,
                    "tracking_uri": pg_mlflow.url,
                    "decision": decision(0.99, baseline, promote=False)
                    if i == rejected
                    else decision(auc, baseline),
                    "data_version": f"dv{i}",
                }
                for i, (run_id, auc) in enumerate(zip(runs, aucs, strict=True))
            ]
            for proc, job in zip(procs, jobs, strict=True):
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
            results = [json.loads(answer(p)) for p in procs]

            best = max((i for i in range(8) if i != rejected), key=lambda i: aucs[i])
            versions = model_versions(pg_mlflow.url, round_cfg)
            assert len(versions) == 8 + (baseline is not None)
            assert sorted({r["version"] for r in results}) == sorted(v for v in versions if v != baseline)
            assert {versions[r["version"]] for r in results} == set(runs)  # each run got its own version
            champion = alias(round_cfg, registry.CHAMPION, pg_mlflow.url)
            assert versions[champion] == runs[best], f"round {r}: champion v{champion}, results {results}"
            assert alias(round_cfg, registry.PREVIOUS_CHAMPION, pg_mlflow.url) == baseline
            assert results[best]["promoted"] and results[best]["champion_version"] == champion
            assert not results[rejected]["promoted"]
            assert alias(round_cfg, registry.CHALLENGER, pg_mlflow.url) == results[rejected]["version"]
    finally:
        for proc in procs:
            proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_rollback_after_a_race_is_not_undone_by_the_race_s_retried_registrations(
    pg_mlflow: RestartableMlflow, cfg: PipelineConfig, tmp_path: Path
) -> None:
    url = pg_mlflow.url
    first = exported_run(url, tmp_path)
    assert (
        registry.register(cfg, first, tracking_uri=url, decision=decision(0.6), data_version="dv")["version"]
        == "1"
    )
    aucs = [0.66, 0.72, 0.69]
    racers = [exported_run(url, tmp_path) for _ in aucs]

    def register(i: int) -> dict:
        return registry.register(
            cfg, racers[i], tracking_uri=url, decision=decision(aucs[i], "1"), data_version="dv"
        )

    with ThreadPoolExecutor(len(aucs)) as pool:
        results = list(pool.map(register, range(len(aucs))))
    assert alias(cfg, registry.CHAMPION, url) == results[1]["version"]

    rolled = registry.rollback(cfg, tracking_uri=url)
    assert (rolled["champion_version"], rolled["rolled_back_version"]) == ("1", results[1]["version"])
    # Airflow retries of the race's register tasks (winner and losers) reuse their versions and change nothing.
    again = [register(i) for i in range(len(aucs))]
    assert [a["version"] for a in again] == [r["version"] for r in results]
    assert not any(a["promoted"] for a in again)
    assert alias(cfg, registry.CHAMPION, url) == "1" and alias(cfg, registry.PREVIOUS_CHAMPION, url) is None

    # A challenger gated against the restored champion after the rollback is promoted as usual.
    later = exported_run(url, tmp_path)
    result = registry.register(cfg, later, tracking_uri=url, decision=decision(0.64, "1"), data_version="dv")
    assert result["promoted"] and result["previous_champion_version"] == "1"
    assert alias(cfg, registry.CHAMPION, url) == result["version"] == "5"
