"""Registry faults on MLflow with a PostgreSQL store: the tracking server down at registration, and
eight registrations of one model racing each other."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlops_tasks import registry, tracking
from mlops_tasks.config import PipelineConfig, load_config
from tests.conftest import EXAMPLE_CONFIG
from tests.integration.faults.conftest import RestartableMlflow

pytestmark = pytest.mark.services


@pytest.fixture
def cfg() -> PipelineConfig:
    base = load_config(EXAMPLE_CONFIG)
    return base.model_copy(
        update={
            "mlflow": base.mlflow.model_copy(update={"registered_model": f"fault_{uuid.uuid4().hex[:8]}"})
        }
    )


def exported_run(tracking_uri: str, tmp_path: Path) -> str:
    """An MLflow run holding a model/model.onnx artifact (the registry checks only its presence)."""
    client = tracking.client(tracking_uri)
    experiment = client.get_experiment_by_name("faults") or client.get_experiment(
        client.create_experiment("faults")
    )
    run = client.create_run(experiment.experiment_id)
    model = tmp_path / run.info.run_id / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx bytes of " + run.info.run_id.encode())
    client.log_artifact(run.info.run_id, str(model), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def decision(auc: float) -> dict:
    return {
        "promote": True,
        "reason": f"gate passed with roc_auc {auc}",
        "primary_metric": "roc_auc",
        "challenger": {"metrics": {"roc_auc": auc}},
        "champion_version": None,
        "floor_failed": False,
    }


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
