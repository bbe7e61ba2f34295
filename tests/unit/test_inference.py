"""Pure inference logic: work-unit splitting, session options, the model contract, output labels."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mlops_tasks import features as F
from mlops_tasks import inference
from mlops_tasks.config import PipelineConfig, TargetSpec
from tests.integration.onnx_fixtures import EXAMPLE_VOCAB, build_model, curated_frame, random_params


@pytest.fixture
def cfg(example_config: PipelineConfig) -> PipelineConfig:
    tuned = example_config.inference.model_copy(update={"intra_op_threads": 1, "graph_optimization": "basic"})
    return example_config.model_copy(update={"inference": tuned})


def multiclass(cfg: PipelineConfig) -> PipelineConfig:
    return cfg.model_copy(update={"target": TargetSpec(task="multiclass", column="dep_delay")})


def test_split_packs_whole_row_groups_up_to_the_limit() -> None:
    assert inference.split_row_groups([200, 200, 200, 100], 300) == [
        ([0], 0, 200),
        ([1], 0, 200),
        ([2, 3], 0, 300),
    ]


def test_split_cuts_a_row_group_bigger_than_the_limit_into_row_ranges() -> None:
    assert inference.split_row_groups([50, 700, 10], 300) == [
        ([0], 0, 50),
        ([1], 0, 300),
        ([1], 300, 300),
        ([1], 600, 100),
        ([2], 0, 10),
    ]


def test_split_skips_empty_row_groups() -> None:
    assert inference.split_row_groups([0, 5, 0], 300) == [([1], 0, 5)]


def test_session_uses_the_configured_threads_and_optimisation_level(
    cfg: PipelineConfig, tmp_path: Path
) -> None:
    path = build_model(tmp_path / "m.onnx", cfg.features, random_params(cfg.features, EXAMPLE_VOCAB, [4]))

    options = inference.make_session(path, cfg).get_session_options()

    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_session_on_a_file_that_is_not_onnx_names_the_file(cfg: PipelineConfig, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")

    with pytest.raises(inference.ModelContractError, match=str(path)):
        inference.make_session(path, cfg)


def test_model_trained_on_other_features_is_refused(cfg: PipelineConfig, tmp_path: Path) -> None:
    other = cfg.features.model_copy(update={"numeric": cfg.features.numeric[:-1]})
    path = build_model(tmp_path / "m.onnx", other, random_params(other, EXAMPLE_VOCAB, [4]))

    with pytest.raises(inference.ModelContractError, match="differ from the config"):
        inference._Model.load(path, cfg)


def test_model_of_another_task_is_refused(cfg: PipelineConfig, tmp_path: Path) -> None:
    params = random_params(cfg.features, EXAMPLE_VOCAB, [4], outputs=3)
    path = build_model(tmp_path / "m.onnx", cfg.features, params, "multiclass", ["a", "b", "c"])

    with pytest.raises(inference.ModelContractError, match="task 'multiclass'"):
        inference._Model.load(path, cfg)


def test_multiclass_prediction_is_the_argmax_class_with_one_probability_column_per_class(
    cfg: PipelineConfig, tmp_path: Path
) -> None:
    cfg = multiclass(cfg)
    classes = ["early", "on_time", "late"]
    params = random_params(cfg.features, EXAMPLE_VOCAB, [8], outputs=3, seed=3)
    model = inference._Model.load(
        build_model(tmp_path / "m.onnx", cfg.features, params, "multiclass", classes), cfg
    )
    inputs = F.onnx_inputs(curated_frame(dt.date(2013, 3, 1), 20), cfg.features)

    label, score, *proba = model.predict(inputs)

    proba = np.stack(proba, axis=1)
    assert [f.name for f in model.output_fields()] == [
        "prediction",
        "score",
        "probability_early",
        "probability_on_time",
        "probability_late",
    ]
    assert list(label) == [classes[i] for i in proba.argmax(axis=1)]
    np.testing.assert_allclose(score, proba.max(axis=1))


def test_binary_labels_are_integers_when_the_classes_are_numbers(cfg: PipelineConfig, tmp_path: Path) -> None:
    params = random_params(cfg.features, EXAMPLE_VOCAB, [8], seed=5)
    model = inference._Model.load(
        build_model(tmp_path / "m.onnx", cfg.features, params, classes=[0.0, 1.0]), cfg
    )
    inputs = F.onnx_inputs(curated_frame(dt.date(2013, 3, 1), 50), cfg.features)

    label, score = model.predict(inputs)

    assert label.dtype == np.int64
    assert (label == (score >= 0.5)).all()
