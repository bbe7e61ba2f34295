"""``kill -9`` of a data-stage task process mid-write, then the retry: the final outputs are
byte-identical to a clean run, readers never see a partial partition, and no row is duplicated.
Also the data version (DVC push, then its record), the lineage record, the shadow report and the
drift check (its cooldown state and reports), which are written to S3 too. (The model stage: ``test_kill9_model.py``.)"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mlops_tasks.example import seed_landing
from mlops_tasks.inference import SHADOW_REPORT_NAME
from mlops_tasks.lineage import read_record, record_key
from mlops_tasks.monitoring import state_key
from mlops_tasks.storage import MANIFEST_NAME, ObjectStore, partition_prefix
from mlops_tasks.versioning import DVC_REMOTE_PREFIX, load_data_version
from tests.conftest import make_store
from tests.integration.faults.stage_runner import (
    DAY,
    DRIFT_DAY,
    VALIDATION_AREAS,
    Hold,
    Request,
    config,
    holds_nth_put,
    kill_behind_proxy,
    kill_when,
    output_partition,
    run_stage,
    start_stage,
)
from tests.integration.onnx_fixtures import curated_frame, publish_curated


def contents(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {o.key: store.get_bytes(o.key) for o in store.list(prefix)}


def prepare(step: str, store: ObjectStore) -> None:
    if step in ("ingest", "validate"):
        seed_landing(store, config(), DAY, DAY)
        if step == "validate":
            run_stage("ingest", store)
    else:
        frames = [curated_frame(DAY, 500), curated_frame(DAY, 400, seed=1, first_flight=1000)]
        publish_curated(store, config(), DAY, frames, row_group_size=100)


def assert_published_whole(store: ObjectStore, partition: str) -> None:
    """The partition holds exactly its manifest and the parts it lists."""
    manifest = store.read_manifest(partition)
    assert manifest is not None, partition
    keys = sorted(o.key for o in store.list(partition))
    assert keys == sorted([p["key"] for p in manifest["parts"]] + [partition + MANIFEST_NAME])


def kill_held(hold: Hold, step: str, s3_endpoint: str, store: ObjectStore, **args: Any) -> Request:
    """Run ``step`` as a process talking to S3 through a proxy; ``kill -9`` it once ``hold`` stalled
    a request. Returns that request."""
    return kill_behind_proxy(s3_endpoint, hold, lambda url: start_stage(step, url, store.bucket, **args))


def holds_put(bucket: str, key: str) -> Hold:
    """The PUT of ``key`` (boto3 waits for the endpoint's 100-continue before sending the body: the
    endpoint sees the request's head, none of its body)."""
    return lambda request: 0 if (request.method, request.path) == ("PUT", f"/{bucket}/{key}") else None


@pytest.mark.parametrize(
    ("step", "parts_before_kill"),
    [("ingest", 1), ("score", 1), ("score", 3)],
    ids=["ingest-first-part", "score-first-part", "score-third-part"],
)
def test_killed_stage_retried_is_byte_identical_to_a_clean_run(
    s3_endpoint: str, model_path: str, step: str, parts_before_kill: int
) -> None:
    clean, faulty = make_store(s3_endpoint), make_store(s3_endpoint)
    partition = output_partition(step)
    for store in (clean, faulty):
        prepare(step, store)
    run_stage(step, clean, model_path)
    expected = contents(clean, partition)

    process = start_stage(step, s3_endpoint, faulty.settings.bucket, model_path=model_path)
    kill_when(process, lambda: len(faulty.list(partition)) >= parts_before_kill)

    # Readers see no partition, or (killed just after the manifest PUT) a complete one.
    killed = faulty.read_manifest(partition)
    assert killed is None or all(faulty.exists(p["key"]) for p in killed["parts"])
    run_stage(step, faulty, model_path)  # the retry
    assert contents(faulty, partition) == expected
    assert_published_whole(faulty, partition)


@pytest.mark.parametrize("held_area", ["quarantine", "curated"])
def test_validation_killed_before_publishing_retried_is_byte_identical(
    s3_endpoint: str, held_area: str
) -> None:
    """Killed while its manifest PUT for ``held_area`` is in flight: the partition's first part is
    written and not published (quarantine: first of the three outputs; curated: the last one, after
    quarantine and reports). The retry, in the same bucket (the reports name it), gives the bytes of
    a clean run for curated, quarantine and reports."""
    store = make_store(s3_endpoint)
    prepare("validate", store)
    partitions = {area: output_partition("validate", area) for area in VALIDATION_AREAS}
    clean = run_stage("validate", store)
    expected = {area: contents(store, p) for area, p in partitions.items()}
    for p in partitions.values():
        store.delete_prefix(p)

    kill_held(holds_put(store.bucket, partitions[held_area] + MANIFEST_NAME), "validate", s3_endpoint, store)

    assert [o.key for o in store.list(partitions[held_area])]  # the part was written ...
    assert store.read_manifest(partitions[held_area]) is None  # ... and is not visible to readers
    assert store.read_manifest(partitions["curated"]) is None  # nothing to train on yet
    if held_area == "quarantine":
        assert not store.list(partitions["reports/validation"])

    assert run_stage("validate", store) == clean  # the retry
    assert {area: contents(store, p) for area, p in partitions.items()} == expected
    for area in ("curated", "quarantine"):
        assert_published_whole(store, partitions[area])
    assert clean["good_rows"] + clean["bad_rows"] == clean["rows"] and clean["bad_rows"] > 0
    curated = store.read_manifest(partitions["curated"])
    quarantined = store.read_manifest(partitions["quarantine"])
    assert curated["rows"] == clean["good_rows"] and quarantined["bad_rows"] == clean["bad_rows"]


VERSION_DAYS = [DAY, DAY + dt.timedelta(days=1)]


def publish_version_days(store: ObjectStore) -> None:
    """Two curated days of two parts each: the version's DVC directory holds four files."""
    for offset, day in enumerate(VERSION_DAYS):
        frames = [curated_frame(day, 300, seed=2 * offset), curated_frame(day, 200, seed=2 * offset + 1)]
        publish_curated(store, config(), day, frames, row_group_size=100)


@pytest.mark.parametrize("kill_point", ["dvc-push", "record"])
def test_data_version_killed_then_retried_records_the_clean_version(
    s3_endpoint: str, kill_point: str
) -> None:
    """Killed while DVC pushes the version's files, or after the push while the version's record (its
    commit point: a version without a record is made again) is being written. No record is left, so
    nothing can train on the half-made version; the retry pushes what is missing and writes the record
    and DVC objects of a clean run, and the version reads back whole."""
    clean, faulty = make_store(s3_endpoint), make_store(s3_endpoint)
    for store in (clean, faulty):
        publish_version_days(store)
    days = [d.isoformat() for d in VERSION_DAYS]
    expected = run_stage("version", clean, days=days)
    version = expected["data_version"]
    record = f"{config().prefix}/data_versions/{version}.json"
    outputs = (f"{config().prefix}/data_versions/", f"{DVC_REMOTE_PREFIX}/")
    expected_objects = {prefix: contents(clean, prefix) for prefix in outputs}
    assert len(expected_objects[f"{DVC_REMOTE_PREFIX}/"]) == 5  # 4 files + the directory listing

    if kill_point == "dvc-push":
        # the 2nd of its 4 files: one file pushed, the directory listing not
        dvc_files = f"/{faulty.bucket}/{DVC_REMOTE_PREFIX}/files/"
        kill_held(
            holds_nth_put(2, lambda path: path.startswith(dvc_files)),
            "version",
            s3_endpoint,
            faulty,
            days=days,
        )
        pushed = contents(faulty, f"{DVC_REMOTE_PREFIX}/")
        assert pushed.items() < expected_objects[f"{DVC_REMOTE_PREFIX}/"].items()  # some of it, all whole
        # DVC uploads a directory's listing only after all its files: a remote holding the listing
        # holds the whole version (which DVC's own push assumes: it checks no file of a listed dir).
        assert not any(key.endswith(".dir") for key in pushed)
    else:
        kill_held(holds_put(faulty.bucket, record), "version", s3_endpoint, faulty, days=days)
        assert contents(faulty, f"{DVC_REMOTE_PREFIX}/") == expected_objects[f"{DVC_REMOTE_PREFIX}/"]
    assert not faulty.exists(record)

    retried = run_stage("version", faulty, days=days)

    assert retried == {**expected, "record_uri": faulty.uri(record)} and retried["uploaded"]
    assert {prefix: contents(faulty, prefix) for prefix in outputs} == expected_objects
    read_back = load_data_version(faulty, config(), version)
    assert read_back.equals(load_data_version(clean, config(), version)) and len(read_back) == 1000


def test_lineage_killed_mid_write_then_retried_writes_the_clean_record(s3_endpoint: str) -> None:
    """Killed while the record's PUT is in flight (its one write): no record, not half of one, for
    ``mlops-tasks lineage`` to trip on; the retry writes the bytes of a clean run."""
    clean, faulty = make_store(s3_endpoint), make_store(s3_endpoint)
    upstream = {
        "data_version": {
            "data_version": "0" * 32,
            "days": [DAY.isoformat()],
            "landing_files": ["flights_delay/landing/flights_2013-03-01.csv"],
            "trigger": "schedule",
        },
        "training": {"run_id": "a" * 32, "experiment_id": "1"},
        "export": {"onnx_artifact_uri": "s3://mlops/mlflow/1/" + "a" * 32 + "/artifacts/model/model.onnx"},
        "decision": {"promote": True, "reason": "gate passed", "primary_metric": "roc_auc"},
        "registration": {"model_name": "flights_delay", "version": "3", "promoted": True},
    }
    run_stage("lineage", clean, upstream=upstream)
    key = record_key(config(), "flights_delay", "3")

    kill_held(holds_put(faulty.bucket, key), "lineage", s3_endpoint, faulty, upstream=upstream)
    assert not faulty.exists(key)

    assert run_stage("lineage", faulty, upstream=upstream) == faulty.uri(key)  # the retry
    assert read_record(faulty, config(), "3")["model_version"] == "3"
    clean_record = clean.get_bytes(key).replace(clean.bucket.encode(), faulty.bucket.encode())
    assert faulty.get_bytes(key) == clean_record


def test_shadow_report_killed_mid_write_then_retried_writes_the_clean_report(
    s3_endpoint: str, model_path: str
) -> None:
    """Killed while the report's PUT, its one write, is held: no report; the retry writes the clean
    run's (the day's 900 rows scored by champion and challenger, agreeing on every row)."""
    clean, faulty = make_store(s3_endpoint), make_store(s3_endpoint)
    for store in (clean, faulty):
        prepare("score", store)
        for area in ("predictions", "predictions_shadow"):
            run_stage("score", store, model_path, output_area=area)
    expected = run_stage("shadow", clean)
    assert expected["rows"]["compared"] == 900 and expected["agreement_rate"] == 1.0
    key = partition_prefix(config().prefix, "reports/shadow", DAY) + SHADOW_REPORT_NAME

    kill_held(holds_put(faulty.bucket, key), "shadow", s3_endpoint, faulty)
    assert not faulty.exists(key)

    assert run_stage("shadow", faulty) == {**expected, "uri": faulty.uri(key)}  # the retry
    assert faulty.get_json(key) == {k: v for k, v in expected.items() if k != "uri"}


DRIFT_RUN = "scheduled__2013-07-14T00:00:00+00:00"
DRIFT_STATE = state_key(config())
DRIFT_REPORTS = partition_prefix(config().prefix, "reports/drift", DRIFT_DAY)


@pytest.fixture(scope="module")
def clean_drift_check(s3_endpoint: str) -> tuple[ObjectStore, dict[str, Any], dict[str, bytes]]:
    """A check without faults (the store, its result, its reports and state): a drifted day."""
    clean = make_store(s3_endpoint)
    expected = run_stage("drift", clean, check_run_id=DRIFT_RUN)
    assert (expected["status"], expected["retrain"]) == ("drift", True)
    return clean, expected, {**contents(clean, DRIFT_REPORTS), DRIFT_STATE: clean.get_bytes(DRIFT_STATE)}


@pytest.mark.parametrize("kill_point", ["state", "report"])
def test_drift_check_killed_then_retried_requests_one_retrain(
    s3_endpoint: str, clean_drift_check: tuple[ObjectStore, dict[str, Any], dict[str, bytes]], kill_point: str
) -> None:
    """Killed while the cooldown state's conditional PUT is held (the Evidently page written, nothing
    decided), or after it while ``drift.json`` is being written (the retrain trigger stored). The
    retry of the same DAG run replaces its own trigger and decides as a clean check did (drift,
    retrain), with the clean run's reports and state; after the second kill point, where the killed
    attempt had stored its trigger, another run's check of the day finds the retrain already
    requested: one retrain, not two."""
    clean, expected, outputs = clean_drift_check
    faulty = make_store(s3_endpoint)
    state, reports = DRIFT_STATE, DRIFT_REPORTS

    held = state if kill_point == "state" else reports + "drift.json"
    kill_held(holds_put(faulty.bucket, held), "drift", s3_endpoint, faulty, check_run_id=DRIFT_RUN)

    assert contents(faulty, reports) == {reports + "drift.html": outputs[reports + "drift.html"]}
    if kill_point == "state":
        assert not faulty.exists(state)
    else:
        assert faulty.get_bytes(state) == outputs[state]  # the trigger is stored

    retried = run_stage("drift", faulty, check_run_id=DRIFT_RUN)

    uris = {k: faulty.uri(clean.key_of(expected[k])) for k in ("report_uri", "html_uri")}
    assert retried == {**expected, **uris}
    assert {**contents(faulty, reports), state: faulty.get_bytes(state)} == outputs
    if kill_point == "report":
        other = run_stage("drift", faulty, check_run_id="manual__2013-07-15T09:00:00+00:00")
        assert (other["status"], other["retrain"]) == ("already_requested", False)
        assert [t["run_id"] for t in faulty.get_json(state)["triggers"]] == [DRIFT_RUN]
