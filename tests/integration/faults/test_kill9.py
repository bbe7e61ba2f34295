"""``kill -9`` of a data-stage task process mid-write, then the retry: the final outputs are
byte-identical to a clean run, readers never see a partial partition, and no row is duplicated.
(The model stage: ``test_kill9_model.py``.)"""

from __future__ import annotations

import pytest

from mlops_tasks.example import seed_landing
from mlops_tasks.storage import MANIFEST_NAME, ObjectStore
from tests.conftest import make_store
from tests.integration.faults.stage_runner import (
    DAY,
    VALIDATION_AREAS,
    HoldingProxy,
    config,
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

    manifest_put = f"/{store.bucket}/{partitions[held_area]}{MANIFEST_NAME}"
    proxy = HoldingProxy(s3_endpoint, lambda r: 0 if (r.method, r.path) == ("PUT", manifest_put) else None)
    try:
        process = start_stage("validate", proxy.url, store.bucket)
        kill_when(process, proxy.held.is_set)
    finally:
        proxy.close()

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
