"""Pure inference logic: work-unit splitting, session options, the model contract, output labels."""

from __future__ import annotations

import datetime as dt
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pytest

from mlops_tasks import features as F
from mlops_tasks import inference
from mlops_tasks.config import PipelineConfig
from tests.integration.onnx_fixtures import (
    EXAMPLE_VOCAB,
    build_model,
    curated_frame,
    multiclass,
    random_params,
)


@pytest.fixture
def cfg(example_config: PipelineConfig) -> PipelineConfig:
    tuned = example_config.inference.model_copy(update={"intra_op_threads": 1, "graph_optimization": "basic"})
    return example_config.model_copy(update={"inference": tuned})


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


def test_a_session_for_calls_scored_at_once_overrides_the_configured_threads(
    cfg: PipelineConfig, tmp_path: Path
) -> None:
    path = build_model(tmp_path / "m.onnx", cfg.features, random_params(cfg.features, EXAMPLE_VOCAB, [4]))
    two = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"intra_op_threads": 2})})

    assert inference.make_session(path, two).get_session_options().intra_op_num_threads == 2
    assert (
        inference.make_session(path, two, intra_op_threads=1).get_session_options().intra_op_num_threads == 1
    )


def test_scoring_threads_default_to_the_cores_the_process_may_use(cfg: PipelineConfig) -> None:
    three = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"scoring_threads": 3})})

    assert inference.scoring_threads(cfg) == len(os.sched_getaffinity(0))
    assert inference.scoring_threads(three) == 3


class _SlowScorer:
    """Scores batch i (its only column is [i]) as [i], in time inversely proportional to i, so
    batches scored at once finish out of order; fails on batch ``fail_at``."""

    def __init__(self, fail_at: int | None = None, together: int = 1) -> None:
        self.fail_at = fail_at
        # the first `together` batches wait for each other: scored at once, or the barrier times out
        self.meet = threading.Barrier(together, timeout=30)
        self.started: list[int] = []
        self.lock = threading.Lock()
        self.peak = self.running = 0

    def __call__(self, batch: pa.RecordBatch) -> tuple[list[np.ndarray], dict[str, float]]:
        index = batch.column(0)[0].as_py()
        with self.lock:
            self.started.append(index)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if index < self.meet.parties:
                self.meet.wait()
            time.sleep(0.02 / (1 + index % 4))
            if index == self.fail_at:
                raise RuntimeError(f"batch {index} failed")
            return [np.array([index])], {"preprocess": 0.001, "score": 0.002}
        finally:
            with self.lock:
                self.running -= 1


def _batches(count: int) -> Any:
    return (pa.record_batch([pa.array([i])], names=["i"]) for i in range(count))


@pytest.mark.parametrize("threads", [1, 3])
def test_batches_scored_at_once_come_back_in_input_order(threads: int) -> None:
    scorer = _SlowScorer(together=threads)
    seconds = {"score": 0.0}

    scored = list(inference._scored(scorer, _batches(12), threads, seconds))

    assert [batch.column(0)[0].as_py() for batch, _ in scored] == list(range(12))
    assert [int(outputs[0][0]) for _, outputs in scored] == list(range(12))
    assert scorer.peak == threads
    assert seconds == pytest.approx({"preprocess": 0.012, "score": 0.024})


def test_a_failing_batch_is_raised_and_the_queued_ones_are_not_scored() -> None:
    scorer = _SlowScorer(fail_at=2)

    with pytest.raises(RuntimeError, match="batch 2 failed"):
        list(inference._scored(scorer, _batches(50), 2, {}))

    assert len(scorer.started) < 10  # at most the batches in flight when batch 2 failed


def test_scoring_freezes_the_collector_and_allocates_from_jemalloc_then_restores_both() -> None:
    default_pool = pa.default_memory_pool()
    gc.unfreeze()  # from no freeze: Airflow code that other tests run in this process may freeze

    with inference._scoring_process():
        assert gc.get_freeze_count() > 0
        assert pa.default_memory_pool().backend_name in ("jemalloc", "system")

    assert gc.get_freeze_count() == 0
    assert pa.default_memory_pool().backend_name == default_pool.backend_name


def test_scoring_keeps_a_freeze_the_caller_made() -> None:
    gc.freeze()
    try:
        with inference._scoring_process():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


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


@pytest.mark.parametrize("role", ["champion", "challenger"])
def test_a_challenger_that_cannot_be_scored_is_named_as_the_challenger_with_a_fix_for_it(
    cfg: PipelineConfig, tmp_path: Path, role: str
) -> None:
    """The error named the task's temporary file and advised retraining or changing the config, which
    is the champion's fix; a challenger's shadow is all that fails."""
    from mlops_tasks.airflow.operators import ScorePartOperator

    other = cfg.features.model_copy(update={"numeric": cfg.features.numeric[:-1]})
    path = build_model(tmp_path / "m.onnx", other, random_params(other, EXAMPLE_VOCAB, [4]))
    operator = ScorePartOperator(task_id="shadow", pipeline=cfg.name, unit={}, models={}, role=role)

    with pytest.raises(inference.ModelContractError) as err:
        with operator._shadow_only({"version": "3"}):
            inference._Model.load(path, cfg, label="version 3 of 'flights_delay'")

    message = str(err.value)
    assert str(tmp_path) not in message
    assert "version 3 of 'flights_delay': the model's features" in message
    if role == "challenger":
        assert message.startswith("challenger v3 of 'flights_delay' cannot be shadow-scored: ")
        assert "the champion's predictions of the day are published as usual" in message
        assert "set_model_version_tag('flights_delay', '3', 'challenger_eligible', 'false')" in message
    else:
        assert "shadow" not in message


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


def test_a_job_of_several_batches_scores_each_slice_and_joins_them_in_order(
    cfg: PipelineConfig, tmp_path: Path
) -> None:
    cfg = multiclass(cfg)
    cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"batch_rows": 7})})
    params = random_params(cfg.features, EXAMPLE_VOCAB, [8], outputs=3, seed=4)
    classes = ["early", "on_time", "late"]
    model = inference._Model.load(
        build_model(tmp_path / "m.onnx", cfg.features, params, "multiclass", classes), cfg
    )
    rows = pa.RecordBatch.from_pandas(curated_frame(dt.date(2013, 3, 1), 30), preserve_index=False)

    outputs, seconds = inference._score_rows(model, cfg, "s3://b/part", rows)

    whole = model.predict(F.onnx_inputs(rows, cfg.features))
    assert len(outputs) == len(whole) == 5
    for joined, expected in zip(outputs, whole, strict=True):
        np.testing.assert_array_equal(joined, expected)
    assert seconds["preprocess"] > 0 and seconds["score"] > 0


def test_a_job_with_a_feature_column_of_the_wrong_type_names_the_file_and_column(
    cfg: PipelineConfig, tmp_path: Path
) -> None:
    model = inference._Model.load(
        build_model(tmp_path / "m.onnx", cfg.features, random_params(cfg.features, EXAMPLE_VOCAB, [4])), cfg
    )
    frame = curated_frame(dt.date(2013, 3, 1), 10)
    frame["temp"] = "warm"
    rows = pa.RecordBatch.from_pandas(frame, preserve_index=False)

    with pytest.raises(inference.InferenceInputError, match=r"s3://b/part.*'temp'"):
        inference._score_rows(model, cfg, "s3://b/part", rows)


@pytest.mark.parametrize(
    ("batch_rows", "job_rows"), [(8192, 32768), (1000, 32000), (20000, 20000), (100_000, 100_000)]
)
def test_a_job_is_whole_batches_up_to_the_job_size_and_at_least_one_batch(
    batch_rows: int, job_rows: int
) -> None:
    assert inference._job_rows(batch_rows) == job_rows


def test_a_multiclass_model_with_more_classes_than_probabilities_is_a_contract_error(
    cfg: PipelineConfig, tmp_path: Path
) -> None:
    cfg = multiclass(cfg)
    params = random_params(cfg.features, EXAMPLE_VOCAB, [4], outputs=3)
    path = build_model(tmp_path / "m.onnx", cfg.features, params, "multiclass", ["a", "b", "c", "d"])
    with pytest.raises(inference.ModelContractError, match=r"m\.onnx: .*one column per class.*\(4: "):
        inference._Model.load(path, cfg)

    import onnx  # a width onnxruntime cannot infer (a runtime reshape) is checked when scoring

    proto = onnx.load(path)
    nodes = proto.graph.node
    softmax = next(n for n in nodes if n.op_type == "Softmax")
    softmax.output[0] = "softmax"
    nodes.extend(
        [
            onnx.helper.make_node("Shape", ["softmax"], ["softmax_shape"]),
            onnx.helper.make_node("Reshape", ["softmax", "softmax_shape"], [F.PROBABILITIES_OUTPUT]),
        ]
    )
    next(n for n in nodes if n.op_type == "ReduceMax").input[0] = "softmax"
    out = next(o for o in proto.graph.output if o.name == F.PROBABILITIES_OUTPUT)
    out.type.tensor_type.shape.dim[1].dim_param = "classes"
    onnx.save(proto, path)
    model = inference._Model.load(path, cfg)
    rows = pa.RecordBatch.from_pandas(curated_frame(dt.date(2013, 3, 1), 10), preserve_index=False)
    with pytest.raises(
        inference.ModelContractError, match=r"m\.onnx: the model gives 3 probabilities .* 4 classes"
    ):
        inference._score_rows(model, cfg, "s3://b/part", rows)


def test_binary_shadow_metrics_know_the_positive_class_when_no_row_reaches_the_threshold() -> None:
    """String classes: the positive one is the class that is not predicted below the threshold."""
    label = pd.Series(["yes", "no", "yes", "no"])
    prediction = pd.Series(["no"] * 4)
    score = pd.Series([0.4, 0.1, 0.3, 0.2])
    metrics = inference._metrics("binary", label, prediction, score)
    assert metrics["roc_auc"] == 1.0
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.4, 0.9, 0.3, 0.8])))
    assert metrics["accuracy"] == 0.5


def test_a_column_name_with_dots_is_one_column_when_reading_byte_ranges() -> None:
    """Chunks were matched by the name before the first dot: the config's column "a.b" matched no
    chunk (planning failed on an empty min()) and "a" also read the chunks of "a.b"."""
    import io

    import pyarrow.parquet as pq

    flat = pa.table({"a.b": [1, 2, 3], "a": [4.0, 5.0, 6.0], "c": ["x", "y", "z"]})
    nested = flat.add_column(1, "s", pa.array([{"x": 1, "y": [2, 3]}] * 3))
    for table in (flat, nested):
        data = io.BytesIO()
        pq.write_table(table, data)
        meta = pq.read_metadata(pa.BufferReader(data.getvalue()))
        shift = 2 if table is nested else 0  # the struct's two leaves come second
        assert inference._chunk_indices(meta, ["a.b"]) == [0]
        assert inference._chunk_indices(meta, ["a", "c"]) == [1 + shift, 2 + shift]
        chunk = meta.row_group(0).column(0)
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        assert inference._row_group_span(meta, 0, [0]) == (start, start + chunk.total_compressed_size)
    assert inference._chunk_indices(meta, ["s"]) == [1, 2]
