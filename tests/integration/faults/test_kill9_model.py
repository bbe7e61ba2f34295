"""``kill -9`` of the model-stage tasks (train, export, gate, register) at chosen points, then the retry.

Each stage runs as its own process against the MLflow server of the faults package (PostgreSQL store,
artifacts in the S3 endpoint) through a :class:`HoldingProxy`, which stalls the request that marks the
kill point; the retry runs in the test process, as Airflow's next attempt would.

"Byte-identical" for the model stage: a run id, its timestamps and metric times are new on every
attempt; the model is not. The retry's ``model/weights.pt``, ``model/model_spec.json`` and exported
``model/model.onnx`` are the bytes of a clean run's, and so is its per-epoch ``val_loss``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlops_tasks import registry, tracking
from mlops_tasks.versioning import create_data_version
from tests.conftest import make_store
from tests.integration.faults.conftest import RestartableMlflow
from tests.integration.faults.stage_runner import (
    AIRFLOW_RUN_ID,
    Hold,
    Request,
    decision,
    holds_nth_put,
    kill_behind_proxy,
    model_config,
    run_stage,
    start_stage,
)
from tests.integration.onnx_fixtures import publish_curated
from tests.model_frames import example_rows

pytestmark = pytest.mark.services

DAYS = [dt.date(2013, 2, 1) + dt.timedelta(days=i) for i in range(6)]
MODEL_FILES = ("weights.pt", "model_spec.json")


@dataclass(frozen=True)
class Data:
    endpoint: str
    bucket: str
    version: str


@pytest.fixture(scope="module")
def data(s3_endpoint: str) -> Data:
    """Six curated days of the example (2,000 flights) frozen as a data version, as the DAG's
    DataVersionOperator leaves them for training."""
    store, cfg = make_store(s3_endpoint), model_config("data")
    rows = example_rows(DAYS[0], DAYS[-1], max_rows=2000)
    for day, frame in rows.groupby("_day"):
        publish_curated(store, cfg, day, [frame], row_group_size=10_000)
    version = create_data_version(store, cfg, DAYS)["data_version"]
    return Data(s3_endpoint, store.bucket, version)


def stage(step: str, data: Data, tracking_uri: str, name: str, **args: Any) -> dict[str, Any]:
    """The stage in the test process (clean runs and retries)."""
    store = make_store(data.endpoint, data.bucket)
    return run_stage(step, store, tracking_uri=tracking_uri, name=name, data_version=data.version, **args)


def kill_at(hold: Hold, step: str, data: Data, mlflow_url: str, name: str, **args: Any) -> Request:
    """Run the stage as a process talking to MLflow through a proxy; ``kill -9`` it once ``hold``
    stalled a request. Returns that request."""
    return kill_behind_proxy(
        mlflow_url,
        hold,
        lambda url: start_stage(
            step, data.endpoint, data.bucket, tracking_uri=url, name=name, data_version=data.version, **args
        ),
    )


def model_artifacts(tracking_uri: str, run_id: str) -> dict[str, bytes]:
    client = tracking.client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        return {
            Path(a.path).name: Path(client.download_artifacts(run_id, a.path, tmp)).read_bytes()
            for a in client.list_artifacts(run_id, "model")
        }


def run_with_model(tracking_uri: str, name: str, files: dict[str, bytes]) -> str:
    """A finished run of experiment ``name`` holding ``files`` under ``model/`` (a trained or exported
    run without training it again)."""
    client = tracking.client(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment(name))
    with tempfile.TemporaryDirectory() as tmp:
        for file, content in files.items():
            (Path(tmp) / file).write_bytes(content)
        client.log_artifacts(run.info.run_id, tmp, "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def val_losses(tracking_uri: str, run_id: str) -> list[tuple[int, float]]:
    history = tracking.client(tracking_uri).get_metric_history(run_id, "val_loss")
    return sorted((m.step, m.value) for m in history)


def assert_registry_refuses(tracking_uri: str, name: str, run_id: str) -> None:
    """The register task would fail on the run: there is no whole ONNX model to register."""
    with pytest.raises(registry.RegistryError, match="has no model/model.onnx"):
        registry.register(
            model_config(name),
            run_id,
            tracking_uri=tracking_uri,
            decision=decision(0.7, None),
            data_version="dv",
        )


@pytest.fixture(scope="module")
def clean(pg_mlflow: RestartableMlflow, data: Data) -> dict[str, Any]:
    """Train + export without faults: the reference bytes."""
    name = f"kill9_clean_{uuid.uuid4().hex[:8]}"
    trained = stage("train", data, pg_mlflow.url, name)
    stage("export", data, pg_mlflow.url, name, run_id=trained["run_id"])
    return {
        "files": model_artifacts(pg_mlflow.url, trained["run_id"]),
        "val_loss": val_losses(pg_mlflow.url, trained["run_id"]),
        "best_epoch": trained["best_epoch"],
    }


@pytest.fixture
def name() -> str:
    return f"kill9_{uuid.uuid4().hex[:8]}"


def holds_epoch_2_metrics(request: Request) -> int | None:
    """The log-batch of epoch 2's metrics: epoch 1 is logged, epoch 2 trained, nothing saved."""
    if request.path.endswith("/runs/log-batch"):
        if any(int(m.get("step", 0)) == 2 for m in request.json().get("metrics", [])):
            return 0
    return None


@pytest.mark.parametrize("kill_point", ["after-epoch-1", "model-upload"])
def test_training_killed_then_retried_exports_the_clean_model_bytes(
    pg_mlflow: RestartableMlflow, data: Data, clean: dict[str, Any], name: str, kill_point: str
) -> None:
    # the model-upload point: the 2nd of the run's two model files (half a model in the run)
    second_model_file = holds_nth_put(2, lambda path: "/artifacts/model/" in path)
    hold = holds_epoch_2_metrics if kill_point == "after-epoch-1" else second_model_file
    kill_at(hold, "train", data, pg_mlflow.url, name)

    client = tracking.client(pg_mlflow.url)
    experiment = client.get_experiment_by_name(name).experiment_id
    (killed,) = client.search_runs([experiment])
    assert killed.info.run_name == f"{model_config(name).name}-{AIRFLOW_RUN_ID}"
    left = model_artifacts(pg_mlflow.url, killed.info.run_id)
    # What the killed process got to log matches the clean run (determinism across processes).
    epochs = 1 if kill_point == "after-epoch-1" else len(clean["val_loss"])
    assert val_losses(pg_mlflow.url, killed.info.run_id) == clean["val_loss"][:epochs]
    if kill_point == "after-epoch-1":
        assert left == {}
    else:
        assert len(left) == 1 and set(left) < set(MODEL_FILES)  # half a model ...
        assert left.items() <= clean["files"].items()
    assert_registry_refuses(pg_mlflow.url, name, killed.info.run_id)  # ... that nothing can register

    trained = stage("train", data, pg_mlflow.url, name)  # the retry
    exported = stage("export", data, pg_mlflow.url, name, run_id=trained["run_id"])

    assert model_artifacts(pg_mlflow.url, trained["run_id"]) == clean["files"]
    assert exported["onnx_sha256"] == hashlib.sha256(clean["files"]["model.onnx"]).hexdigest()
    assert val_losses(pg_mlflow.url, trained["run_id"]) == clean["val_loss"]
    assert trained["best_epoch"] == clean["best_epoch"]
    runs = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    assert runs == {killed.info.run_id: "KILLED", trained["run_id"]: "FINISHED"}


def holds_onnx_upload_halfway(request: Request) -> int | None:
    if request.method == "PUT" and request.path.endswith("/model/model.onnx"):
        return len(request.body or b"") // 2
    return None


def holds_export_record(request: Request) -> int | None:
    """The log-batch after the upload: parity metrics and the ``onnx_sha256`` tag."""
    return 0 if request.path.endswith("/runs/log-batch") else None


@pytest.mark.parametrize("kill_point", ["mid-upload", "before-record"])
def test_export_killed_then_retried_logs_the_clean_onnx(
    pg_mlflow: RestartableMlflow, data: Data, clean: dict[str, Any], name: str, kill_point: str
) -> None:
    trained = {f: clean["files"][f] for f in MODEL_FILES}
    run_id = run_with_model(pg_mlflow.url, name, trained)
    hold = holds_onnx_upload_halfway if kill_point == "mid-upload" else holds_export_record
    held = kill_at(hold, "export", data, pg_mlflow.url, name, run_id=run_id)

    client = tracking.client(pg_mlflow.url)
    assert "onnx_sha256" not in client.get_run(run_id).data.tags
    left = model_artifacts(pg_mlflow.url, run_id)
    if kill_point == "mid-upload":
        assert held.body == clean["files"]["model.onnx"]  # half of these bytes reached the server,
        assert left == trained  # which kept none of them
        assert_registry_refuses(pg_mlflow.url, name, run_id)
    else:
        assert left == clean["files"]  # the upload is one PUT: the model is whole

    exported = stage("export", data, pg_mlflow.url, name, run_id=run_id)  # the retry

    assert model_artifacts(pg_mlflow.url, run_id) == clean["files"]
    assert client.get_run(run_id).data.tags["onnx_sha256"] == exported["onnx_sha256"]
    assert exported["onnx_sha256"] == hashlib.sha256(clean["files"]["model.onnx"]).hexdigest()


def holds_gate_record(request: Request) -> int | None:
    """The log-batch of the gate's eval metrics and decision tags: its reports are in S3 already."""
    return 0 if request.path.endswith("/runs/log-batch") else None


def holds_gate_report_upload(request: Request) -> int | None:
    """The upload of the gate's reports to the run, after its metrics and tags were logged."""
    return 0 if request.method == "PUT" and "/artifacts/gate/" in request.path else None


def judged(decision: dict[str, Any]) -> dict[str, Any]:
    """What a gate decided, without what differs between two evaluations of the same model: the run
    it was logged to (and the reports named after it) and the measured latencies."""

    def assessed(model: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in model.items() if k != "p95_batch_latency_ms"}

    return {
        "promote": decision["promote"],
        "reason": decision["reason"],
        "checks": [(c["name"], c["passed"]) for c in decision["checks"]],
        "challenger": {k: v for k, v in assessed(decision["challenger"]).items() if k != "run_id"},
        "champion": assessed(decision["champion"]),
    }


@pytest.mark.parametrize("kill_point", ["before-record", "report-upload"])
def test_gate_killed_then_retried_decides_the_same_with_one_point_per_metric(
    pg_mlflow: RestartableMlflow, data: Data, clean: dict[str, Any], name: str, kill_point: str
) -> None:
    """Killed before the decision reached the run, or while its reports are uploaded to the run after
    its metrics and tags: the registry is untouched (the gate only reads it), the retry decides as a
    clean gate of the same model does, and the run's history has one point per eval metric."""
    url = pg_mlflow.url
    champion_run = run_with_model(url, name, {"model.onnx": clean["files"]["model.onnx"]})
    champion = stage("register", data, url, name, run_id=champion_run, decision=decision(0.7, None))[
        "version"
    ]
    expected = stage("gate", data, url, name, run_id=run_with_model(url, name, clean["files"]))
    run_id = run_with_model(url, name, clean["files"])
    hold = holds_gate_record if kill_point == "before-record" else holds_gate_report_upload
    kill_at(hold, "gate", data, url, name, run_id=run_id)

    client = tracking.client(url)
    killed = client.get_run(run_id).data
    if kill_point == "before-record":
        assert "gate_decision" not in killed.tags and not any(k.startswith("eval_") for k in killed.metrics)
    else:
        assert killed.tags["gate_decision"] == ("promote" if expected["promote"] else "reject")
    assert registry.champion_info(model_config(name), tracking_uri=url)["version"] == champion

    retried = stage("gate", data, url, name, run_id=run_id)

    assert judged(retried) == judged(expected) and expected["champion"]["version"] == champion
    metrics = client.get_run(run_id).data.metrics
    eval_metrics = [k for k in metrics if k.startswith("eval_") and "latency" not in k]
    assert {f"eval_{k}" for k, v in expected["challenger"]["metrics"].items() if v is not None} == set(
        eval_metrics
    )
    assert all(len(client.get_metric_history(run_id, k)) == 1 for k in eval_metrics)
    with tempfile.TemporaryDirectory() as tmp:
        compared = retried["report_json_uri"].split("/")[-2]  # vs-none: no champion yet
        logged = Path(client.download_artifacts(run_id, f"gate/{compared}/gate.json", tmp)).read_bytes()
    store = make_store(data.endpoint, data.bucket)
    assert json.loads(logged) == json.loads(store.get_bytes(store.key_of(retried["report_json_uri"])))


def holds_first_version_tag(request: Request) -> int | None:
    """The first tag of the new version: it exists, untagged, no alias points to it."""
    return 0 if request.path.endswith("/model-versions/set-tag") else None


def is_champion_move(request: Request) -> bool:
    return request.path.endswith("/registered-models/alias") and request.json().get("alias") == "champion"


def holds_champion_move(request: Request) -> int | None:
    """``champion`` is the last alias moved: the version is registered and tagged, and
    ``previous_champion`` is already set."""
    return 0 if request.method == "POST" and is_champion_move(request) else None


def holds_after_champion_move() -> Hold:
    """The first request after ``champion`` moved (the move itself went through)."""
    moved: list[Request] = []

    def hold(request: Request) -> int | None:
        if moved:
            return 0
        if request.method == "POST" and is_champion_move(request):
            moved.append(request)
        return None

    return hold


@pytest.mark.parametrize("kill_point", ["version-created", "before-champion-move", "after-champion-move"])
def test_registration_killed_then_retried_has_one_version_and_a_consistent_champion(
    pg_mlflow: RestartableMlflow, data: Data, clean: dict[str, Any], name: str, kill_point: str
) -> None:
    cfg, url = model_config(name), pg_mlflow.url
    exported = {"model.onnx": clean["files"]["model.onnx"]}
    first = None
    if kill_point != "version-created":  # a champion to replace
        run = run_with_model(url, name, exported)
        first = stage("register", data, url, name, run_id=run, decision=decision(0.7, None))["version"]
    run_id = run_with_model(url, name, exported)
    hold = {
        "version-created": holds_first_version_tag,
        "before-champion-move": holds_champion_move,
        "after-champion-move": holds_after_champion_move(),
    }[kill_point]
    kill_at(hold, "register", data, url, name, run_id=run_id, decision=decision(0.72, first))

    client = tracking.client(url)
    (version,) = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    served = registry.champion_info(cfg, tracking_uri=url)
    expected_served = version.version if kill_point == "after-champion-move" else first
    assert (served and served["version"]) == expected_served  # the old champion, or the new one whole
    if kill_point == "version-created":
        assert not version.tags  # registered, not yet gated: nothing reads it
    if kill_point == "before-champion-move":
        previous = registry.alias_info(cfg, registry.PREVIOUS_CHAMPION, tracking_uri=url)
        assert previous["version"] == first  # moved first: both aliases serve the old champion

    result = stage("register", data, url, name, run_id=run_id, decision=decision(0.72, first))  # retry

    (again,) = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    assert again.version == version.version == result["version"]
    assert len(client.search_model_versions(f"name='{name}'")) == (1 if first is None else 2)
    champion = registry.champion_info(cfg, tracking_uri=url)
    assert champion["version"] == result["champion_version"] == version.version and result["promoted"]
    assert champion["run_id"] == run_id and champion["gate_decision"] == "promote"
    previous = registry.alias_info(cfg, registry.PREVIOUS_CHAMPION, tracking_uri=url)
    assert (previous and previous["version"]) == first == result["previous_champion_version"]
