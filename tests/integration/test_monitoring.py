"""The drift monitor end to end (issue #6): the champion comes from the real MLflow registry, its
reference is the DVC data version its ``data_version`` tag names, and the scored window is read part by
part from the moto S3 endpoint, as :func:`mlops_tasks.monitoring.run_drift_monitor` does in the DAG.

Layout: the champion was trained on two curated days (four parts, 1250 rows); the monitored window is
four days ending on DAY, three of them scored (five parts, 1700 rows) and one curated but never scored.
``drift.sample_rows`` = 1000 is below both sides' rows, so the monitor really samples.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlops_tasks import drift, features, inference, registry, tracking
from mlops_tasks.config import FeatureSpec, PipelineConfig, TargetSpec, load_config
from mlops_tasks.evaluation import compute_metrics
from mlops_tasks.monitoring import MonitoringError, run_drift_monitor, state_key
from mlops_tasks.storage import ObjectStore, partition_prefix
from mlops_tasks.versioning import create_data_version, dvc_object_key, read_record
from tests.conftest import EXAMPLE_CONFIG, make_store, tune

from .onnx_fixtures import EXAMPLE_VOCAB, build_model, curated_frame, publish_curated, random_params

DAY = dt.date(2013, 3, 4)  # last day of the monitored window
# day -> rows of each curated part (one seeded frame per part, flight numbers unique per day)
REFERENCE = {dt.date(2013, 1, 1): [300, 250, 200], dt.date(2013, 1, 2): [500]}
SCORED = {dt.date(2013, 3, 1): [400, 300], dt.date(2013, 3, 3): [500], dt.date(2013, 3, 4): [250, 250]}
UNSCORED = {dt.date(2013, 3, 2): [300]}  # curated, never scored: counts as new data, not as current
PROMOTED_AUC = 0.9  # the champion's gate metric; the random model's live AUC is far below it
REPORTS = f"reports/drift/date={DAY.isoformat()}/"
RUN = "asset_triggered__2013-03-04"  # the DAG run checking DAY
SCORE = features.SCORE_OUTPUT

Frames = dict[dt.date, list[pd.DataFrame]]


@pytest.fixture(scope="module")
def cfg() -> PipelineConfig:
    """The example with small samples, a four-day window, a non-feature critical column (dep_time) and
    a new-rows trigger that the window's 2000 curated rows reach exactly."""
    base = load_config(EXAMPLE_CONFIG)
    name = f"monitor_{uuid.uuid4().hex[:8]}"
    knobs = {
        "window_days": 4,
        "sample_rows": 1000,
        "report_rows": 1000,
        "min_rows": 300,
        "critical_columns": ["temp", "dewp", "dep_time"],
        "retrain_after_new_rows": 2000,
    }
    return base.model_copy(
        update={
            "drift": base.drift.model_copy(update=knobs),
            "mlflow": base.mlflow.model_copy(update={"experiment": name, "registered_model": name}),
            "inference": base.inference.model_copy(update={"batch_rows": 256, "intra_op_threads": 1}),
        }
    )


def make_frames(
    layout: dict[dt.date, list[int]], change: Callable[[pd.DataFrame], pd.DataFrame] | None = None
) -> Frames:
    """Seeded curated frames per day and part; ``change`` edits each (e.g. a warmer window)."""
    frames: Frames = {}
    for day, sizes in layout.items():
        first = np.cumsum([1, *sizes[:-1]])
        frames[day] = [
            curated_frame(day, rows, seed=day.toordinal() * 10 + i, first_flight=int(first[i]))
            for i, rows in enumerate(sizes)
        ]
        if change is not None:
            frames[day] = [change(f) for f in frames[day]]
    return frames


def publish(store: ObjectStore, cfg: PipelineConfig, frames: Frames) -> None:
    for day, parts in frames.items():
        publish_curated(store, cfg, day, parts, row_group_size=128)


def publish_reference(store: ObjectStore, cfg: PipelineConfig) -> str:
    """Curate the reference days and freeze them as a data version, as the training DAG does."""
    publish(store, cfg, make_frames(REFERENCE))
    return create_data_version(store, cfg, sorted(REFERENCE))["data_version"]


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    data_version: str
    model_path: str


@pytest.fixture(scope="module")
def champion(
    cfg: PipelineConfig, mlflow_server: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Champion:
    """A small ONNX model registered as champion, tagged with the reference's data version.

    The data version is a hash of the curated bytes, so every test bucket that publishes the same
    reference frames recreates the very version this tag names (checked in ``world``)."""
    data_version = publish_reference(make_store(s3_endpoint), cfg)
    params = random_params(cfg.features, EXAMPLE_VOCAB, hidden=[8], seed=5)
    model = build_model(
        tmp_path_factory.mktemp("champion") / "model.onnx", cfg.features, params, classes=[0.0, 1.0]
    )
    return register_champion(cfg, mlflow_server, str(model), data_version)


def register_champion(
    cfg: PipelineConfig,
    tracking_uri: str,
    model_path: str,
    data_version: str,
    metric: str = "roc_auc",
    promoted: float = PROMOTED_AUC,
) -> Champion:
    """Log ``model_path`` as a run's model/model.onnx and register it through a passed gate that
    measured ``metric`` = ``promoted``."""
    client = tracking.client(tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    run = client.create_run(
        experiment.experiment_id if experiment else client.create_experiment(cfg.mlflow.experiment)
    )
    client.log_artifact(run.info.run_id, model_path, "model")
    client.set_terminated(run.info.run_id)
    decision = {
        "promote": True,
        "reason": "test champion",
        "primary_metric": metric,
        "challenger": {"metrics": {metric: promoted}},
        "champion_version": None,
        "floor_failed": False,
    }
    result = registry.register(
        cfg, run.info.run_id, tracking_uri=tracking_uri, decision=decision, data_version=data_version
    )
    assert result["promoted"]
    return Champion(result["version"], run.info.run_id, data_version, model_path)


@pytest.fixture
def world(store: ObjectStore, cfg: PipelineConfig, champion: Champion) -> ObjectStore:
    """A fresh bucket holding the champion's reference data version."""
    assert publish_reference(store, cfg) == champion.data_version
    return store


def score(
    store: ObjectStore,
    cfg: PipelineConfig,
    champion: Champion,
    days: list[dt.date],
    version: str | None = None,
) -> None:
    """Plan, score and publish each day with the champion, as the batch-inference DAG does (published
    as model ``version`` when given: predictions another version made)."""
    identity = {
        "model_name": cfg.registered_model_name,
        "model_version": version or champion.version,
        "run_id": champion.run_id,
    }
    for day in days:
        results = [
            inference.score_part(store, cfg, unit, model_path=champion.model_path, **identity)
            for unit in inference.plan_parts(store, cfg, day)
        ]
        inference.publish_predictions(store, cfg, day, results, **identity)


def publish_window(
    store: ObjectStore,
    cfg: PipelineConfig,
    champion: Champion,
    scored: dict[dt.date, list[int]] = SCORED,
    change: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> Frames:
    """Curate the window (scored days and the unscored one) and score the scored days; returns the
    scored days' frames."""
    frames = make_frames(scored, change)
    publish(store, cfg, frames | make_frames(UNSCORED, change))
    score(store, cfg, champion, sorted(scored))
    return frames


def monitor(store: ObjectStore, cfg: PipelineConfig, mlflow_server: str, run: str = RUN) -> dict:
    return run_drift_monitor(store, cfg, DAY, tracking_uri=mlflow_server, check_run_id=run)


def warmer(frame: pd.DataFrame) -> pd.DataFrame:
    """A summer window: the critical column temp moves far from the winter reference."""
    return frame.assign(temp=frame["temp"] + 25)


def earlier_check(store: ObjectStore, cfg: PipelineConfig) -> bytes:
    """Store the state an earlier check left (a trigger in February); returns its bytes."""
    state = {
        "triggers": ["2013-02-20"],
        "last_check": {"day": "2013-03-03", "status": "no_drift", "retrain": False},
    }
    store.put_json(state_key(cfg), state)
    return store.get_bytes(state_key(cfg))


def assert_refused_without_trace(store: ObjectStore, cfg: PipelineConfig, state: bytes) -> None:
    """A refused check triggers nothing: the state is as the earlier check left it, and no report."""
    assert store.get_bytes(state_key(cfg)) == state
    assert store.list(f"{cfg.prefix}/reports/drift/") == []


# -- the decision -----------------------------------------------------------------------------------


def in_order(frames: Frames) -> list[pd.DataFrame]:
    """Days ascending, parts in manifest order: the order in which the monitor reads and samples them."""
    return [frame for day in sorted(frames) for frame in frames[day]]


def current_sample(
    store: ObjectStore, cfg: PipelineConfig, window: Frames, outputs: tuple[str, ...] = (SCORE,)
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(current, its seeded sample): the scored days' rows joined with their published ``outputs``, and
    the rows of it the monitor samples (``drift.sample_rows`` of them, seeded)."""
    keys = list(cfg.data.key)
    published = [
        inference.read_predictions(store, cfg, day, columns=[*keys, *outputs]) for day in sorted(window)
    ]
    current = pd.concat(in_order(window), ignore_index=True).merge(
        pd.concat(published, ignore_index=True), on=keys, how="left", validate="one_to_one"
    )
    assert current[SCORE].notna().all()
    limit, seed = cfg.drift.sample_rows, cfg.drift.seed
    picked = np.sort(np.random.default_rng(seed).choice(len(current), limit, replace=False))
    return current, current.iloc[picked].reset_index(drop=True)


def in_memory_decision(
    store: ObjectStore, cfg: PipelineConfig, champion: Champion, window: Frames, new_rows: int
) -> tuple[dict, dict]:
    """compare + decide on the whole concatenated frames, as the drift module's docstring defines them:
    reference = the version's parts in day/part order, scored by the champion; current = the scored
    days' rows with their published scores; live metric on the seeded sample of the current rows."""
    reference = pd.concat(in_order(make_frames(REFERENCE)), ignore_index=True)
    session = inference.make_session(champion.model_path, cfg)
    reference_scores = session.run([SCORE], features.onnx_inputs(reference, cfg.features))[0]
    current, sample = current_sample(store, cfg, window)
    labels = features.derive_label(sample, cfg.target)
    known = labels.notna().to_numpy()
    live = compute_metrics("binary", labels[known].to_numpy(), sample[SCORE].to_numpy()[known])
    comparison = drift.compare(
        cfg,
        reference,
        current,
        reference_scores=reference_scores,
        current_scores=current[SCORE].to_numpy(),
    )
    decision = drift.decide(
        cfg,
        comparison,
        day=DAY,
        state=None,
        new_rows_since_training=new_rows,
        live_metric_drop=PROMOTED_AUC - live["roc_auc"],
    )
    return decision, comparison


def some_labels_pending(frame: pd.DataFrame) -> pd.DataFrame:
    """A warmer window whose latest flights have no dep_delay yet (labels not arrived)."""
    frame = warmer(frame)
    return frame.assign(dep_delay=frame["dep_delay"].where(frame["hour"] < 20))


def test_monitor_decision_equals_compare_and_decide_on_the_concatenated_window(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    window = publish_window(world, cfg, champion, change=some_labels_pending)
    new_rows = sum(sum(sizes) for sizes in (SCORED | UNSCORED).values())

    result = monitor(world, cfg, mlflow_server)

    expected, comparison = in_memory_decision(world, cfg, champion, window, new_rows)
    pending = int(current_sample(world, cfg, window)[1]["dep_delay"].isna().sum())
    assert {k: result[k] for k in expected} == expected
    assert (result["status"], result["retrain"], result["champion_version"]) == (
        "drift",
        True,
        champion.version,
    )
    assert result["rows"] == {"reference": 1250, "current": 1700}
    assert "temp" in result["drifted_critical"]
    assert any(r.startswith("live roc_auc dropped by") for r in result["reasons"])
    live = result["live_metric"]
    assert (live["metric"], live["promoted"], live["labelled_rows"]) == (
        "roc_auc",
        PROMOTED_AUC,
        1000 - pending,
    )
    assert "skipped" not in live and result["skipped_predictions"] == []
    assert f"{new_rows} new validated rows since training (>= 2000)" in result["reasons"]

    stored = world.get_json(f"{cfg.prefix}/{REPORTS}drift.json")
    assert result["report_json_uri"] == world.uri(f"{cfg.prefix}/{REPORTS}drift.json")
    # a retrain links its own copy of the page: a later check of the day replaces drift.html
    page = world.get_bytes(f"{cfg.prefix}/{REPORTS}drift.html")
    assert world.get_bytes(world.key_of(result["report_html_uri"])) == page
    assert result["report_html_uri"].startswith(world.uri(f"{cfg.prefix}/{REPORTS}retrain-"))
    assert stored["decision"] == expected
    assert stored["comparison"]["columns"] == comparison["columns"]
    assert {k: stored["comparison"]["rows"][k] for k in ("reference_compared", "current_compared")} == {
        "reference_compared": 1000,
        "current_compared": 1000,
    }
    assert b"<html" in world.get_bytes(f"{cfg.prefix}/{REPORTS}drift.html")[:300]
    assert world.get_json(state_key(cfg)) == {
        "triggers": [{"day": DAY.isoformat(), "run_id": RUN}],
        "last_check": {"day": DAY.isoformat(), "status": "drift", "retrain": True},
    }


def test_a_day_s_retrain_is_requested_once_however_many_runs_check_it(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    publish_window(world, cfg, champion, change=warmer)
    earlier_check(world, cfg)  # a state written before triggers named their run: a bare day

    first = monitor(world, cfg, mlflow_server)
    retry = monitor(world, cfg, mlflow_server)  # the same run again, e.g. a task retry
    other = monitor(world, cfg, mlflow_server, run="scheduled__2013-03-04")

    assert (first["status"], first["retrain"]) == ("drift", True)
    assert {k: retry[k] for k in first} == first
    assert (other["status"], other["retrain"], other["requested_by"]) == ("already_requested", False, RUN)
    assert other["reasons"] == first["reasons"]
    assert world.get_json(state_key(cfg))["triggers"] == [
        {"day": "2013-02-20", "run_id": None},
        {"day": DAY.isoformat(), "run_id": RUN},
    ]


def another_check_stores(monkeypatch: pytest.MonkeyPatch, store: ObjectStore, state: dict) -> list:
    """Make another check store ``state`` (its trigger) right after this check read the cooldown state
    and before its write; returns the states this check decided on."""
    update, seen = store.update_json, []

    def racing(key: str, change: Callable[[dict | None], dict], attempts: int = 5) -> dict:
        def overtaken(current: dict | None) -> dict:
            seen.append(current)
            if len(seen) == 1:
                store.put_json(key, state)
            return change(current)

        return update(key, overtaken, attempts)

    monkeypatch.setattr(store, "update_json", racing)
    return seen


@pytest.mark.parametrize("other_day", [DAY, DAY - dt.timedelta(days=2)], ids=["same_day", "nearby_day"])
def test_a_check_overtaken_by_another_run_s_trigger_does_not_request_a_second_retrain(
    world: ObjectStore,
    cfg: PipelineConfig,
    champion: Champion,
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
    other_day: dt.date,
) -> None:
    publish_window(world, cfg, champion, change=warmer)  # drifts: a retrain unless another was requested
    other = {
        "triggers": [{"day": other_day.isoformat(), "run_id": "scheduled__other"}],
        "last_check": {"day": other_day.isoformat(), "status": "drift", "retrain": True},
    }
    seen = another_check_stores(monkeypatch, world, other)

    result = monitor(world, cfg, mlflow_server)

    assert seen == [None, other]  # the conditional write lost, and the check decided again
    assert result["retrain"] is False and result["reasons"]
    if other_day == DAY:
        assert (result["status"], result["requested_by"]) == ("already_requested", "scheduled__other")
    else:
        until = other_day + dt.timedelta(days=cfg.drift.cooldown_days)
        assert (result["status"], result["cooldown_until"]) == ("cooldown", until.isoformat())
    assert world.get_json(state_key(cfg)) == {
        "triggers": other["triggers"],  # the other run's trigger only
        "last_check": {"day": DAY.isoformat(), "status": result["status"], "retrain": False},
    }
    stored = world.get_json(f"{cfg.prefix}/{REPORTS}drift.json")["decision"]
    assert stored == {k: result[k] for k in stored}  # the report records the committed decision


# -- issue #6: bad inputs ---------------------------------------------------------------------------


def second_part(store: ObjectStore, cfg: PipelineConfig, version: str) -> list[str]:
    """The keys of a file the data version's record lists (the 1st day's 2nd part): its curated part
    and its copy in the DVC remote, which the reference is read from when the part is gone."""
    file = read_record(store, cfg, version)["files"][1]
    return [file["curated_key"], dvc_object_key(file["md5"])]


def delete_part(store: ObjectStore, cfg: PipelineConfig, version: str) -> str:
    keys = second_part(store, cfg, version)
    store.delete(keys)
    return store.uri(keys[1])


def overwrite_part(store: ObjectStore, cfg: PipelineConfig, version: str) -> str:
    keys = second_part(store, cfg, version)
    for key in keys:
        store.put_bytes(key, b"not the parquet bytes the record hashed")
    return store.uri(keys[1])


def delete_record(store: ObjectStore, cfg: PipelineConfig, version: str) -> str:
    key = f"{cfg.prefix}/data_versions/{version}.json"
    store.delete([key])
    return store.uri(key)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (delete_part, "does not exist either"),
        (overwrite_part, "has other bytes than recorded too"),
        (delete_record, "is unknown"),
    ],
    ids=["part_missing", "part_overwritten", "record_missing"],
)
def test_missing_or_unreadable_reference_stops_the_monitor_without_trigger(
    world: ObjectStore,
    cfg: PipelineConfig,
    champion: Champion,
    mlflow_server: str,
    damage: Callable[[ObjectStore, PipelineConfig, str], str],
    message: str,
) -> None:
    publish_window(world, cfg, champion, change=warmer)  # would trigger a retrain if compared
    state = earlier_check(world, cfg)
    named = damage(world, cfg, champion.data_version)

    with pytest.raises(MonitoringError) as raised:
        monitor(world, cfg, mlflow_server)

    text = str(raised.value)
    assert f"champion v{champion.version} (data version {champion.data_version})" in text
    assert named in text and message in text and "No retraining is triggered" in text
    assert_refused_without_trace(world, cfg, state)


@pytest.mark.parametrize("data_version", [None, ""], ids=["no_model", "champion_without_data_version"])
def test_no_champion_with_a_data_version_stops_the_monitor(
    store: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str, data_version: str | None
) -> None:
    name = f"none_{uuid.uuid4().hex[:8]}"
    other = tune(cfg, "mlflow", {"registered_model": name})
    publish_window(store, other, champion, change=warmer)
    state = earlier_check(store, other)
    if data_version is not None:
        register_champion(other, mlflow_server, champion.model_path, data_version)

    with pytest.raises(MonitoringError, match=f"{name}: no champion with a data version"):
        monitor(store, other, mlflow_server)
    assert_refused_without_trace(store, other, state)


@pytest.mark.parametrize(
    ("scored", "current_rows"),
    [({}, 0), ({DAY: [120, 80]}, 200)],
    ids=["no_scored_day", "fewer_than_min_rows"],
)
def test_too_little_scored_data_is_insufficient_data_without_trigger_or_html(
    world: ObjectStore,
    cfg: PipelineConfig,
    champion: Champion,
    mlflow_server: str,
    scored: dict,
    current_rows: int,
) -> None:
    publish_window(world, cfg, champion, scored=scored, change=warmer)

    result = monitor(world, cfg, mlflow_server)

    assert_insufficient(world, cfg, result, current_rows)


def assert_insufficient(store: ObjectStore, cfg: PipelineConfig, result: dict, current_rows: int) -> None:
    """No decision, no trigger, no Evidently HTML: only drift.json, and the check in the state."""
    assert (result["status"], result["retrain"], result["report_html_uri"]) == (
        "insufficient_data",
        False,
        None,
    )
    assert result["rows"] == {"reference": 1250, "current": current_rows}
    assert result["reasons"] == [f"current has {current_rows} rows, fewer than drift.min_rows=300"]
    assert [o.key for o in store.list(f"{cfg.prefix}/reports/drift/")] == [
        f"{cfg.prefix}/{REPORTS}drift.json"
    ]
    assert store.get_json(state_key(cfg)) == {
        "triggers": [],
        "last_check": {"day": DAY.isoformat(), "status": "insufficient_data", "retrain": False},
    }


def test_a_later_check_with_too_little_data_keeps_the_day_s_trigger(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    publish_window(world, cfg, champion, change=warmer)
    assert monitor(world, cfg, mlflow_server)["retrain"] is True
    world.delete_prefix(f"{cfg.prefix}/predictions/")  # the window's scores withdrawn, e.g. to re-score

    later = monitor(world, cfg, mlflow_server, run="manual__rerun")

    assert (later["status"], later["retrain"], later["share_drifted"]) == ("insufficient_data", False, None)
    # the earlier check's Evidently report of the day is gone, not linked as this check's
    assert not world.exists(f"{cfg.prefix}/{REPORTS}drift.html")
    assert world.get_json(state_key(cfg))["triggers"] == [{"day": DAY.isoformat(), "run_id": RUN}]


def test_rows_curated_after_scoring_do_not_count_as_current_rows(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    publish_window(world, cfg, champion, scored={DAY: [250]}, change=warmer)
    publish(world, cfg, make_frames({DAY: [250, 100]}, warmer))  # re-curated: 100 late rows, not scored

    result = monitor(world, cfg, mlflow_server)

    assert_insufficient(world, cfg, result, 250)


def test_scored_rows_no_longer_curated_do_not_count_as_current_rows(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    publish_window(world, cfg, champion, scored={DAY: [250, 150]}, change=warmer)
    publish(world, cfg, make_frames({DAY: [250]}, warmer))  # re-curated without the 150 rows of part 2

    result = monitor(world, cfg, mlflow_server)

    assert_insufficient(world, cfg, result, 250)


def test_a_config_without_data_key_stops_the_monitor_naming_the_field(
    world: ObjectStore, cfg: PipelineConfig, mlflow_server: str
) -> None:
    keyless = cfg.model_copy(update={"data": cfg.data.model_copy(update={"key": []})})
    with pytest.raises(
        MonitoringError, match=r"joins scored rows to their curated features on data\.key, which is empty"
    ):
        monitor(world, keyless, mlflow_server)


def test_columns_the_window_has_no_value_of_are_a_data_quality_problem_with_their_reason(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str, webhook: list[dict]
) -> None:
    """A feed that broke (the weather join found nothing) is not drift to retrain on: a model trained
    on the window would learn the breakage. The check says which columns, and requests nothing for
    them (here the window's new rows and live metric request a retrain of their own: it goes ahead)."""
    # temp: all-NaN doubles (critical); dest: all-null strings (a parquet column of type null).
    publish_window(world, cfg, champion, change=lambda f: f.assign(temp=np.nan, dest=None))

    result = monitor(world, cfg, mlflow_server)

    reason = f"all values are missing in current (scored rows {min(SCORED)}..{DAY})"
    assert result["retrain"] and not [r for r in result["reasons"] if "temp" in r or "dest" in r]
    assert set(result["missing_values_columns"]) == {"temp", "dest"}
    assert any(
        r.startswith("column temp: 100% of its values missing, against 0%") for r in result["data_quality"]
    )
    quiet = tune(cfg, "drift", {"retrain_after_new_rows": None, "max_metric_drop": 1.0})
    alone = run_drift_monitor(world, quiet, DAY, tracking_uri=mlflow_server, check_run_id="other")
    assert (alone["status"], alone["retrain"], alone["reasons"]) == (
        "data_quality",
        False,
        alone["data_quality"],
    )
    stored = world.get_json(f"{cfg.prefix}/{REPORTS}drift.json")
    for summary in (stored["comparison"], stored["evidently"]):
        for column in ("temp", "dest"):
            entry = summary["columns"][column]
            assert (entry["drifted"], entry["missing_values"], entry["stat_test"], entry["reason"]) == (
                False,
                True,
                None,
                reason,
            )
    assert world.exists(f"{cfg.prefix}/{REPORTS}drift.html")

    # The check's task announces it: no retrain alert will.
    from mlops_tasks.airflow.operators import DriftCheckOperator

    operator = DriftCheckOperator(task_id="drift_check", pipeline=cfg.name, day=DAY.isoformat())
    operator.__dict__.update(store=world, config=cfg, _mlflow_addresses=(mlflow_server, mlflow_server))
    ti = SimpleNamespace(dag_id="p_drift_monitor", task_id="drift_check", map_index=-1, try_number=1)
    ti.xcom_push = lambda key, value: None
    assert operator.execute({"run_id": RUN, "ti": ti, "inlet_events": {}})["missing_values_columns"]
    [alert] = webhook
    assert (alert["event"], alert["key"]) == (
        "data_quality",
        f"p_drift_monitor/{RUN}/drift_check/data_quality",
    )
    assert set(alert["details"]["columns"]) == {"temp", "dest"} and alert["details"]["day"] == DAY.isoformat()
    assert "column temp: 100% of its values missing" in alert["message"]


def test_monitored_column_missing_from_the_reference_names_column_and_data_version(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    # A column monitored since after the champion was trained: the window has it, the reference not.
    watched = tune(cfg, "drift", {"critical_columns": [*cfg.drift.critical_columns, "tailnum"]})
    publish_window(world, watched, champion, change=lambda f: f.assign(tailnum="N14228"))
    state = earlier_check(world, watched)

    with pytest.raises(MonitoringError) as raised:
        monitor(world, watched, mlflow_server)

    assert "tailnum" in str(raised.value) and champion.data_version in str(raised.value)
    assert_refused_without_trace(world, watched, state)


def test_monitored_column_missing_from_the_current_window_names_column_and_partition(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    # dep_time is monitored (critical) but no feature: inference scores the days without it.
    publish_window(world, cfg, champion, change=lambda f: f.drop(columns=["dep_time"]))
    state = earlier_check(world, cfg)

    with pytest.raises((MonitoringError, drift.DriftInputError)) as raised:
        monitor(world, cfg, mlflow_server)

    # named: the column, and the window's curated data it is missing from (partition or part)
    where = world.uri(partition_prefix(cfg.prefix, "curated", min(SCORED)))
    assert "dep_time" in str(raised.value) and where in str(raised.value)
    assert_refused_without_trace(world, cfg, state)


# -- which predictions, which labels -----------------------------------------------------------------


def test_days_scored_by_another_model_version_are_skipped_and_listed(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    # 03-04 was scored while an earlier champion served: its scores are not this champion's.
    publish_window(world, cfg, champion, scored={d: s for d, s in SCORED.items() if d != DAY}, change=warmer)
    earlier = str(int(champion.version) + 100)
    publish(world, cfg, make_frames({DAY: SCORED[DAY]}, warmer))
    score(world, cfg, champion, [DAY], version=earlier)

    result = monitor(world, cfg, mlflow_server)

    assert result["skipped_predictions"] == [{"day": DAY.isoformat(), "model_version": earlier, "rows": 500}]
    assert result["rows"]["current"] == 1200  # 1700 scored rows, less the other version's 500
    assert result["live_metric"]["labelled_rows"] == 1000


def test_a_scored_day_whose_curated_rows_were_withdrawn_is_skipped_and_the_window_still_checked(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    """Validated again and failed its gate, a day loses its curated partition but keeps its
    predictions: the check compares the window's other days instead of failing for days on end."""
    from mlops_tasks.storage import partition_prefix

    publish_window(world, cfg, champion, change=warmer)
    world.delete_prefix(partition_prefix(cfg.prefix, "curated", DAY))

    result = monitor(world, cfg, mlflow_server)

    assert result["uncurated_days"] == [{"day": DAY.isoformat(), "rows": 500}]
    assert result["rows"]["current"] == 1200 and result["status"] == "drift"


def before_the_first_part_loads(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]) -> None:
    """Run ``meanwhile`` (another run's write) once, as the check loads its first scored part."""
    from mlops_tasks import monitoring

    read_part_rows = monitoring._scored_rows
    done: list[bool] = []

    def load(*args: object) -> pd.DataFrame:
        if not done:
            meanwhile()
            done.append(True)
        return read_part_rows(*args)

    monkeypatch.setattr(monitoring, "_scored_rows", load)


def test_a_day_rescored_while_the_window_is_read_is_read_again_from_its_new_manifest(
    world: ObjectStore,
    cfg: PipelineConfig,
    champion: Champion,
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish_window(world, cfg, champion, change=warmer)
    earlier = str(int(champion.version) + 100)
    # meanwhile another model version re-scores DAY (a real publish, which deletes the parts it replaces)
    before_the_first_part_loads(monkeypatch, lambda: score(world, cfg, champion, [DAY], version=earlier))

    result = monitor(world, cfg, mlflow_server)

    assert result["skipped_predictions"] == [{"day": DAY.isoformat(), "model_version": earlier, "rows": 500}]
    assert result["rows"]["current"] == 1200


def test_a_day_whose_curated_rows_are_withdrawn_while_the_window_is_read_is_skipped(
    world: ObjectStore,
    cfg: PipelineConfig,
    champion: Champion,
    mlflow_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validated again and failed its gate while the check read the window: the check failed for good
    (a data error, no retry) instead of reading the window again, which skips the day."""
    from mlops_tasks.storage import partition_prefix

    publish_window(world, cfg, champion, change=warmer)
    before_the_first_part_loads(
        monkeypatch, lambda: world.delete_prefix(partition_prefix(cfg.prefix, "curated", DAY))
    )

    result = monitor(world, cfg, mlflow_server)

    assert result["uncurated_days"] == [{"day": DAY.isoformat(), "rows": 500}]
    assert result["rows"]["current"] == 1200 and result["status"] == "drift"


def test_multiclass_champion_s_live_metric_uses_its_published_class_probabilities(
    store: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str, tmp_path: Path
) -> None:
    """Origin airport as three classes (not a feature here), scored by a multiclass champion."""
    classes = ["EWR", "JFK", "LGA"]
    name = f"multi_{uuid.uuid4().hex[:8]}"
    multi = cfg.model_copy(
        update={
            "target": TargetSpec(task="multiclass", column="origin"),
            "features": FeatureSpec(numeric=cfg.features.numeric, categorical=["carrier", "dest"]),
            "gate": cfg.gate.model_copy(update={"primary_metric": "accuracy"}),
            "mlflow": cfg.mlflow.model_copy(update={"registered_model": name}),
        }
    )
    assert publish_reference(store, multi) == champion.data_version
    params = random_params(multi.features, EXAMPLE_VOCAB, hidden=[8], outputs=len(classes), seed=3)
    path = build_model(tmp_path / "model.onnx", multi.features, params, "multiclass", classes)
    multi_champion = register_champion(
        multi, mlflow_server, str(path), champion.data_version, "accuracy", 0.9
    )
    window = publish_window(store, multi, multi_champion)

    result = monitor(store, multi, mlflow_server)

    probabilities = tuple(f"probability_{c}" for c in classes)
    _, sample = current_sample(store, multi, window, (SCORE, *probabilities))
    y = pd.Categorical(sample["origin"].astype(str), categories=classes).codes
    expected = compute_metrics(
        "multiclass", y, sample[SCORE].to_numpy(), sample[list(probabilities)].to_numpy()
    )["accuracy"]
    live = result["live_metric"]
    assert "skipped" not in live and live["labelled_rows"] == 1000
    assert live["live"] == pytest.approx(expected) and live["drop"] == pytest.approx(0.9 - expected)
    assert result["status"] != "insufficient_data"


def test_the_window_leaves_out_the_days_the_champion_trained_on(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str
) -> None:
    """The days up to the end of its training data are the champion's reference. Scored (again), they
    joined the window's current side too: drift diluted by the reference itself, and a live metric
    flattered by rows the model was trained on."""
    trained_days = sorted(REFERENCE)
    later = {trained_days[-1] + dt.timedelta(days=1): [400], trained_days[-1] + dt.timedelta(days=2): [500]}
    publish(world, cfg, make_frames(later))
    score(world, cfg, champion, [*trained_days, *sorted(later)])

    result = run_drift_monitor(world, cfg, max(later), tracking_uri=mlflow_server, check_run_id=RUN)

    assert result["rows"]["current"] == 900  # the two later days only
    assert result["skipped_predictions"] == [] and result["uncurated_days"] == []


@pytest.mark.parametrize("day", [dt.date(2013, 1, 1), dt.date(2013, 1, 2)], ids=["inside", "last day"])
def test_a_day_the_champion_trained_on_is_not_checked_and_requests_nothing(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str, day: dt.date
) -> None:
    """An old day scored again (its predictions asset event names it): its rows are the reference."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mlops_tasks.airflow.operators import DriftCheckOperator
    from mlops_tasks.monitoring import DayTrainedOn

    score(world, cfg, champion, [day])
    with pytest.raises(
        DayTrainedOn, match=rf"{day} is inside the training data of champion v{champion.version}"
    ):
        run_drift_monitor(world, cfg, day, tracking_uri=mlflow_server, check_run_id=RUN)
    operator = DriftCheckOperator(task_id="check", pipeline=cfg.name, day=day.isoformat())
    operator.__dict__.update(store=world, config=cfg, _mlflow_addresses=(mlflow_server, mlflow_server))
    context = {"run_id": RUN, "ti": SimpleNamespace(dag_id="p_drift_monitor"), "inlet_events": {}}
    with pytest.raises(AirflowSkipException, match="days up to 2013-01-02"):
        operator.execute(context)
    assert not world.exists(state_key(cfg))


@pytest.mark.parametrize("requester_state", ["failed", "running"])
def test_a_retrain_request_whose_run_ended_without_sending_it_is_taken_over_by_the_next_check(
    world: ObjectStore, cfg: PipelineConfig, champion: Champion, mlflow_server: str, requester_state: str
) -> None:
    """A run that requested a retrain and failed before its event went out held the cooldown of every
    check near its day until someone cleared it. Once that run is over, the next check drops its
    request and decides again; a cleared retrain task of the ended run then sends nothing. While it
    runs, its request stands (its event may still go out)."""
    from collections import defaultdict

    from airflow.sdk.exceptions import AirflowSkipException

    from mlops_tasks.airflow.dag_factory import retrain_asset
    from mlops_tasks.airflow.operators import DriftCheckOperator, TriggerRetrainingOperator

    publish_window(world, cfg, champion, change=warmer)  # drifts
    dag_id = cfg.dag_id("drift_monitor")
    requester, taker = "scheduled__2013-03-04T00:00:00+00:00", "manual__2013-03-05T08:00:00+00:00"
    first = run_drift_monitor(
        world, cfg, DAY, tracking_uri=mlflow_server, check_run_id=f"{dag_id}/{requester}"
    )
    assert first["retrain"] is True  # ... and its run failed before request_retraining sent the event
    asset = retrain_asset(cfg)
    asked: list[tuple[str, str]] = []

    def context(run_id: str) -> dict:
        def dagrun_state(dag_id: str, run_id: str) -> str:  # the Task SDK's call to the API server
            asked.append((dag_id, run_id))
            return requester_state

        ti = SimpleNamespace(
            dag_id=dag_id,
            task_id="t",
            map_index=-1,
            try_number=1,
            xcom_push=lambda key, value: None,
            get_dagrun_state=dagrun_state,
        )
        return {
            "run_id": run_id,
            "ti": ti,
            "inlet_events": {asset: []},
            "outlet_events": defaultdict(SimpleNamespace),
        }

    check = DriftCheckOperator(task_id="drift_check", pipeline=cfg.name, day=DAY.isoformat(), inlets=[asset])
    check.__dict__.update(config=cfg, store=world, _mlflow_addresses=(mlflow_server, mlflow_server))
    result = check.execute(context(taker))

    assert asked == [(dag_id, requester)]
    triggers = [(t["day"], t["run_id"]) for t in world.get_json(state_key(cfg))["triggers"]]
    if requester_state == "running":
        assert (result["status"], result["requested_by"], result["request_pending"]) == (
            "already_requested",
            f"{dag_id}/{requester}",
            True,
        )
        assert triggers == [(DAY.isoformat(), f"{dag_id}/{requester}")]
        return
    assert (result["status"], result["retrain"]) == ("drift", True)
    assert triggers == [(DAY.isoformat(), f"{dag_id}/{taker}")]
    # the ended run's retrain task, cleared: its request was taken over, so it sends nothing
    cleared = TriggerRetrainingOperator(
        task_id="request_retraining", pipeline=cfg.name, decision=first, outlets=[asset], inlets=[asset]
    )
    cleared.__dict__.update(config=cfg, store=world)
    with pytest.raises(AirflowSkipException, match="a later check took it over"):
        cleared.execute(context(requester))
