"""Train -> export -> gate -> lineage against the real MLflow server (artifacts in the moto S3 endpoint)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tempfile
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from mlops_tasks import evaluation, export, lineage, registry, tracking, training
from mlops_tasks.config import FeatureSpec, GateSpec, PipelineConfig, PositiveWhen, TargetSpec, load_config
from mlops_tasks.features import (
    CATEGORICAL_CODES_INPUT,
    CATEGORICAL_VALUES_INPUT,
    META_CLASSES,
    META_CONTRACT,
    META_FEATURES,
    META_TASK,
    NUMERIC_INPUT,
    onnx_inputs,
)
from mlops_tasks.storage import ObjectStore
from tests.conftest import EXAMPLE_CONFIG, tune
from tests.integration.faults.stage_runner import decision
from tests.model_frames import example_rows, small_config

DAY = dt.date(2013, 2, 14)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return example_rows(dt.date(2013, 1, 1), DAY, max_rows=6000)


@pytest.fixture(scope="module")
def split(rows: pd.DataFrame, binary_cfg: PipelineConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    return training.split_window(rows, binary_cfg)


@pytest.fixture(scope="module")
def binary_cfg() -> PipelineConfig:
    return small_config(load_config(EXAMPLE_CONFIG), f"stage_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def trained(binary_cfg: PipelineConfig, split: tuple, mlflow_server: str) -> dict:
    result = training.train(
        binary_cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test"
    )
    result["export"] = export.export_run(
        binary_cfg, result["run_id"], tracking_uri=mlflow_server, sample_frame=split[1]
    )
    return result


def history(mlflow_server: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = tracking.client(mlflow_server)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_training_is_deterministic_for_a_fixed_seed(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str, tmp_path: Path
) -> None:
    again = training.train(
        binary_cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test"
    )
    assert again["run_id"] != trained["run_id"]
    assert again["best_val_loss"] == trained["best_val_loss"] and again["best_epoch"] == trained["best_epoch"]
    assert history(mlflow_server, again["run_id"], "val_loss") == history(
        mlflow_server, trained["run_id"], "val_loss"
    )
    first, _ = training.load_run_model(mlflow_server, trained["run_id"], tmp_path / "a")
    second, _ = training.load_run_model(mlflow_server, again["run_id"], tmp_path / "b")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_retry_after_the_run_finished_reuses_it_and_a_changed_config_trains_again(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str
) -> None:
    """The first attempt finished its run, then the task failed (e.g. its worker was lost)."""
    run_name = f"{binary_cfg.name}-manual__{uuid.uuid4().hex[:8]}"

    def attempt(cfg: PipelineConfig) -> dict:
        return training.train(
            cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test", run_name=run_name
        )

    first = attempt(binary_cfg)
    retry = attempt(binary_cfg)
    cleared_after_a_config_change = attempt(tune(binary_cfg, "model", {"seed": 8}))
    # Same rows, network and params, other labels: late now means over an hour, not 15 minutes.
    late_rule = binary_cfg.target.model_copy(update={"positive_when": PositiveWhen(greater_than=60)})
    cleared_after_a_label_change = attempt(binary_cfg.model_copy(update={"target": late_rule}))

    summary = ("run_id", "experiment_id", "epochs_run", "best_epoch", "best_val_loss", "train_rows")
    assert {k: retry[k] for k in summary} == {k: first[k] for k in summary}
    assert cleared_after_a_config_change["run_id"] != first["run_id"]
    assert cleared_after_a_label_change["run_id"] not in (
        first["run_id"],
        cleared_after_a_config_change["run_id"],
    )
    client = tracking.client(mlflow_server)
    assert client.get_run(cleared_after_a_label_change["run_id"]).data.params["target.positive_when"] == str(
        {"greater_than": 60.0}
    )
    runs = client.search_runs([first["experiment_id"]], f"attributes.run_name = '{run_name}'")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3


def test_training_into_a_deleted_experiment_says_how_to_restore_it(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str
) -> None:
    cfg = binary_cfg.model_copy(
        update={
            "mlflow": binary_cfg.mlflow.model_copy(update={"experiment": f"deleted_{uuid.uuid4().hex[:8]}"})
        }
    )
    client = tracking.client(mlflow_server)
    experiment_id = client.create_experiment(cfg.experiment_name)
    client.delete_experiment(experiment_id)
    with pytest.raises(
        training.TrainingDataError, match=f"experiments restore --experiment-id {experiment_id}"
    ):
        training.train(cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test")


def test_the_out_of_vocabulary_slot_is_trained_so_unseen_values_score_like_known_ones(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str, tmp_path: Path
) -> None:
    """The example's training rows have no missing categoricals: only values hidden as unknown
    (model.unknown_category_rate) train the slot an unseen value maps to."""
    assert binary_cfg.model.weight_decay == 0.0  # else AdamW shrinks even an untrained slot
    none_hidden = tune(binary_cfg, "model", {"unknown_category_rate": 0.0})
    bare = training.train(
        none_hidden, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test"
    )

    def oov_slots(run_id: str, cfg: PipelineConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        net, spec = training.load_run_model(mlflow_server, run_id, tmp_path / run_id)
        torch.manual_seed(cfg.model.seed)  # as training starts: the initial weights
        initial = training.TabularNet(spec)
        return [e.weight[0] for e in net.embeddings], [e.weight[0] for e in initial.embeddings]

    for slot, start in zip(*oov_slots(bare["run_id"], none_hidden), strict=True):
        assert torch.equal(slot, start)  # untrained: an unseen value lands on a random vector
    for slot, start in zip(*oov_slots(trained["run_id"], binary_cfg), strict=True):
        assert not torch.equal(slot, start)


def test_training_run_records_params_per_epoch_metrics_tags_and_json_spec(
    trained: dict, mlflow_server: str
) -> None:
    run = tracking.client(mlflow_server).get_run(trained["run_id"])
    assert run.data.tags["data_version"] == "dv1" and run.data.tags["trigger"] == "test"
    assert run.data.tags["mlops_tasks_version"] and run.data.params["model.hidden_layers"] == "[32, 16]"
    steps = [step for step, _ in history(mlflow_server, trained["run_id"], "val_roc_auc")]
    assert steps == list(range(1, trained["epochs_run"] + 1))
    artifacts = {a.path for a in tracking.client(mlflow_server).list_artifacts(trained["run_id"], "model")}
    assert artifacts == {tracking.ONNX_ARTIFACT, tracking.WEIGHTS_ARTIFACT, tracking.SPEC_ARTIFACT}


def test_exported_onnx_follows_the_feature_contract(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str, tmp_path: Path
) -> None:
    path = tracking.download_run_artifact(mlflow_server, trained["run_id"], tracking.ONNX_ARTIFACT, tmp_path)
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[META_FEATURES]) == binary_cfg.features.model_dump()
    assert meta[META_TASK] == "binary" and json.loads(meta[META_CLASSES]) == ["0", "1"]
    assert meta[META_CONTRACT] == "2"
    # categoricals go in dictionary-encoded: no input carries one string per row
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input} == {
        NUMERIC_INPUT: onnx.TensorProto.FLOAT,
        CATEGORICAL_VALUES_INPUT: onnx.TensorProto.STRING,
        CATEGORICAL_CODES_INPUT: onnx.TensorProto.INT64,
    }
    assert trained["export"]["parity_max_abs_diff"] <= binary_cfg.export.parity_tolerance
    probe = split[1].head(4).copy()
    probe["carrier"] = ["ZZ", None, "UA", "UA"]  # unseen and missing categories are valid input
    probe["temp"] = np.nan
    session = ort.InferenceSession(str(path))
    score = session.run(["score"], onnx_inputs(probe, binary_cfg.features))[0]
    assert score.shape == (4,) and score.dtype == np.float32 and ((score > 0) & (score < 1)).all()


def test_export_is_byte_identical_on_rerun(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str
) -> None:
    again = export.export_run(
        binary_cfg, trained["run_id"], tracking_uri=mlflow_server, sample_frame=split[1]
    )
    assert again["onnx_sha256"] == trained["export"]["onnx_sha256"]


def test_parity_failure_raises_and_leaves_nothing_to_register(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str
) -> None:
    strict = tune(binary_cfg, "export", {"parity_tolerance": 0.0})
    run = training.train(strict, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test")
    with pytest.raises(export.ParityError, match="exceeds export.parity_tolerance 0"):
        export.export_run(strict, run["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    decision = {"promote": True, "reason": "r", "primary_metric": "roc_auc", "challenger": {"metrics": {}}}
    with pytest.raises(registry.RegistryError, match="has no model/model.onnx"):
        registry.register(
            strict, run["run_id"], tracking_uri=mlflow_server, decision=decision, data_version="dv1"
        )


def test_a_tampered_onnx_graph_fails_the_parity_check(
    trained: dict, split: tuple, mlflow_server: str, tmp_path: Path
) -> None:
    net, spec = training.load_run_model(mlflow_server, trained["run_id"], tmp_path)
    model = export.build_onnx(net, spec)
    bias = next(t for t in model.graph.initializer if t.name == "b0")
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.5, "b0"))
    with pytest.raises(export.ParityError):
        export.check_parity(model.SerializeToString(), net, spec, split[1].head(200), 1e-4)


def test_constant_feature_and_all_nan_column_train_and_export_and_are_ignored_when_they_vary(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str, tmp_path: Path
) -> None:
    train_rows = split[0].assign(wind_gust=np.nan, distance=500.0)
    run = training.train(
        binary_cfg, train_rows, tracking_uri=mlflow_server, data_version="dv1", trigger="test"
    )
    exported = export.export_run(binary_cfg, run["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    assert run["epochs_run"] >= 1 and exported["parity_max_abs_diff"] <= binary_cfg.export.parity_tolerance
    # The gust feed comes back, distances vary again: the served model never learned from them.
    path = tracking.download_run_artifact(mlflow_server, run["run_id"], tracking.ONNX_ARTIFACT, tmp_path)
    session = ort.InferenceSession(str(path))
    rows = split[1].head(300)

    def scores(frame: pd.DataFrame) -> np.ndarray:
        return session.run(["score"], onnx_inputs(frame, binary_cfg.features))[0]

    np.testing.assert_array_equal(scores(rows), scores(rows.assign(wind_gust=np.nan, distance=500.0)))


def test_an_infinite_feature_value_is_trained_and_served_as_missing(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str, store: ObjectStore
) -> None:
    """One bad sensor reading made every scaled row NaN: best epoch 0, a FINISHED run, NaN scores."""

    train_rows = split[0].copy()
    train_rows.loc[train_rows.index[10], "wind_gust"] = np.inf
    run = training.train(
        binary_cfg, train_rows, tracking_uri=mlflow_server, data_version="dv1", trigger="test"
    )
    exported = export.export_run(binary_cfg, run["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    eval_rows = split[1].copy()
    eval_rows.loc[eval_rows.index[:5], "wind_gust"] = [np.inf, -np.inf, np.inf, 1e300, -1e300]
    cfg = binary_cfg.model_copy(update={"gate": GateSpec(latency_batch_rows=256)})
    decision = evaluation.evaluate_and_gate(
        cfg, run["run_id"], eval_rows, tracking_uri=mlflow_server, store=store, day=DAY
    )

    assert run["best_epoch"] >= 1 and np.isfinite(run["best_val_loss"])
    assert exported["parity_max_abs_diff"] <= binary_cfg.export.parity_tolerance
    assert decision["challenger"]["metrics"]["roc_auc"] is not None


def test_a_class_only_the_validation_split_holds_does_not_fail_multiclass_training(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str
) -> None:
    """A carrier with one flight in the window, drawn into the seeded validation split: its class
    index was past the model's outputs (IndexError, a FAILED run on every retry)."""
    cfg = small_config(
        binary_cfg,
        f"mc_{uuid.uuid4().hex[:8]}",
        target=TargetSpec(task="multiclass", column="carrier"),
        features=FeatureSpec(numeric=["distance", "hour", "temp"], categorical=["origin", "dest"]),
    )
    train_rows = split[0].reset_index(drop=True)
    rng = np.random.default_rng(cfg.model.seed)
    held = training.validation_split(train_rows, cfg.training.validation_fraction, rng)[0]
    train_rows.loc[held[0], "carrier"] = "ZZ"

    run = training.train(cfg, train_rows, tracking_uri=mlflow_server, data_version="dv1", trigger="test")

    finished = tracking.client(mlflow_server).get_run(run["run_id"])
    assert finished.info.status == "FINISHED" and "ZZ" not in finished.data.params["classes"]
    assert int(finished.data.params["val_rows"]) == len(held) - 1


def test_quantized_export_is_kept_only_within_the_metric_tolerance(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str
) -> None:
    cfg = tune(binary_cfg, "export", {"quantize": True, "quantize_metric_tolerance": 1.0})
    # A run of its own: a run's ONNX model is written once. Training is deterministic, so its fp32
    # export would be byte-identical to the shared run's.
    run = training.train(cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test")
    result = export.export_run(cfg, run["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    assert result["quantized"] is True and result["onnx_sha256"] != trained["export"]["onnx_sha256"]
    # The file served tracks torch, every feature included: quantised with the features scaled as in
    # training, not with the first layer's inputs in their raw ranges (distance ~1e3, precip ~0.1)
    diff = result["quantization"]["int8_max_abs_diff"]
    assert 0 < diff <= cfg.export.quantize_score_tolerance
    # the parity reported and logged is the served file's, the fp32 graph's beside it
    assert (result["parity_max_abs_diff"], result["fp32_parity_max_abs_diff"] < diff) == (diff, True)
    logged = tracking.client(mlflow_server).get_run(run["run_id"]).data.metrics
    assert (logged["parity_max_abs_diff"], logged["fp32_parity_max_abs_diff"]) == (
        pytest.approx(diff),
        pytest.approx(result["fp32_parity_max_abs_diff"]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        net, spec = training.load_run_model(mlflow_server, run["run_id"], Path(tmp) / "run")
        served = evaluation.OnnxModel(
            tracking.download_run_artifact(mlflow_server, run["run_id"], tracking.ONNX_ARTIFACT, Path(tmp)),
            cfg,
        )
        rows = split[1].head(2000)
        np.testing.assert_allclose(served.score(rows)[0], training.predict(net, spec, rows)[0], atol=diff)
        wet = rows.assign(precip=0.5)
        moved = lambda score: float(np.mean(score(wet) - score(rows)))  # noqa: E731
        torch_move = moved(lambda f: training.predict(net, spec, f)[0])
        assert moved(lambda f: served.score(f)[0]) == pytest.approx(torch_move, abs=0.01)


def test_quantized_export_beyond_the_score_tolerance_keeps_the_fp32_model(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str
) -> None:
    cfg = tune(binary_cfg, "export", {"quantize": True, "quantize_score_tolerance": 1e-9})
    result = export.export_run(cfg, trained["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    assert result["quantized"] is False and result["quantization"]["int8_max_abs_diff"] > 1e-9  # measured
    assert result["onnx_sha256"] == trained["export"]["onnx_sha256"]


def test_quantized_export_beyond_the_metric_tolerance_keeps_the_fp32_model(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str
) -> None:
    # A tolerance below any possible metric change (the config itself only allows >= 0) forces the
    # rejection branch whatever int8 does to this model.
    cfg = tune(binary_cfg, "export", {"quantize": True, "quantize_metric_tolerance": -2.0})
    result = export.export_run(cfg, trained["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    assert result["quantized"] is False
    assert result["onnx_sha256"] == trained["export"]["onnx_sha256"]  # the same bytes: no conflict
    assert result["quantization"]["int8_metric"] is not None


def test_quantized_export_of_sample_rows_without_labels_keeps_the_fp32_model(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str
) -> None:
    """Labels of the newest days may not have arrived: int8 cannot be judged, so fp32 is exported."""
    cfg = tune(binary_cfg, "export", {"quantize": True, "quantize_metric_tolerance": 1.0})
    unlabelled = split[1].assign(**{cfg.target.column: np.nan})
    result = export.export_run(cfg, trained["run_id"], tracking_uri=mlflow_server, sample_frame=unlabelled)
    assert result["quantized"] is False
    assert result["onnx_sha256"] == trained["export"]["onnx_sha256"]


def test_reexporting_a_run_with_other_bytes_is_refused_and_the_registered_model_stays(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str, store: ObjectStore, tmp_path: Path
) -> None:
    """The champion's DAG run cleared after export.quantize was switched on: train reuses the finished
    run, and its export must not swap the served ONNX behind the registry's back."""

    cfg = small_config(binary_cfg, f"reexport_{uuid.uuid4().hex[:8]}", gate=GateSpec(latency_batch_rows=256))
    run_name = f"{cfg.name}-manual__1"

    def train() -> str:
        return training.train(
            cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test", run_name=run_name
        )["run_id"]

    run_id = train()
    first = export.export_run(cfg, run_id, tracking_uri=mlflow_server, sample_frame=split[1])
    decision = evaluation.evaluate_and_gate(
        cfg, run_id, split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    registered = registry.register(
        cfg, run_id, tracking_uri=mlflow_server, decision=decision, data_version="dv1"
    )
    assert registered["promoted"] is True
    client = tracking.client(mlflow_server)
    version = client.get_model_version(cfg.registered_model_name, registered["version"])
    assert version.tags[evaluation.ONNX_SHA256_TAG] == first["onnx_sha256"]

    quantized = tune(cfg, "export", {"quantize": True, "quantize_metric_tolerance": 1.0})
    assert train() == run_id  # the finished run is reused
    with pytest.raises(export.ExportConflictError, match=r"already holds a different model/model\.onnx"):
        export.export_run(quantized, run_id, tracking_uri=mlflow_server, sample_frame=split[1])
    served = registry.download_onnx(cfg, tracking_uri=mlflow_server, dest_dir=tmp_path)
    assert hashlib.sha256(served.read_bytes()).hexdigest() == first["onnx_sha256"]

    # A retry of the same export is idempotent, and the gate still knows the run as the champion.
    again = export.export_run(cfg, run_id, tracking_uri=mlflow_server, sample_frame=split[1])
    assert again["onnx_sha256"] == first["onnx_sha256"]
    assert [a.path for a in client.list_artifacts(run_id, "model")].count(tracking.ONNX_ARTIFACT) == 1
    regate = evaluation.evaluate_and_gate(
        cfg, run_id, split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    assert regate["promote"] is True and [c["name"] for c in regate["checks"]] == ["already_champion"]


def test_a_champion_whose_onnx_changed_after_registration_is_not_passed_again(
    binary_cfg: PipelineConfig, split: tuple, mlflow_server: str, store: ObjectStore, tmp_path: Path
) -> None:
    """A file swapped by other means than export (e.g. a run exported before export was write-once)."""

    cfg = small_config(binary_cfg, f"swapped_{uuid.uuid4().hex[:8]}", gate=GateSpec(latency_batch_rows=256))
    run_id = training.train(cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test")[
        "run_id"
    ]
    export.export_run(cfg, run_id, tracking_uri=mlflow_server, sample_frame=split[1])
    decision = evaluation.evaluate_and_gate(
        cfg, run_id, split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    assert registry.register(cfg, run_id, tracking_uri=mlflow_server, decision=decision, data_version="dv1")[
        "promoted"
    ]
    net, spec = training.load_run_model(mlflow_server, run_id, tmp_path / "run")
    with torch.no_grad():
        net.mlp[0].bias += 1.0
    swapped = tmp_path / "swap" / "model.onnx"
    swapped.parent.mkdir()
    swapped.write_bytes(export.build_onnx(net, spec).SerializeToString())
    tracking.client(mlflow_server).log_artifact(run_id, str(swapped), "model")

    regate = evaluation.evaluate_and_gate(
        cfg, run_id, split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )

    assert regate["promote"] is False and "not the one registered" in regate["reason"]
    assert [(c["name"], c["passed"]) for c in regate["checks"]] == [("already_champion", False)]
    with pytest.raises(registry.RegistryError, match="changed after registration"):
        registry.register(cfg, run_id, tracking_uri=mlflow_server, decision=regate, data_version="dv1")
    with pytest.raises(registry.RegistryError, match="it changed after registration. Nothing was scored"):
        registry.download_onnx(cfg, tracking_uri=mlflow_server, dest_dir=tmp_path / "served")


def registered_copy(cfg: PipelineConfig, onnx_run: str, mlflow_server: str, tmp_path: Path) -> str:
    """A run of its own holding ``onnx_run``'s ONNX file, registered as the champion of ``cfg``."""
    client = tracking.client(mlflow_server)
    run_id = client.create_run(client.get_experiment_by_name(cfg.experiment_name).experiment_id).info.run_id
    source = tracking.download_run_artifact(
        mlflow_server, onnx_run, tracking.ONNX_ARTIFACT, tmp_path / "copy"
    )
    client.log_artifact(run_id, str(source), "model")
    client.set_terminated(run_id)
    registry.register(cfg, run_id, tracking_uri=mlflow_server, decision=decision(0.5), data_version="dv0")
    return run_id


def own_model(cfg: PipelineConfig, name: str, **changes: object) -> PipelineConfig:
    """``cfg`` registering as its own model ``name`` (a fresh registry), gating at a small latency batch."""
    return cfg.model_copy(
        update={
            "mlflow": cfg.mlflow.model_copy(update={"registered_model": name}),
            "gate": GateSpec(latency_batch_rows=256),
            **changes,
        }
    )


def test_a_gate_finds_the_champion_of_a_model_name_with_a_quote(
    binary_cfg: PipelineConfig,
    split: tuple,
    trained: dict,
    mlflow_server: str,
    store: ObjectStore,
    tmp_path: Path,
) -> None:

    # MLflow allows any name without / or :
    cfg = own_model(binary_cfg, f"Flights' delay {uuid.uuid4().hex[:8]}")
    registered_copy(cfg, trained["run_id"], mlflow_server, tmp_path)

    decision = evaluation.evaluate_and_gate(
        cfg, trained["run_id"], split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )

    assert (decision["champion_version"], decision["registry_newest_version"]) == ("1", "1")
    assert decision["champion"]["metrics"] == decision["challenger"]["metrics"]


def test_a_champion_whose_onnx_file_is_gone_fails_the_gate_with_a_clear_error(
    binary_cfg: PipelineConfig,
    split: tuple,
    trained: dict,
    mlflow_server: str,
    s3_endpoint: str,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    from tests.conftest import make_store

    cfg = own_model(binary_cfg, f"gone_{uuid.uuid4().hex[:8]}")
    champion_run = registered_copy(cfg, trained["run_id"], mlflow_server, tmp_path)
    artifacts = make_store(s3_endpoint, "mlops")
    artifacts.delete([o.key for o in artifacts.list("mlflow/") if champion_run in o.key])

    with pytest.raises(evaluation.EvaluationDataError, match=r"champion v1 of .* has no model/model.onnx"):
        evaluation.evaluate_and_gate(
            cfg, trained["run_id"], split[1], tracking_uri=mlflow_server, store=store, day=DAY
        )
    assert registry.champion_info(cfg, tracking_uri=mlflow_server)["run_id"] == champion_run
    with pytest.raises(registry.RegistryError, match=r"v1 of .* has no model/model.onnx any more"):
        registry.download_onnx(cfg, tracking_uri=mlflow_server, dest_dir=tmp_path / "served")


def test_a_champion_trained_for_another_target_fails_the_gate_naming_the_change(
    binary_cfg: PipelineConfig,
    split: tuple,
    trained: dict,
    mlflow_server: str,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    """A changed label rule under the same registered model compared a champion of one target with a
    challenger of another (or blocked every gate with advice to change the task)."""
    cfg = own_model(binary_cfg, f"retargeted_{uuid.uuid4().hex[:8]}")
    champion_run = registered_copy(cfg, trained["run_id"], mlflow_server, tmp_path)
    tracking.client(mlflow_server).log_param(champion_run, "target.positive_when", "{'greater_than': 60.0}")

    with pytest.raises(
        evaluation.EvaluationDataError,
        match=r"champion v1 of 'retargeted_\w+' was trained for another target than the config's "
        r"\(target\.positive_when \{'greater_than': 60\.0\} -> \{'greater_than': 15\.0\}\).*new "
        r"mlflow\.registered_model",
    ):
        evaluation.evaluate_and_gate(
            cfg, trained["run_id"], split[1], tracking_uri=mlflow_server, store=store, day=DAY
        )
    assert registry.champion_info(cfg, tracking_uri=mlflow_server)["run_id"] == champion_run


def test_a_champion_needing_a_column_the_data_lost_fails_the_gate_naming_it(
    binary_cfg: PipelineConfig,
    split: tuple,
    trained: dict,
    mlflow_server: str,
    store: ObjectStore,
    tmp_path: Path,
) -> None:

    without_visib = [c for c in binary_cfg.features.numeric if c != "visib"]
    cfg = own_model(
        binary_cfg,
        f"lost_{uuid.uuid4().hex[:8]}",
        features=binary_cfg.features.model_copy(update={"numeric": without_visib}),
    )
    registered_copy(cfg, trained["run_id"], mlflow_server, tmp_path)  # trained with visib
    challenger = training.train(cfg, split[0], tracking_uri=mlflow_server, data_version="dv2", trigger="test")
    export.export_run(cfg, challenger["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    with pytest.raises(
        evaluation.EvaluationDataError,
        match=r"champion v1 of 'lost_\w+' cannot be scored: evaluation rows: .*'visib'.*\(data\.columns changed",
    ):
        evaluation.evaluate_and_gate(
            cfg,
            challenger["run_id"],
            split[1].drop(columns=["visib"]),
            tracking_uri=mlflow_server,
            store=store,
            day=DAY,
        )
    assert registry.champion_info(cfg, tracking_uri=mlflow_server)["version"] == "1"


def test_a_backfill_gate_compares_the_champion_only_on_days_it_did_not_train_on(
    binary_cfg: PipelineConfig, rows: pd.DataFrame, mlflow_server: str, store: ObjectStore
) -> None:
    """The champion's data version holds Feb 1-14 and it trained on Feb 1-7 (the last 7 days were its
    evaluation days). A challenger trained on January is then gated on days the champion saw."""
    from mlops_tasks.ingestion import to_parquet_bytes
    from mlops_tasks.storage import partition_prefix, publish_manifest, write_part
    from mlops_tasks.versioning import create_data_version

    cfg = own_model(binary_cfg, f"backfill_{uuid.uuid4().hex[:8]}")
    days = sorted({d for d in rows["_day"] if d >= dt.date(2013, 2, 1)})
    for day in days:  # curated as validation publishes it
        partition = partition_prefix(cfg.prefix, "curated", day)
        frame = rows[rows["_day"] == day].assign(_day=day.isoformat())
        part = write_part(store, partition, "data.parquet", to_parquet_bytes(frame), rows=len(frame))
        publish_manifest(store, partition, [part], day=day.isoformat())
    version = create_data_version(store, cfg, days)["data_version"]
    champion_rows = rows[rows["_day"] >= dt.date(2013, 2, 1)]
    champion_run = training.train(
        cfg,
        training.split_window(champion_rows, cfg)[0],
        tracking_uri=mlflow_server,
        data_version=version,
        trigger="test",
    )["run_id"]
    export.export_run(cfg, champion_run, tracking_uri=mlflow_server, sample_frame=champion_rows)
    registry.register(
        cfg, champion_run, tracking_uri=mlflow_server, decision=decision(0.5), data_version=version
    )
    january = rows[rows["_day"] < dt.date(2013, 2, 1)]
    challenger_run = training.train(
        cfg, january, tracking_uri=mlflow_server, data_version="dv-jan", trigger="test"
    )["run_id"]
    export.export_run(cfg, challenger_run, tracking_uri=mlflow_server, sample_frame=january)

    def gate(first: dt.date, last: dt.date) -> dict:
        frame = rows[(rows["_day"] >= first) & (rows["_day"] <= last)]
        return evaluation.evaluate_and_gate(
            cfg, challenger_run, frame, tracking_uri=mlflow_server, store=store, day=last
        )

    assert evaluation.champion_training_days(store, cfg, mlflow_server, champion_run) == set(days[:7])
    seen = gate(dt.date(2013, 2, 1), dt.date(2013, 2, 7))
    (beats,) = [c for c in seen["checks"] if c["name"] == "beats_champion"]
    assert seen["promote"] is False and seen["champion"]["rows"] == 0
    assert (
        f"champion v{seen['champion_version']} trained on every evaluation day (2013-02-01, "
        in beats["detail"]
    )

    partly = gate(dt.date(2013, 2, 5), dt.date(2013, 2, 14))
    unseen = rows[rows["_day"] >= dt.date(2013, 2, 8)]
    champion = partly["champion"]
    assert champion["trained_on_days"] == ["2013-02-05", "2013-02-06", "2013-02-07"]
    assert champion["rows"] == len(unseen) < partly["challenger"]["rows"]
    assert set(champion["challenger_metrics"]) == set(champion["metrics"]) and champion["metrics"]["roc_auc"]
    (beats,) = [c for c in partly["checks"] if c["name"] == "beats_champion"]
    assert f"on the {len(unseen)} evaluation rows of days it did not train on" in beats["detail"]
    assert beats["value"] == pytest.approx(
        champion["challenger_metrics"]["roc_auc"] - champion["metrics"]["roc_auc"], abs=1e-6
    )

    # Evaluation days the champion never trained on: the plain comparison, on every row.
    fresh = gate(dt.date(2013, 2, 8), dt.date(2013, 2, 14))
    assert "trained_on_days" not in fresh["champion"] and fresh["champion"]["rows"] == len(unseen)
    assert fresh["champion"]["metrics"] == champion["metrics"]


def test_gate_report_is_written_to_the_store_and_the_run(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str, store: ObjectStore
) -> None:

    cfg = binary_cfg.model_copy(update={"gate": GateSpec(min_value=0.99, latency_batch_rows=256)})
    decision = evaluation.evaluate_and_gate(
        cfg, trained["run_id"], split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    assert (
        decision["promote"] is False
        and decision["floor_failed"] is True
        and "must be >= 0.99" in decision["reason"]
    )
    key = f"{cfg.prefix}/reports/gate/date={DAY}/{trained['run_id']}/vs-none/gate.json"
    assert (
        decision["report_json_uri"] == store.uri(key) and store.get_json(key)["reason"] == decision["reason"]
    )
    assert b"<svg" in store.get_bytes(key.replace("gate.json", "gate.html"))
    run = tracking.client(mlflow_server).get_run(trained["run_id"])
    assert run.data.tags["gate_decision"] == "reject" and "eval_roc_auc" in run.data.metrics
    # A retry of the gate task writes the same report and adds no second point of the same metric.
    again = evaluation.evaluate_and_gate(
        cfg, trained["run_id"], split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    assert again["reason"] == decision["reason"]
    assert history(mlflow_server, trained["run_id"], "eval_roc_auc") == [
        (0, decision["challenger"]["metrics"]["roc_auc"])
    ]


def test_a_run_gated_again_against_another_champion_keeps_its_first_gate_report(
    binary_cfg: PipelineConfig, split: tuple, trained: dict, mlflow_server: str, store: ObjectStore
) -> None:
    """The first gate's report is what its registered version and lineage point to. (Gated again here
    against itself, the champion it became: any other champion gets its own folder the same way.)"""
    registered = binary_cfg.mlflow.model_copy(update={"registered_model": f"m_{uuid.uuid4().hex[:10]}"})
    cfg = binary_cfg.model_copy(update={"mlflow": registered, "gate": GateSpec(latency_batch_rows=256)})
    run_id = trained["run_id"]
    first = evaluation.evaluate_and_gate(
        cfg, run_id, split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    registry.register(cfg, run_id, tracking_uri=mlflow_server, decision=first, data_version="dv1")
    report = store.get_bytes(store.key_of(first["report_json_uri"]))

    again = evaluation.evaluate_and_gate(
        cfg, run_id, split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )

    gates = f"{cfg.prefix}/reports/gate/date={DAY}/{run_id}/"
    assert first["report_json_uri"] == store.uri(gates + "vs-none/gate.json")
    assert again["report_json_uri"] == store.uri(gates + "vs-v1/gate.json")
    assert store.get_bytes(store.key_of(first["report_json_uri"])) == report
    assert store.get_json(store.key_of(again["report_json_uri"]))["champion_version"] == "1"
    client = tracking.client(mlflow_server)
    logged = {a.path for a in client.list_artifacts(run_id, "gate")}
    assert {"gate/vs-none", "gate/vs-v1"} <= logged


@pytest.mark.parametrize(
    ("task", "target_column", "categorical", "metric", "expected"),
    [
        ("multiclass", "origin", ["carrier", "dest"], "accuracy", {"accuracy", "f1", "log_loss", "roc_auc"}),
        ("regression", "dep_delay", ["carrier", "origin", "dest"], "rmse", {"rmse", "mae"}),
    ],
)
def test_multiclass_and_regression_train_export_and_gate(
    binary_cfg: PipelineConfig,
    split: tuple,
    mlflow_server: str,
    store: ObjectStore,
    task: str,
    target_column: str,
    categorical: list[str],
    metric: str,
    expected: set[str],
) -> None:

    cfg = small_config(
        binary_cfg,
        f"{task}_{uuid.uuid4().hex[:6]}",
        target=TargetSpec(task=task, column=target_column),
        features=FeatureSpec(numeric=binary_cfg.features.numeric, categorical=categorical),
        gate=GateSpec(primary_metric=metric, latency_batch_rows=256),
    )
    run = training.train(cfg, split[0], tracking_uri=mlflow_server, data_version="dv1", trigger="test")
    exported = export.export_run(cfg, run["run_id"], tracking_uri=mlflow_server, sample_frame=split[1])
    decision = evaluation.evaluate_and_gate(
        cfg, run["run_id"], split[1], tracking_uri=mlflow_server, store=store, day=DAY
    )
    assert exported["parity_max_abs_diff"] <= cfg.export.parity_tolerance
    assert expected <= set(decision["challenger"]["metrics"]) and decision["promote"] is True


def lineage_record(**overrides: object) -> dict:
    record = {
        "model_name": "flights_delay",
        "model_version": 3,
        "landing_files": ["s3://b/p/landing/date=2013-01-01/flights.csv"],
        "curated_partitions": ["s3://b/p/curated/date=2013-01-01/"],
        "validation_reports": ["s3://b/p/reports/validation/date=2013-01-01/report.json"],
        "data_version": "abc123",
        "run_id": "r1",
        "onnx_artifact_uri": "mlflow-artifacts:/1/r1/artifacts/model/model.onnx",
        "gate": {"promote": True, "reason": "promoted: no champion yet"},
        "promoted": True,
    }
    return record | overrides


def test_lineage_record_round_trips_with_identical_bytes(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    uri = lineage.write_record(store, example_config, lineage_record())
    first = store.get_bytes(store.key_of(uri))
    assert lineage.write_record(store, example_config, lineage_record()) == uri
    assert store.get_bytes(store.key_of(uri)) == first
    assert uri.endswith("/flights_delay/lineage/flights_delay/v3.json")
    lineage.write_record(store, example_config, lineage_record(model_version="12"))
    assert lineage.read_record(store, example_config)["model_version"] == "12"
    assert lineage.read_record(store, example_config, version=3)["schema"] == lineage.SCHEMA_VERSION


def test_lineage_record_missing_keys_is_a_clear_error(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    record = lineage_record(gate={"promote": True})
    del record["data_version"]
    with pytest.raises(lineage.LineageError, match=r"missing keys \['data_version', 'gate.reason'\]"):
        lineage.write_record(store, example_config, record)


def test_lineage_format_shows_the_chain_in_order() -> None:
    text = lineage.format_record(lineage.validate_record(lineage_record()))
    steps = [
        "landing files",
        "curated partitions",
        "validation reports",
        "DVC",
        "MLflow run",
        "ONNX",
        "registry",
        "gate",
    ]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions) and "-> champion" in text


def test_lineage_names_the_champion_the_gate_compared_with(
    store: ObjectStore, example_config: PipelineConfig, mlflow_server: str, tmp_path: Path
) -> None:
    """v3 rejected while v2 serves: the record says v2 (the registration's previous champion is v1)."""
    cfg = example_config.model_copy(
        update={
            "mlflow": example_config.mlflow.model_copy(
                update={"registered_model": f"lineage_{uuid.uuid4().hex[:8]}"}
            )
        }
    )
    client = tracking.client(mlflow_server)
    experiment = client.create_experiment(f"lineage_{uuid.uuid4().hex[:8]}")

    def register(auc: float, champion: str | None, promote: bool) -> tuple[str, dict, dict]:
        run_id = client.create_run(experiment).info.run_id
        model = tmp_path / run_id / "model.onnx"
        model.parent.mkdir()
        model.write_bytes(b"onnx")
        client.log_artifact(run_id, str(model), "model")
        decision = {
            "promote": promote,
            "reason": f"roc_auc {auc}",
            "primary_metric": "roc_auc",
            "challenger": {"metrics": {"roc_auc": auc}},
            "champion_version": champion,
            "floor_failed": False,
        }
        result = registry.register(
            cfg, run_id, tracking_uri=mlflow_server, decision=decision, data_version="dv"
        )
        return run_id, decision, result

    register(0.70, None, True)
    register(0.72, "1", True)
    run_id, decision, registration = register(0.60, "2", False)
    assert registration["previous_champion_version"] == "1"

    def record_of(decision: dict, registration: dict) -> dict:
        return lineage.assemble_record(
            store,
            cfg,
            data_version={"data_version": "dv", "days": ["2013-01-01"], "trigger": "test"},
            training={"run_id": run_id},
            export={"onnx_artifact_uri": f"runs:/{run_id}/model/model.onnx"},
            decision=decision,
            registration=registration,
        )

    record = record_of(decision, registration)
    assert (record["model_version"], record["promoted"], record["champion_version"]) == ("3", False, "2")
    assert "registry_reason" not in record["gate"]

    # The same run gated again, now passing: the registry keeps v3's first record, and so must lineage.
    regated = {**decision, "promote": True, "reason": "roc_auc 0.9 beats v2"}
    again = registry.register(cfg, run_id, tracking_uri=mlflow_server, decision=regated, data_version="dv")
    record = record_of(regated, again)
    assert again["decision_applied"] is False and record["promoted"] is False
    assert record["gate"]["registry_reason"].startswith("gate decision not applied: v3 ")
    assert "  not applied               gate decision not applied" in lineage.format_record(
        lineage.validate_record(record)
    )
