"""Batch inference against the real moto S3 endpoint: plan, score, publish, read, shadow."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_tasks import inference, storage
from mlops_tasks.config import PipelineConfig, TargetSpec
from mlops_tasks.storage import (
    ObjectStore,
    content_id,
    partition_prefix,
    publish_manifest,
    sha256_bytes,
    write_part,
)
from tests.conftest import tune

from .onnx_fixtures import (
    EXAMPLE_VOCAB,
    build_model,
    curated_frame,
    multiclass,
    publish_curated,
    random_params,
    threshold_params,
)

DAY = dt.date(2013, 3, 1)
IDENTITY = {
    "model_name": "flights_delay",
    "model_version": "3",
    "run_id": "scheduled__2013-03-01T00:00:00+00:00",
}


@pytest.fixture
def cfg(example_config: PipelineConfig) -> PipelineConfig:
    small = example_config.inference.model_copy(
        update={"part_rows": 300, "batch_rows": 128, "intra_op_threads": 1}
    )
    return example_config.model_copy(update={"inference": small})


@pytest.fixture
def mlp_path(tmp_path: Path, cfg: PipelineConfig) -> str:
    params = random_params(cfg.features, EXAMPLE_VOCAB, hidden=[32, 16], seed=7)
    return str(build_model(tmp_path / "mlp.onnx", cfg.features, params, classes=[0.0, 1.0]))


def threshold_model(
    tmp_path: Path, cfg: PipelineConfig, threshold: float, name: str, classes: tuple = (0.0, 1.0)
) -> str:
    params = threshold_params(cfg.features, "hour", threshold, steepness=1.0)  # no float32 ties
    return str(build_model(tmp_path / f"{name}.onnx", cfg.features, params, classes=list(classes)))


def score_day(
    store: ObjectStore, cfg: PipelineConfig, model_path: str, area: str = "predictions", **identity: str
) -> dict:
    """Plan, score every unit, publish: what the batch-inference DAG's tasks do in turn."""
    ident = {**IDENTITY, **identity}
    results = [
        inference.score_part(store, cfg, unit, model_path=model_path, output_area=area, **ident)
        for unit in inference.plan_parts(store, cfg, DAY)
    ]
    return inference.publish_predictions(store, cfg, DAY, results, output_area=area, **ident)


def contents(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {o.key: store.get_bytes(o.key) for o in store.list(prefix)}


def two_parts(store: ObjectStore, cfg: PipelineConfig) -> None:
    """950 curated rows in two parts with row groups of 200 (700 = 200+200+200+100, 250 = 200+50)."""
    frames = [curated_frame(DAY, 700), curated_frame(DAY, 250, seed=1, first_flight=1000)]
    publish_curated(store, cfg, DAY, frames, row_group_size=200)


def test_plan_of_a_day_without_curated_data_is_empty(store: ObjectStore, cfg: PipelineConfig) -> None:
    assert inference.plan_parts(store, cfg, DAY) == []


def test_a_day_curated_again_with_no_rows_replaces_its_predictions_with_an_empty_day(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    """With validation.min_rows 0 a day can be curated again to no rows: planning nothing skipped the
    run, and the predictions of the day's earlier rows stayed published."""
    publish_curated(store, cfg, DAY, [curated_frame(DAY, 500)], row_group_size=100)
    assert score_day(store, cfg, mlp_path)["rows"] == 500
    publish_curated(store, cfg, DAY, [curated_frame(DAY, 0)], row_group_size=100)

    plan = inference.plan_parts(store, cfg, DAY)
    published = score_day(store, cfg, mlp_path, run_id="manual__again")

    assert [(unit["rows"], unit["units"]) for unit in plan] == [(0, 1)]
    assert (published["rows"], published["parts"]) == (0, 1)
    manifest = store.read_manifest(partition_prefix(cfg.prefix, "predictions", DAY))
    assert (manifest["rows"], manifest["run_id"]) == (0, "manual__again")
    assert len(inference.read_predictions(store, cfg, DAY)) == 0


def test_plan_packs_row_groups_of_every_part_into_units_of_at_most_part_rows(
    store: ObjectStore, cfg: PipelineConfig
) -> None:
    two_parts(store, cfg)  # row groups 200,200,200,100 and 200,50; part_rows 300

    units = inference.plan_parts(store, cfg, DAY)

    assert [(u["row_groups"], u["row_offset"], u["rows"]) for u in units] == [
        ([0], 0, 200),
        ([1], 0, 200),
        ([2, 3], 0, 300),
        ([0, 1], 0, 250),
    ]
    assert [u["part_index"] for u in units] == [0, 1, 2, 3]
    assert json.loads(json.dumps(units)) == units


def test_published_manifest_lists_every_part_with_its_rows_and_sha256(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    two_parts(store, cfg)

    result = score_day(store, cfg, mlp_path)

    partition = partition_prefix(cfg.prefix, "predictions", DAY)
    manifest = store.read_manifest(partition)
    assert result == {"uri": store.uri(partition), "rows": 950, "parts": 4, "model_version": "3"}
    assert (
        manifest["rows"] == 950
        and manifest["model_version"] == "3"
        and manifest["run_id"] == IDENTITY["run_id"]
    )
    for part in manifest["parts"]:
        data = store.get_bytes(part["key"])
        assert sha256_bytes(data) == part["sha256"]
        assert pq.read_metadata(pa.BufferReader(data)).num_rows == part["rows"]


@pytest.mark.parametrize(
    ("classes", "labels"),
    [((0.0, 1.0), [0, 1]), (("0", "1"), [0, 1]), (("no", "yes"), ["no", "yes"])],
    ids=["numbers", "numbers-as-training-stores-them", "text"],
)
def test_predictions_carry_keys_threshold_labels_scores_and_model_identity(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path, classes: tuple, labels: list
) -> None:
    frame = curated_frame(DAY, 400)
    publish_curated(store, cfg, DAY, [frame], row_group_size=100)

    score_day(store, cfg, threshold_model(tmp_path, cfg, 12.0, "t12", classes))

    out = inference.read_predictions(store, cfg, DAY)
    assert list(out.columns) == [
        *cfg.data.key,
        "prediction",
        "score",
        "model_name",
        "model_version",
        "run_id",
    ]
    # strings written from arrow dictionaries read back as the plain strings they are
    assert not [c for c, dtype in out.dtypes.items() if isinstance(dtype, pd.CategoricalDtype)]
    assert out["carrier"].tolist() == frame["carrier"].tolist()
    joined = out.merge(frame[["flight", "hour"]], on="flight")  # flight numbers are unique here
    assert len(joined) == 400
    # the model's classes, the later one where the score reaches the threshold; whole numbers as integers
    assert joined["prediction"].tolist() == [labels[late] for late in joined["hour"] >= 12]
    assert ((joined["score"] >= 0.5) == (joined["hour"] >= 12)).all()
    assert set(zip(out.model_name, out.model_version, out.run_id, strict=True)) == {tuple(IDENTITY.values())}


def test_a_multiclass_day_is_written_with_its_class_labels_and_one_float_column_per_class(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path
) -> None:
    cfg = multiclass(cfg)
    classes = ["early", "on_time", "late"]
    params = random_params(cfg.features, EXAMPLE_VOCAB, [8], outputs=3, seed=3)
    model = str(build_model(tmp_path / "m.onnx", cfg.features, params, "multiclass", classes))
    publish_curated(store, cfg, DAY, [curated_frame(DAY, 400)], row_group_size=100)

    score_day(store, cfg, model)

    manifest = store.read_manifest(partition_prefix(cfg.prefix, "predictions", DAY))
    schema = pq.read_schema(pa.BufferReader(store.get_bytes(manifest["parts"][0]["key"])))
    probabilities = [f"probability_{c}" for c in classes]
    assert schema.field("prediction").type == pa.string()
    assert {schema.field(c).type for c in ["score", *probabilities]} == {pa.float32()}
    out = inference.read_predictions(store, cfg, DAY)
    assert len(out) == 400 and set(out["prediction"]) <= set(classes)
    best = out[probabilities].to_numpy().argmax(axis=1)
    assert out["prediction"].tolist() == [classes[i] for i in best]


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_row_the_model_gives_no_finite_score_is_published_without_a_class(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path, task: str
) -> None:
    """Absurd finite inputs (temperature, dew point and pressure of 3e38, past validation's reach
    here) overflow the network to NaN. NaN is below the threshold and argmax of a NaN row is 0: the
    row read as a real class, and two models failing on it agreed."""
    classes = [0.0, 1.0] if task == "binary" else ["early", "on_time", "late"]
    cfg = cfg if task == "binary" else multiclass(cfg)
    params = random_params(
        cfg.features, EXAMPLE_VOCAB, [8], outputs=len(classes) - (task == "binary"), seed=3
    )
    model = str(build_model(tmp_path / "m.onnx", cfg.features, params, task, classes))
    frame = curated_frame(DAY, 6).astype({"temp": float, "dewp": float, "pressure": float})
    frame.loc[[1, 4], ["temp", "dewp", "pressure"]] = 3e38
    publish_curated(store, cfg, DAY, [frame], row_group_size=100)

    score_day(store, cfg, model)
    score_day(store, cfg, model, "predictions_shadow", model_version="4")

    out = inference.read_predictions(store, cfg, DAY).set_index("flight").loc[frame["flight"]]
    unscored = out["score"].isna().to_numpy()
    assert unscored.tolist() == [False, True, False, False, True, False]
    assert out["prediction"].isna().to_numpy().tolist() == unscored.tolist()
    report = inference.shadow_report(
        store, cfg, DAY, champion={"model_version": "3"}, challenger={"model_version": "4"}
    )
    assert report["agreement_rate"] == pytest.approx(4 / 6)  # a model with itself, but for those rows


def test_classes_an_older_release_stored_as_1_0_are_published_as_integers(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path
) -> None:
    """Models of older releases stored a float label's classes as "0.0"/"1.0": the same classes as
    a newer model's "0"/"1", so the days they score have the same integer prediction column."""
    params = random_params(cfg.features, EXAMPLE_VOCAB, [8], seed=1)
    publish_curated(store, cfg, DAY, [curated_frame(DAY, 50)], row_group_size=100)
    published = {}
    for classes in (["0", "1"], ["0.0", "1.0"]):
        score_day(store, cfg, str(build_model(tmp_path / "m.onnx", cfg.features, params, classes=classes)))
        published[classes[1]] = inference.read_predictions(store, cfg, DAY)["prediction"]
    assert published["1.0"].dtype == published["1"].dtype == np.int64
    assert published["1.0"].equals(published["1"])
    # A multiclass model's probability columns keep their names: the drift monitor reads back the
    # days that model scored before the upgrade under them.
    cfg = multiclass(cfg)
    params = random_params(cfg.features, EXAMPLE_VOCAB, [8], outputs=3, seed=1)
    score_day(
        store,
        cfg,
        str(build_model(tmp_path / "m3.onnx", cfg.features, params, "multiclass", ["1.0", "2.0", "3.0"])),
    )
    out = inference.read_predictions(store, cfg, DAY)
    assert out["prediction"].dtype == np.int64 and set(out["prediction"]) <= {1, 2, 3}
    assert [c for c in out.columns if c.startswith("probability_")] == [
        "probability_1.0",
        "probability_2.0",
        "probability_3.0",
    ]


def test_predictions_are_snappy_parquet_with_delta_integers_and_required_model_columns(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    two_parts(store, cfg)

    score_day(store, cfg, mlp_path)

    manifest = store.read_manifest(partition_prefix(cfg.prefix, "predictions", DAY))
    metadata = pq.read_metadata(pa.BufferReader(store.get_bytes(manifest["parts"][0]["key"])))
    chunks = {metadata.schema.column(i).name: metadata.row_group(0).column(i) for i in range(12)}
    assert {chunk.compression for chunk in chunks.values()} == {"SNAPPY"}
    for name in ("year", "flight", "sched_dep_time", "prediction"):
        assert "DELTA_BINARY_PACKED" in chunks[name].encodings, name
    assert "RLE_DICTIONARY" in chunks["carrier"].encodings
    required = [
        metadata.schema.column(i).name
        for i in range(12)
        if metadata.schema.column(i).max_definition_level == 0
    ]
    assert required == ["score", "model_name", "model_version", "run_id"]  # a class may be null


def test_a_unit_is_read_with_one_get_for_the_footer_and_one_for_its_rows_fetched_meanwhile(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_parts(store, cfg)
    unit = inference.plan_parts(store, cfg, DAY)[2]  # row groups 2 and 3 of the first part
    requests: list[tuple] = []
    for method in ("get_tail", "get_range", "get_bytes"):
        real = getattr(store, method)
        monkeypatch.setattr(
            store,
            method,
            lambda *a, real=real, method=method, **kw: requests.append((method, *a)) or real(*a, **kw),
        )

    result = inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)

    assert result["rows"] == 300
    # the plan's first block, and the footer: as many bytes as the plan found it has
    assert sorted(requests) == [
        ("get_range", unit["source_key"], *unit["first_block"]),
        ("get_tail", unit["source_key"], unit["footer_bytes"]),
    ]


def test_a_unit_planned_without_its_footer_size_reads_a_footer_longer_than_the_guess(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_parts(store, cfg)
    unit = inference.plan_parts(store, cfg, DAY)[0]
    expected = inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)["part"]
    monkeypatch.setattr(inference, "_FOOTER_GUESS", 64)  # far shorter than any footer
    del unit["footer_bytes"]  # as an earlier release planned it

    assert inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)["part"] == expected


def test_a_unit_bigger_than_one_get_reads_each_next_block_ahead_and_scores_the_same_bytes(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = tune(cfg, "inference", {"part_rows": 1200})
    publish_curated(store, whole, DAY, [curated_frame(DAY, 1200)], row_group_size=100)
    (unit,) = inference.plan_parts(store, whole, DAY)
    expected = inference.score_part(store, whole, unit, model_path=mlp_path, **IDENTITY)["part"]
    monkeypatch.setattr(inference, "HOLD_BYTES", 2**14)  # a few of the 12 row groups per GET
    (unit,) = inference.plan_parts(store, whole, DAY)
    fetched_by: list[str] = []
    real = store.get_range
    monkeypatch.setattr(
        store, "get_range", lambda *a: fetched_by.append(threading.current_thread().name) or real(*a)
    )

    part = inference.score_part(store, whole, unit, model_path=mlp_path, **IDENTITY)["part"]

    assert part == expected
    assert len(fetched_by) >= 3
    # every block came from the read-ahead thread: decoding never stopped for a GET of its own
    assert not [name for name in fetched_by if name.startswith("inference-prefetch")]


def test_units_cut_from_one_big_row_group_score_each_row_exactly_once(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    frame = curated_frame(DAY, 700)
    publish_curated(store, cfg, DAY, [frame], row_group_size=1000)  # one row group > part_rows

    assert [(u["row_offset"], u["rows"]) for u in inference.plan_parts(store, cfg, DAY)] == [
        (0, 300),
        (300, 300),
        (600, 100),
    ]
    score_day(store, cfg, mlp_path)

    out = inference.read_predictions(store, cfg, DAY)
    assert sorted(out["flight"]) == sorted(frame["flight"])


def test_a_champion_exported_before_contract_2_still_scores_the_same_predictions(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path
) -> None:
    # mlops_tasks 0.1 models take the categoricals as [N, m] strings; the registry may still serve one.
    params = random_params(cfg.features, EXAMPLE_VOCAB, hidden=[32, 16], seed=7)
    models = {
        contract: str(
            build_model(
                tmp_path / f"c{contract}.onnx", cfg.features, params, classes=[0.0, 1.0], contract=contract
            )
        )
        for contract in (1, 2)
    }
    two_parts(store, cfg)
    scored = {}
    for contract, path in models.items():
        score_day(store, cfg, path)
        scored[contract] = inference.read_predictions(store, cfg, DAY)

    assert len(scored[1]) == 950
    assert scored[1]["prediction"].tolist() == scored[2]["prediction"].tolist()
    assert scored[1]["score"].tolist() == pytest.approx(scored[2]["score"].tolist(), abs=1e-6)


def test_rerun_writes_the_same_keys_and_bytes(store: ObjectStore, cfg: PipelineConfig, mlp_path: str) -> None:
    two_parts(store, cfg)
    prefix = partition_prefix(cfg.prefix, "predictions", DAY)

    score_day(store, cfg, mlp_path)
    first = contents(store, prefix)
    score_day(store, cfg, mlp_path)

    assert contents(store, prefix) == first


def test_batches_scored_at_once_write_the_same_bytes_as_one_at_a_time(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    two_parts(store, cfg)
    prefix = partition_prefix(cfg.prefix, "predictions", DAY)
    outputs = []
    for threads in (1, 3):
        update = {"inference": cfg.inference.model_copy(update={"scoring_threads": threads})}
        score_day(store, cfg.model_copy(update=update), mlp_path)
        outputs.append(contents(store, prefix))

    assert outputs[0] == outputs[1]


def test_killed_attempt_is_invisible_and_the_retry_publishes_each_row_once(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    two_parts(store, cfg)
    partition = partition_prefix(cfg.prefix, "predictions", DAY)
    units = inference.plan_parts(store, cfg, DAY)
    for unit in units[:2]:  # the attempt dies after two units and half an upload
        inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)
    stray = write_part(store, partition, "part-00002.parquet", b"PAR1 truncated", 1)["key"]

    with pytest.raises(FileNotFoundError, match="nothing is published"):
        inference.read_predictions(store, cfg, DAY)

    score_day(store, cfg, mlp_path)

    out = inference.read_predictions(store, cfg, DAY)
    assert len(out) == 950
    assert not out.duplicated(cfg.data.key).any()
    assert stray not in {p["key"] for p in store.read_manifest(partition)["parts"]}
    # unlisted, the stray could be a concurrent run's part: deleted by a publish once it is old
    assert stray in {o.key for o in store.list(partition)}
    monkeypatch.setattr(storage, "UNLISTED_GRACE", dt.timedelta(0))
    score_day(store, cfg, mlp_path)
    assert stray not in {o.key for o in store.list(partition)}


def test_a_unit_planned_on_a_day_validated_again_since_fails_without_retrying(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    """Curated parts are named by their content: a day published again replaces (deletes) the parts
    a plan names. That is a stale plan, not an outage worth retrying."""
    two_parts(store, cfg)
    unit = inference.plan_parts(store, cfg, DAY)[0]
    publish_curated(store, cfg, DAY, [curated_frame(DAY, 710, seed=5)], row_group_size=200)

    with pytest.raises(inference.InferenceInputError, match=r"s3://.*/curated/.*planned on is gone.*Re-run"):
        inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)


def test_predictions_of_a_day_curated_again_after_planning_are_not_published(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    """Run A scores 950 rows; a late file makes the day 1,200 rows and run B publishes them; A's
    publish comes last (a retry, a slow run). It replaced B's day with predictions of rows that are
    no longer the day's, and the new rows went unscored."""
    two_parts(store, cfg)
    late = [
        inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)
        for unit in inference.plan_parts(store, cfg, DAY)
    ]
    publish_curated(store, cfg, DAY, [curated_frame(DAY, 1200, seed=5)], row_group_size=200)
    newer = score_day(store, cfg, mlp_path, run_id="B")
    published = contents(store, partition_prefix(cfg.prefix, "predictions", DAY))

    with pytest.raises(
        inference.PredictionsError, match=r"curated data at s3://.*changed after this run planned"
    ):
        inference.publish_predictions(store, cfg, DAY, late, **IDENTITY)

    assert contents(store, partition_prefix(cfg.prefix, "predictions", DAY)) == published
    manifest = store.read_manifest(partition_prefix(cfg.prefix, "predictions", DAY))
    assert newer["rows"] == manifest["rows"] == 1200
    assert manifest["curated"] == content_id(
        store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY))
    )


def test_a_curated_part_replaced_under_its_key_is_refused_by_planning_and_by_scoring(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    """Ranged reads trust the object at the key: other rows written over a published part were
    scored and published with valid checksums of their own."""
    two_parts(store, cfg)
    unit = inference.plan_parts(store, cfg, DAY)[0]
    other = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(curated_frame(DAY, 720, seed=9), preserve_index=False), other)
    store.put_bytes(unit["source_key"], other.getvalue())

    for step in (
        lambda: inference.plan_parts(store, cfg, DAY),
        lambda: inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY),
    ):
        with pytest.raises(
            storage.CorruptObjectError,
            match=r"s3://.*/curated/.* bytes, but its partition's manifest recorded",
        ):
            step()


def test_two_runs_of_one_day_publishing_in_turn_leave_the_last_runs_whole_day(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    """A scheduled and a manual run of the same day score at once; the first to publish must not
    delete the other's parts."""
    two_parts(store, cfg)
    runs = {run_id: {**IDENTITY, "run_id": run_id} for run_id in ("scheduled", "manual")}
    results = {
        run_id: [
            inference.score_part(store, cfg, unit, model_path=mlp_path, **identity)
            for unit in inference.plan_parts(store, cfg, DAY)
        ]
        for run_id, identity in runs.items()
    }
    for run_id, identity in runs.items():
        inference.publish_predictions(store, cfg, DAY, results[run_id], **identity)

    out = inference.read_predictions(store, cfg, DAY)
    assert len(out) == 950 and set(out["run_id"]) == {"manual"}
    assert not out.duplicated(cfg.data.key).any()


def test_rerun_with_a_new_model_version_replaces_the_day(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str, tmp_path: Path
) -> None:
    two_parts(store, cfg)
    score_day(store, cfg, mlp_path)

    score_day(store, cfg, threshold_model(tmp_path, cfg, 12.0, "v4"), model_version="4")

    out = inference.read_predictions(store, cfg, DAY)
    assert len(out) == 950
    assert set(out["model_version"]) == {"4"}


def test_a_late_run_of_a_model_the_alias_has_left_does_not_replace_the_current_models_day(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str, tmp_path: Path
) -> None:
    """Run A resolved v3, then a rollback made v2 champion and run B published v2's day; A's publish
    (a retry) comes last. The registry's alias is the judge: B's day stays, A's replaces only a day
    whose version the alias has left too."""
    two_parts(store, cfg)
    stale = [
        inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)
        for unit in inference.plan_parts(store, cfg, DAY)
    ]
    score_day(store, cfg, threshold_model(tmp_path, cfg, 12.0, "v2"), model_version="2", run_id="B")
    published = contents(store, partition_prefix(cfg.prefix, "predictions", DAY))

    with pytest.raises(inference.PredictionsError, match="version 2's .run 'B'.*the alias has left"):
        inference.publish_predictions(store, cfg, DAY, stale, **IDENTITY, aliased_version=lambda: "2")
    assert contents(store, partition_prefix(cfg.prefix, "predictions", DAY)) == published

    inference.publish_predictions(store, cfg, DAY, stale, **IDENTITY, aliased_version=lambda: "4")
    assert set(inference.read_predictions(store, cfg, DAY)["model_version"]) == {IDENTITY["model_version"]}


def test_publish_refuses_parts_scored_by_another_model_version(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    two_parts(store, cfg)
    unit = inference.plan_parts(store, cfg, DAY)[0]
    result = inference.score_part(store, cfg, unit, model_path=mlp_path, **{**IDENTITY, "model_version": "2"})

    with pytest.raises(inference.PredictionsError, match="model version 2"):
        inference.publish_predictions(store, cfg, DAY, [result], **IDENTITY)


def test_publishing_without_every_planned_unit_leaves_the_published_day_whole(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    """A caller (or an operator that dropped a skipped unit's result) publishing only some units made
    the readable day shrink to them and deleted the replaced parts."""
    two_parts(store, cfg)
    whole = score_day(store, cfg, mlp_path)
    units = inference.plan_parts(store, cfg, DAY)
    assert len(units) >= 2 and {u["units"] for u in units} == {len(units)}
    first = inference.score_part(store, cfg, units[0], model_path=mlp_path, **IDENTITY)
    assert first["units"] == len(units)

    with pytest.raises(inference.PredictionsError, match=r"unit\(s\) \[1.*planned have no result") as err:
        inference.publish_predictions(store, cfg, DAY, [first], **IDENTITY)

    assert "the published day is left as it is" in str(err.value)
    assert len(inference.read_predictions(store, cfg, DAY)) == whole["rows"]


def test_missing_feature_column_is_reported_with_key_and_column(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    (key,) = publish_curated(store, cfg, DAY, [curated_frame(DAY, 50).drop(columns=["temp"])], 100)
    unit = inference.plan_parts(store, cfg, DAY)[0]

    with pytest.raises(inference.InferenceInputError, match=r"missing") as err:
        inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)
    assert store.uri(key) in str(err.value) and "'temp'" in str(err.value)


def test_feature_column_of_the_wrong_type_is_reported_with_key_and_column(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    (key,) = publish_curated(store, cfg, DAY, [curated_frame(DAY, 50).assign(humid="high")], 100)
    unit = inference.plan_parts(store, cfg, DAY)[0]

    with pytest.raises(inference.InferenceInputError, match=r"'humid' must be numeric") as err:
        inference.score_part(store, cfg, unit, model_path=mlp_path, **IDENTITY)
    assert store.uri(key) in str(err.value)


def test_bool_and_float_categorical_features_score_as_training_encodes_them(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path
) -> None:
    """A config may list a bool or float column as categorical; training and the gate render them
    as "True"/"False" and "5" (features.onnx_inputs on pandas frames): scoring the curated parquet
    gives the same scores, instead of refusing the columns' types."""
    from mlops_tasks.config import ColumnSpec, FeatureSpec
    from mlops_tasks.evaluation import OnnxModel

    columns = [
        *cfg.data.columns,
        ColumnSpec(name="weekend", type="bool"),
        ColumnSpec(name="gate_no", type="float"),
    ]
    features = FeatureSpec(
        numeric=cfg.features.numeric, categorical=[*cfg.features.categorical, "weekend", "gate_no"]
    )
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"columns": columns}), "features": features}
    )
    frame = curated_frame(DAY, 60).assign(
        weekend=[i % 3 == 0 for i in range(60)], gate_no=[i % 4 for i in range(60)]
    )
    frame["gate_no"] = frame["gate_no"].astype(float)
    frame.loc[5, "gate_no"] = np.nan
    publish_curated(store, cfg, DAY, [frame], row_group_size=25)
    vocab = {**EXAMPLE_VOCAB, "weekend": ["True", "False"], "gate_no": ["0", "1", "2"]}
    model_path = build_model(
        tmp_path / "m.onnx", features, random_params(features, vocab, [8], seed=2), classes=[0, 1]
    )

    score_day(store, cfg, str(model_path))

    expected = frame[list(cfg.data.key)].assign(expected=OnnxModel(model_path, cfg).score(frame)[0])
    published = inference.read_predictions(store, cfg, DAY)
    both = expected.merge(published, on=list(cfg.data.key), validate="one_to_one")
    assert len(both) == 60
    np.testing.assert_allclose(both["score"], both["expected"], rtol=1e-6)


def test_shadow_report_compares_agreement_correlation_and_labelled_metrics(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path
) -> None:
    # Ten flights at hours 5..14, late (label 1) from hour 10 on. The champion predicts late from
    # hour 10 (all right), the challenger from hour 12 (wrong at 10 and 11): agreement 0.8.
    frame = curated_frame(DAY, 10).assign(hour=range(5, 15))
    frame["dep_delay"] = (frame["hour"] >= 10) * 30.0
    publish_curated(store, cfg, DAY, [frame], row_group_size=100)
    champion = {**IDENTITY, "model_version": "3"}
    challenger = {**IDENTITY, "model_version": "4"}
    score_day(store, cfg, threshold_model(tmp_path, cfg, 9.5, "champion"), **champion)
    predictions = contents(store, partition_prefix(cfg.prefix, "predictions", DAY))
    score_day(
        store, cfg, threshold_model(tmp_path, cfg, 11.5, "challenger"), "predictions_shadow", **challenger
    )

    report = inference.shadow_report(store, cfg, DAY, champion=champion, challenger=challenger)

    assert report["rows"] == {
        "champion": 10,
        "challenger": 10,
        "compared": 10,
        "labelled": 10,
        "measured": 10,
        "without_key": {"champion": 0, "challenger": 0},
        "sampled_fraction": 1.0,
    }
    assert report["agreement_rate"] == pytest.approx(0.8)
    assert report["score_correlation"]["spearman"] == pytest.approx(1.0)
    assert 0.5 < report["score_correlation"]["pearson"] < 1.0
    assert report["metrics"]["champion"]["accuracy"] == 1.0
    assert report["metrics"]["challenger"]["accuracy"] == pytest.approx(0.8)
    assert report["metrics"]["delta"]["accuracy"] == pytest.approx(-0.2)
    assert report["metrics"]["delta"]["roc_auc"] == pytest.approx(0.0)
    stored = store.get_json(partition_prefix(cfg.prefix, "reports/shadow", DAY) + "shadow.json")
    assert stored == {k: v for k, v in report.items() if k != "uri"}
    assert contents(store, partition_prefix(cfg.prefix, "predictions", DAY)) == predictions


def test_a_day_bigger_than_the_shadow_sample_is_compared_on_the_same_keys_of_every_side(
    store: ObjectStore, cfg: PipelineConfig, tmp_path: Path
) -> None:
    """The report read all three sides whole into pandas (about 1 KB a row: 1.7 GB for a day of 2M
    rows); a big day is compared on a key sample, each part filtered as it is read."""
    frame = curated_frame(DAY, 4000)
    frame["dep_delay"] = (frame["hour"] >= 12) * 30.0
    publish_curated(store, cfg, DAY, [frame], row_group_size=500)
    champion, challenger = {**IDENTITY, "model_version": "3"}, {**IDENTITY, "model_version": "4"}
    score_day(store, cfg, threshold_model(tmp_path, cfg, 11.5, "champion"), **champion)
    score_day(
        store, cfg, threshold_model(tmp_path, cfg, 13.5, "challenger"), "predictions_shadow", **challenger
    )
    whole = inference.shadow_report(store, cfg, DAY, champion=champion, challenger=challenger)
    sampled_cfg = tune(cfg, "inference", {"shadow_sample_rows": 1000})

    sampled = inference.shadow_report(store, sampled_cfg, DAY, champion=champion, challenger=challenger)

    rows = sampled["rows"]
    assert (rows["champion"], rows["challenger"], rows["sampled_fraction"]) == (4000, 4000, 0.25)
    assert 850 < rows["compared"] < 1150  # a quarter of the keys ...
    assert rows["compared"] == rows["labelled"] == rows["measured"]  # ... the same ones on every side
    assert sampled["agreement_rate"] == pytest.approx(whole["agreement_rate"], abs=0.05)
    assert sampled["metrics"]["champion"]["accuracy"] == 1.0 == whole["metrics"]["champion"]["accuracy"]
    again = inference.shadow_report(store, sampled_cfg, DAY, champion=champion, challenger=challenger)
    assert again == sampled  # the keys' hash, not a random draw


def publish_frame(
    store: ObjectStore, cfg: PipelineConfig, area: str, frame: pd.DataFrame, **extra: str
) -> None:
    """``frame`` published as the day's only part of ``area`` (predictions written by hand)."""
    partition = partition_prefix(cfg.prefix, area, DAY)
    data = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    part = write_part(store, partition, "part-00000.parquet", data.getvalue(), len(frame))
    publish_manifest(store, partition, [part], **extra)


def shadow_of(
    store: ObjectStore, cfg: PipelineConfig, keys: dict, champion: dict, challenger: dict, target: list
) -> dict:
    """The shadow report of a day whose curated rows, predictions and shadow predictions are given."""
    publish_frame(store, cfg, "curated", pd.DataFrame({**keys, cfg.target.column: target}))
    publish_frame(store, cfg, "predictions", pd.DataFrame({**keys, **champion}), model_version="1")
    publish_frame(store, cfg, "predictions_shadow", pd.DataFrame({**keys, **challenger}), model_version="2")
    return inference.shadow_report(
        store, cfg, DAY, champion={"model_version": "1"}, challenger={"model_version": "2"}
    )


def keyed_by_flight(cfg: PipelineConfig, **target: object) -> PipelineConfig:
    update: dict = {"data": cfg.data.model_copy(update={"key": ["flight"]})}
    if target:
        update["target"] = cfg.target.model_copy(update=target)
    return cfg.model_copy(update=update)


def test_shadow_report_pairs_no_rows_without_a_key_and_refuses_repeated_keys(
    store: ObjectStore, cfg: PipelineConfig
) -> None:
    cfg = keyed_by_flight(cfg)
    flights = {"flight": pd.array([None, None, 3], dtype="Int64")}
    report = shadow_of(
        store,
        cfg,
        flights,
        {"prediction": [1, 0, 0], "score": [0.9, 0.1, 0.1]},
        {"prediction": [0, 1, 0], "score": [0.1, 0.9, 0.1]},
        [30.0, 0.0, 0.0],
    )
    assert report["rows"] == {
        "champion": 3,
        "challenger": 3,
        "compared": 1,
        "labelled": 1,
        "measured": 1,
        "without_key": {"champion": 2, "challenger": 2},
        "sampled_fraction": 1.0,
    }
    assert report["agreement_rate"] == 1.0

    with pytest.raises(
        inference.PredictionsError, match=r"keys repeat within a day \(e\.g\. \[\{'flight': 1\}\]\)"
    ):
        shadow_of(
            store,
            cfg,
            {"flight": [1, 1, 2]},
            {"prediction": [1, 1, 0], "score": [0.9, 0.9, 0.1]},
            {"prediction": [1, 1, 1], "score": [0.8, 0.8, 0.8]},
            [30.0, 30.0, 0.0],
        )


def test_a_target_that_is_also_a_key_column_labels_the_shadow_metrics(
    store: ObjectStore, cfg: PipelineConfig
) -> None:
    """The curated rows were read with the column named twice, and the label derived from a frame."""
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"key": ["flight", "carrier"]}),
            "target": TargetSpec(task="multiclass", column="carrier"),
        }
    )
    keys = {"flight": [1, 2, 3], "carrier": ["AA", "UA", "AA"]}
    publish_frame(store, cfg, "curated", pd.DataFrame(keys))
    for area, predicted, version in (("predictions", "UA", "1"), ("predictions_shadow", "AA", "2")):
        frame = pd.DataFrame({**keys, "prediction": ["AA", "UA", predicted], "score": [0.9, 0.8, 0.6]})
        publish_frame(store, cfg, area, frame, model_version=version)

    report = inference.shadow_report(
        store, cfg, DAY, champion={"model_version": "1"}, challenger={"model_version": "2"}
    )

    assert report["rows"]["measured"] == 3 and report["agreement_rate"] == pytest.approx(2 / 3)
    assert report["metrics"]["champion"]["accuracy"] == pytest.approx(2 / 3)
    assert report["metrics"]["challenger"]["accuracy"] == 1.0


def test_shadow_metrics_compare_both_models_on_the_rows_both_scored(
    store: ObjectStore, cfg: PipelineConfig
) -> None:
    """A row a model scored NaN has no error to measure; leaving it out of that model's metrics only
    would let a model that fails on the hard rows look better than one that scores them."""
    cfg = keyed_by_flight(cfg, task="regression", positive_when=None)
    nan_in_the_middle = np.array([1.0, np.nan, 2.0], np.float32)
    report = shadow_of(
        store,
        cfg,
        {"flight": [1, 2, 3]},
        {"prediction": nan_in_the_middle, "score": nan_in_the_middle},
        {"prediction": np.array([1.0, 1.5, 2.0], np.float32), "score": np.array([1.0, 1.5, 2.0], np.float32)},
        [1.0, 2.0, 4.0],
    )
    both_rows = {"rmse": pytest.approx(np.sqrt(2.0)), "mae": pytest.approx(1.0)}  # flights 1 and 3
    assert report["metrics"]["champion"] == report["metrics"]["challenger"] == both_rows
    assert report["metrics"]["delta"] == {"rmse": 0.0, "mae": 0.0}
    assert (report["rows"]["labelled"], report["rows"]["measured"]) == (3, 2)
    # numbers that never quite agree: compared by correlation and difference, not an agreement rate
    assert report["agreement_rate"] is None


def test_a_class_either_model_could_not_predict_never_agrees(store: ObjectStore, cfg: PipelineConfig) -> None:
    cfg = keyed_by_flight(cfg)
    missing_on_both = pd.array([1, None, 0, None], dtype="Int64")
    report = shadow_of(
        store,
        cfg,
        {"flight": [1, 2, 3, 4]},
        {"prediction": missing_on_both, "score": [0.9, np.nan, 0.1, np.nan]},
        {"prediction": pd.array([1, None, 1, 0], dtype="Int64"), "score": [0.8, np.nan, 0.7, 0.2]},
        [30.0, 0.0, 0.0, 0.0],
    )
    assert report["agreement_rate"] == 0.25  # flight 1 only: missing on both sides is no agreement


def test_shadow_report_refuses_predictions_of_another_champion_version(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str
) -> None:
    two_parts(store, cfg)
    score_day(store, cfg, mlp_path)
    score_day(store, cfg, mlp_path, "predictions_shadow", model_version="4")

    with pytest.raises(inference.PredictionsError, match="model_version '3'"):
        inference.shadow_report(
            store,
            cfg,
            DAY,
            champion={**IDENTITY, "model_version": "2"},
            challenger={**IDENTITY, "model_version": "4"},
        )


_ARROW_POOLS: list[pa.MemoryPool] = []  # a proxy pool must outlive every buffer it handed out


def scoring_peak_bytes(store: ObjectStore, cfg: PipelineConfig, unit: dict, model_path: str) -> int:
    """Peak of Python/numpy allocations (tracemalloc) plus Arrow's allocations while scoring."""
    previous = pa.default_memory_pool()
    arrow = pa.proxy_memory_pool(previous)
    _ARROW_POOLS.append(arrow)
    pa.set_memory_pool(arrow)
    tracemalloc.start()
    try:
        inference.score_part(store, cfg, unit, model_path=model_path, **IDENTITY)
        return tracemalloc.get_traced_memory()[1] + arrow.max_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)


def test_peak_memory_of_scoring_does_not_grow_with_the_rows_of_a_unit(
    store: ObjectStore, cfg: PipelineConfig, mlp_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One part cut into a 4-row-group unit and a 1.06-row-group unit (row groups of the output, which
    # the writer gathers in memory): one scores 3.8x the rows. Both units are bigger than the input
    # bytes one GET may fetch (lowered from 32 MiB so that small test files exceed it).
    monkeypatch.setattr(inference, "HOLD_BYTES", 2**20)
    limit = 4 * inference.ROW_GROUP_ROWS
    big = tune(cfg, "inference", {"part_rows": limit, "batch_rows": 1024})
    publish_curated(store, big, DAY, [curated_frame(DAY, limit + 17 * 4096)], row_group_size=4096)
    big_unit, small_unit = inference.plan_parts(store, big, DAY)
    assert (big_unit["rows"], small_unit["rows"]) == (limit, 17 * 4096)

    small = scoring_peak_bytes(store, big, small_unit, mlp_path)
    large = scoring_peak_bytes(store, big, big_unit, mlp_path)

    assert large < 1.5 * small, f"scoring 3.8x the rows raised the peak from {small} to {large} bytes"


def test_a_key_column_named_label_is_joined_as_a_key(store: ObjectStore, cfg: PipelineConfig) -> None:
    """The derived label went into a column "label" beside the keys, replacing a key of that name."""
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"key": ["label"]})})
    report = shadow_of(
        store,
        cfg,
        {"label": [7, 8, 9]},
        {"prediction": [1, 0, 0], "score": [0.9, 0.1, 0.2]},
        {"prediction": [1, 1, 0], "score": [0.8, 0.6, 0.1]},
        [30.0, 0.0, 0.0],
    )
    assert (report["rows"]["labelled"], report["agreement_rate"]) == (3, pytest.approx(2 / 3))
    assert report["metrics"]["champion"]["accuracy"] == 1.0
