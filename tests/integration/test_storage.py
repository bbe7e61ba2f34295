"""The object store layer against a real S3 endpoint over HTTP (moto's server mode)."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import http.server
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlops_tasks import stack, storage
from mlops_tasks.storage import (
    MANIFEST_NAME,
    SINGLE_PUT_BYTES,
    ObjectStore,
    PartsMissingError,
    S3Settings,
    StorageError,
    WriteConflictError,
    parse_partition_date,
    partition_prefix,
    publish_manifest,
    read_published,
    sha256_bytes,
    sha256_file,
    write_part,
)

DAY = dt.date(2013, 3, 1)


def test_partition_prefix_and_date_round_trip() -> None:
    prefix = partition_prefix("flights_delay", "curated", DAY)
    assert prefix == "flights_delay/curated/date=2013-03-01/"
    assert parse_partition_date(prefix + "part-0.parquet") == DAY
    # Python reads these as dates too; listed as days, their partitions (date=2013-01-05/) held nothing
    for folder in ("date=20130105", "date=2013-W01-6", "date=2013-01-5"):
        assert parse_partition_date(f"flights_delay/landing/{folder}/x.csv") is None, folder


def test_unknown_area_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown storage area 'curatd'"):
        partition_prefix("p", "curatd", DAY)


def test_partition_is_invisible_until_the_manifest_is_published(store: ObjectStore) -> None:
    partition = partition_prefix("p", "predictions", DAY)
    part = write_part(store, partition, "part-0.parquet", b"rows", rows=3)
    assert store.read_manifest(partition) is None
    publish_manifest(store, partition, [part])
    assert [p["key"] for p in store.read_manifest(partition)["parts"]] == [part["key"]]


def test_rerun_with_same_content_is_byte_identical(store: ObjectStore) -> None:
    partition = partition_prefix("p", "curated", DAY)
    snapshots = []
    for _ in range(2):
        parts = [
            write_part(store, partition, "part-0.parquet", b"a" * 10, rows=10),
            write_part(store, partition, "part-1.parquet", b"b" * 5, rows=5),
        ]
        publish_manifest(store, partition, parts, source="unit")
        snapshots.append({o.key: store.get_bytes(o.key) for o in store.list(partition)})
    assert snapshots[0] == snapshots[1]
    assert store.read_manifest(partition)["rows"] == 15


def parquet_part(store: ObjectStore, partition: str, name: str, values: list[int]) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"x": values}), sink)
    return write_part(store, partition, name, sink.getvalue().to_pybytes(), rows=len(values))


def keys_in(store: ObjectStore, partition: str) -> set[str]:
    return {o.key for o in store.list(partition)}


def test_publishing_deletes_the_parts_it_replaces_and_abandoned_ones_once_old(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = partition_prefix("p", "curated", DAY)
    first = write_part(store, partition, "part-0.parquet", b"first run", rows=1)
    publish_manifest(store, partition, [first])
    abandoned = write_part(store, partition, "part-0.parquet", b"killed attempt", rows=1)
    kept = write_part(store, partition, "part-0.parquet", b"final", rows=1)
    publish_manifest(store, partition, [kept])
    # the replaced part goes at once; an unlisted one may be a concurrent run's and stays for now
    assert keys_in(store, partition) == {kept["key"], abandoned["key"], partition + MANIFEST_NAME}
    monkeypatch.setattr(storage, "UNLISTED_GRACE", dt.timedelta(0))
    publish_manifest(store, partition, [kept])
    assert keys_in(store, partition) == {kept["key"], partition + MANIFEST_NAME}


def test_two_runs_publishing_one_partition_leave_the_last_ones_whole(store: ObjectStore) -> None:
    """A scheduled and a manual run of the same day: both stage their parts, then both publish.
    The first publish must not delete the second run's parts, or its manifest would list missing
    ones."""
    partition = partition_prefix("p", "predictions", DAY)
    run_a = [parquet_part(store, partition, f"part-{i}.parquet", [i, 10 + i]) for i in range(2)]
    run_b = [parquet_part(store, partition, f"part-{i}.parquet", [i, 20 + i, 30]) for i in range(2)]
    publish_manifest(store, partition, run_a, run_id="a")
    publish_manifest(store, partition, run_b, run_id="b")
    table, manifest = read_published(store, partition)
    assert (manifest["run_id"], table.num_rows) == ("b", 6)
    assert keys_in(store, partition) == {p["key"] for p in run_b} | {partition + MANIFEST_NAME}


def test_a_publish_whose_parts_are_gone_fails_and_keeps_the_published_partition(
    store: ObjectStore,
) -> None:
    partition = partition_prefix("p", "predictions", DAY)
    published = [parquet_part(store, partition, "part-0.parquet", [1, 2])]
    publish_manifest(store, partition, published, run_id="a")
    lost = parquet_part(store, partition, "part-0.parquet", [3])
    store.delete([lost["key"]])  # as a concurrent publish deletes parts it replaced
    with pytest.raises(PartsMissingError, match=r"part-0-.*\.parquet.* are gone.*Re-run the tasks"):
        publish_manifest(store, partition, [lost], run_id="b")
    table, manifest = read_published(store, partition)
    assert (manifest["run_id"], table.column("x").to_pylist()) == ("a", [1, 2])


def test_a_reader_of_a_replaced_manifest_reads_the_new_publication(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = partition_prefix("p", "predictions", DAY)
    publish_manifest(store, partition, [parquet_part(store, partition, "part-0.parquet", [1])], run_id="a")
    read_manifest = store.read_manifest
    first_read = read_manifest(partition)

    def republished_after_the_first_read(prefix: str) -> dict | None:
        """The reader gets run a's manifest, then run b publishes and deletes run a's part."""
        monkeypatch.setattr(store, "read_manifest", read_manifest)
        publish_manifest(
            store, partition, [parquet_part(store, partition, "part-0.parquet", [2, 3])], run_id="b"
        )
        return first_read

    monkeypatch.setattr(store, "read_manifest", republished_after_the_first_read)
    table, manifest = read_published(store, partition)
    assert (manifest["run_id"], table.column("x").to_pylist()) == ("b", [2, 3])


def test_list_partition_dates(store: ObjectStore) -> None:
    for day in (DAY, DAY + dt.timedelta(days=1)):
        store.put_bytes(partition_prefix("p", "landing", day) + "f.csv", b"a\n1\n")
    assert store.list_partition_dates("p/landing/") == [DAY, DAY + dt.timedelta(days=1)]


def test_listings_follow_continuation_tokens_across_pages(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    days = [DAY + dt.timedelta(days=i) for i in range(5)]
    for day in days:
        store.put_bytes(partition_prefix("p", "landing", day) + "f.csv", b"a\n1\n")
    real = store.client.list_objects_v2
    pages: list[int] = []

    def two_per_page(**params: str) -> dict:
        page = real(**params, MaxKeys=2)  # the endpoint's own pages and continuation tokens
        pages.append(page["KeyCount"])
        return page

    monkeypatch.setattr(store.client, "list_objects_v2", two_per_page)

    assert [o.key for o in store.list("p/landing/")] == [
        partition_prefix("p", "landing", day) + "f.csv" for day in days
    ]
    assert pages == [2, 2, 1]
    assert store.list_partition_dates("p/landing/") == days


def test_uri_of_another_bucket_is_refused(store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="is not in bucket"):
        store.key_of("s3://someone-else/key")


def test_missing_object_is_file_not_found(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.get_bytes("p/nothing-here")


def test_missing_bucket_says_which_bucket_and_what_to_do(s3_endpoint: str) -> None:
    settings = S3Settings(
        bucket="no-such-bucket", endpoint_url=s3_endpoint, aws_access_key_id="k", aws_secret_access_key="s"
    )
    with pytest.raises(
        StorageError, match=r"bucket 'no-such-bucket' at http://127\.0\.0\.1:\d+ does not exist"
    ):
        ObjectStore(settings).get_bytes("k")
    for bodiless in (
        ObjectStore(settings).check,
        lambda: ObjectStore(settings).exists("k"),
    ):  # HEAD: a bare 404
        with pytest.raises(StorageError, match=r"'no-such-bucket' at http://127\.0\.0\.1:\d+ does not exist"):
            bodiless()


def test_unreachable_endpoint_names_the_endpoint() -> None:
    port = stack.free_port()
    settings = S3Settings(
        bucket="b",
        endpoint_url=f"http://127.0.0.1:{port}",
        max_attempts=1,
        connect_timeout=1,
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    with pytest.raises(StorageError, match=rf"endpoint http://127\.0\.0\.1:{port} is not reachable"):
        ObjectStore(settings).check()


def test_rejected_credentials_are_reported_as_such(tmp_path: Path) -> None:
    # moto enforces IAM authentication when INITIAL_NO_AUTH_ACTION_COUNT is 0: unknown keys are refused.
    port = stack.free_port()
    url = f"http://127.0.0.1:{port}"
    service = stack.start_process(
        "s3-auth",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        url,
        tmp_path,
        stack.http_ok(url + "/moto-api/"),
        env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"},
    )
    try:
        settings = S3Settings(
            bucket="b", endpoint_url=url, aws_access_key_id="wrong", aws_secret_access_key="x"
        )
        with pytest.raises(StorageError, match="credentials were rejected"):
            ObjectStore(settings).check()
    finally:
        service.stop()


@pytest.mark.parametrize("extra", [0, 1], ids=["one PUT", "multipart"])
def test_upload_sends_files_up_to_the_single_put_size_in_one_put_and_bigger_ones_multipart(
    store: ObjectStore, tmp_path: Path, extra: int
) -> None:
    path = tmp_path / "part.bin"
    with open(path, "wb") as out:  # compressible filler: the endpoint keeps it in memory
        out.truncate(SINGLE_PUT_BYTES + extra)

    store.upload(path, "uploads/part.bin")

    head = store.client.head_object(Bucket=store.bucket, Key="uploads/part.bin")
    assert head["ContentLength"] == SINGLE_PUT_BYTES + extra
    assert ("-" in head["ETag"]) == bool(extra)  # a multipart upload's ETag ends in -<parts>
    assert sha256_bytes(store.get_bytes("uploads/part.bin")) == sha256_file(path)


def write_part_sending(store: ObjectStore, path: Path) -> tuple[dict, dict[str, str]]:
    """write_part of a small file: its manifest entry and the headers of the one PUT it sent."""
    path.write_bytes(b"rows" * 1000)
    sent: list[dict[str, str]] = []
    store.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(request.headers)
    )
    part = write_part(store, "p/predictions/date=2013-03-01/", "part-00000.bin", path, rows=1)
    (headers,) = sent
    return part, headers


def test_a_file_uploaded_with_its_sha256_sends_it_as_the_put_checksum_instead_of_a_crc32(
    store: ObjectStore, tmp_path: Path
) -> None:
    part, headers = write_part_sending(store, tmp_path / "part.bin")

    assert part["sha256"] == sha256_file(tmp_path / "part.bin")
    assert base64.b64decode(headers["x-amz-checksum-sha256"]).hex() == part["sha256"]
    assert not [h for h in headers if h.lower() == "x-amz-checksum-crc32"]


def test_no_checksum_goes_with_the_put_where_checksums_are_turned_off(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the setting users of S3-compatible stores that reject checksum headers choose
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")

    _, headers = write_part_sending(ObjectStore(store.settings), tmp_path / "part.bin")

    assert not [h for h in headers if h.lower().startswith("x-amz-checksum-")]


# -- update_json: read-modify-write with conditional PUTs ---------------------------------------------

STATE = "p/state/counter.json"


def increment(current: dict | None) -> dict:
    return {"n": (current or {"n": 0})["n"] + 1}


def test_update_json_creates_an_absent_object_as_put_json_would_write_it(store: ObjectStore) -> None:
    assert store.update_json(STATE, increment) == {"n": 1}

    written = store.get_bytes(STATE)
    store.put_json("p/state/plain.json", {"n": 1})
    assert written == store.get_bytes("p/state/plain.json")


def test_update_json_changes_the_stored_object(store: ObjectStore) -> None:
    store.put_json(STATE, {"n": 5})

    assert store.update_json(STATE, increment) == {"n": 6}
    assert store.get_json(STATE) == {"n": 6}


def other_writer(
    store: ObjectStore, change: Callable[[Any], dict], writes: int = 1
) -> tuple[Callable[[Any], dict], list[Any]]:
    """``change``, wrapped so that for its first ``writes`` calls another writer stores ``{"n": 100 * i}``
    after this writer's read and before its PUT; records what each call was given."""
    seen: list[Any] = []

    def racing(current: Any) -> dict:
        seen.append(current)
        if len(seen) <= writes:
            store.put_json(STATE, {"n": 100 * len(seen)})  # never what ``change`` writes
        return change(current)

    return racing, seen


@pytest.mark.parametrize("before", [None, {"n": 5}], ids=["absent", "existing"])
def test_update_json_retries_on_the_object_another_writer_stored_between_read_and_put(
    store: ObjectStore, before: dict | None
) -> None:
    if before is not None:
        store.put_json(STATE, before)
    change, seen = other_writer(store, increment)

    assert store.update_json(STATE, change) == {"n": 101}

    assert seen == [before, {"n": 100}]  # the second call sees the other writer's object
    assert store.get_json(STATE) == {"n": 101}  # built on it, not on what was read first


def test_update_json_retries_when_another_writer_deleted_the_object_meanwhile(store: ObjectStore) -> None:
    store.put_json(STATE, {"n": 5})
    seen: list[Any] = []

    def deleting(current: Any) -> dict:
        seen.append(current)
        if len(seen) == 1:
            store.delete([STATE])
        return increment(current)

    assert store.update_json(STATE, deleting) == {"n": 1}
    assert seen == [{"n": 5}, None]


def test_update_json_gives_up_after_its_attempts_and_writes_nothing(store: ObjectStore) -> None:
    store.put_json(STATE, {"n": 5})
    change, seen = other_writer(store, increment, writes=99)

    with pytest.raises(WriteConflictError, match=rf"Cannot update s3://{store.bucket}/{STATE}: .* 3 reads"):
        store.update_json(STATE, change, attempts=3)

    assert len(seen) == 3
    assert store.get_json(STATE) == {"n": 300}  # the other writer's last object, untouched


def test_update_json_whose_own_write_landed_before_a_conflict_does_not_change_again(
    store: ObjectStore,
) -> None:
    """botocore resends a PUT whose answer was lost; if the store had applied it, the resend answers
    412. Played here by storing the very object the update then writes, between its read and PUT."""
    store.put_json(STATE, {"n": 5})
    seen: list[Any] = []

    def applied_then_conflicting(current: Any) -> dict:
        seen.append(current)
        store.put_json(STATE, increment(current))  # the first PUT, applied
        return increment(current)

    assert store.update_json(STATE, applied_then_conflicting) == {"n": 6}
    assert seen == [{"n": 5}] and store.get_json(STATE) == {"n": 6}  # not incremented twice


def test_update_json_whose_last_attempt_landed_before_a_conflict_returns_it(store: ObjectStore) -> None:
    """No next attempt reads the last one's write back: it was reported as "wrote nothing"."""
    store.put_json(STATE, {"n": 5})

    def another_writer_then_own_write_landing(current: Any) -> dict:
        if current == {"n": 5}:  # attempt 1: another writer gets in between the read and the PUT
            store.put_json(STATE, {"n": 100})
        else:  # attempt 2: the PUT is applied, and the resend of it conflicts
            store.put_json(STATE, increment(current))
        return increment(current)

    assert store.update_json(STATE, another_writer_then_own_write_landing, attempts=2) == {"n": 101}
    assert store.get_json(STATE) == {"n": 101}


# -- publish_manifest racing another publish of the same partition ------------------------------------


def published_between_check_and_put(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, *others: Callable[[], object]
) -> list[dict | None]:
    """Run ``others[i]`` (another run's publish) right before this run's ``i``-th manifest PUT, i.e.
    after its read of the manifest and its check of the parts; records each PUT's condition."""
    real_put_json = store.put_json
    conditions: list[dict | None] = []

    def put_json(key: str, obj: object, condition: dict | None = None) -> str:
        if key.endswith(MANIFEST_NAME) and len(conditions) < len(others):
            conditions.append(condition)
            monkeypatch.setattr(store, "put_json", real_put_json)
            others[len(conditions) - 1]()
            monkeypatch.setattr(store, "put_json", put_json)
        return real_put_json(key, obj, condition)

    monkeypatch.setattr(store, "put_json", put_json)
    return conditions


def next_second() -> None:
    """Sleep into the next second: S3's LastModified has 1 s resolution."""
    import time

    time.sleep(1.05 - time.time() % 1)


def test_a_republish_overtaken_before_its_put_publishes_on_the_new_manifest_and_its_parts_stay(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run b republishes the live content (same part key as the live manifest) while run a publishes
    corrected data; a's PUT, and its delete of the part it replaced, land between b's check of its
    parts and b's PUT. Before the fix b's unconditional PUT made a manifest listing a deleted part."""
    partition = partition_prefix("p", "curated", DAY)
    p0 = parquet_part(store, partition, "data.parquet", [1, 2])
    publish_manifest(store, partition, [p0], run="x")
    next_second()
    p1 = parquet_part(store, partition, "data.parquet", [1, 2, 3])  # run a: corrected data
    p0_again = parquet_part(store, partition, "data.parquet", [1, 2])  # run b: the live content
    assert p0_again["key"] == p0["key"]
    conditions = published_between_check_and_put(
        store, monkeypatch, lambda: publish_manifest(store, partition, [p1], run="a")
    )

    publish_manifest(store, partition, [p0_again], run="b")

    table, manifest = read_published(store, partition)  # raised FileNotFoundError before the fix
    assert (manifest["run"], table.column("x").to_pylist()) == ("b", [1, 2])
    assert conditions[0] is not None and "IfMatch" in conditions[0]  # on the manifest b read
    # a left p0 (written again after the manifest listing it); b's retry deleted a's replaced part
    assert keys_in(store, partition) == {p0["key"], partition + MANIFEST_NAME}


def test_a_publish_overtaken_by_one_that_deleted_its_parts_fails_and_publishes_nothing(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but b's part was written before the live manifest listing it: a deletes it as
    replaced, b's conditional PUT fails, b reads again, finds its part gone and publishes nothing."""
    partition = partition_prefix("p", "curated", DAY)
    p0 = parquet_part(store, partition, "data.parquet", [1, 2])
    publish_manifest(store, partition, [p0], run="x")
    p1 = parquet_part(store, partition, "data.parquet", [1, 2, 3])
    published_between_check_and_put(
        store, monkeypatch, lambda: publish_manifest(store, partition, [p1], run="a")
    )

    with pytest.raises(PartsMissingError, match="are gone.*nothing was published by this run"):
        publish_manifest(store, partition, [p0], run="b")

    table, manifest = read_published(store, partition)
    assert (manifest["run"], table.column("x").to_pylist()) == ("a", [1, 2, 3])


def test_a_first_publish_overtaken_by_another_first_publish_replaces_it(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition = partition_prefix("p", "predictions", DAY)
    run_a = parquet_part(store, partition, "part-0.parquet", [1])
    run_b = parquet_part(store, partition, "part-0.parquet", [2, 3])
    conditions = published_between_check_and_put(
        store, monkeypatch, lambda: publish_manifest(store, partition, [run_a], run_id="a")
    )

    publish_manifest(store, partition, [run_b], run_id="b")

    table, manifest = read_published(store, partition)
    assert (manifest["run_id"], table.column("x").to_pylist()) == ("b", [2, 3])
    assert keys_in(store, partition) == {run_b["key"], partition + MANIFEST_NAME}
    assert conditions == [{"IfNoneMatch": "*"}]  # b read no manifest: its PUT must not replace one


def test_a_publish_overtaken_at_every_attempt_gives_up_and_publishes_nothing(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "PUBLISH_ATTEMPTS", 3)
    partition = partition_prefix("p", "predictions", DAY)
    others = [parquet_part(store, partition, "part-0.parquet", [i]) for i in range(3)]
    mine = parquet_part(store, partition, "part-0.parquet", [7])
    published_between_check_and_put(
        store,
        monkeypatch,
        *[lambda i=i: publish_manifest(store, partition, [others[i]], run_id=f"other-{i}") for i in range(3)],
    )

    with pytest.raises(
        WriteConflictError, match=r"Cannot publish .*_SUCCESS: .* each of 3 reads.*published nothing"
    ):
        publish_manifest(store, partition, [mine], run_id="mine")

    table, manifest = read_published(store, partition)
    assert (manifest["run_id"], table.column("x").to_pylist()) == ("other-2", [2])
    assert store.exists(mine["key"])  # unlisted and young: left for a later publish's sweep


def test_a_publish_whose_own_put_landed_before_a_conflict_deletes_what_it_replaced(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore resends a PUT whose answer was lost; if the store had applied it, the resend answers
    412. Played here by storing this publish's very manifest between its read and its PUT."""
    partition = partition_prefix("p", "predictions", DAY)
    old = parquet_part(store, partition, "part-0.parquet", [1])
    publish_manifest(store, partition, [old], run_id="a")
    new = parquet_part(store, partition, "part-0.parquet", [2])
    manifest = {"partition": partition, "parts": [new], "rows": 1, "run_id": "b"}
    published_between_check_and_put(
        store, monkeypatch, lambda: store.put_json(partition + MANIFEST_NAME, manifest)
    )

    assert publish_manifest(store, partition, [new], run_id="b") == manifest

    assert keys_in(store, partition) == {new["key"], partition + MANIFEST_NAME}


def test_a_publish_whose_last_put_landed_before_a_conflict_returns_its_manifest(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run publishes before the first PUT, this run's own manifest lands before the last."""
    from mlops_tasks import storage

    monkeypatch.setattr(storage, "PUBLISH_ATTEMPTS", 2)
    partition = partition_prefix("p", "predictions", DAY)
    old = parquet_part(store, partition, "part-0.parquet", [1])
    new = parquet_part(store, partition, "part-1.parquet", [2])
    other = {"partition": partition, "parts": [old], "rows": 1, "run_id": "a"}
    manifest = {"partition": partition, "parts": [new], "rows": 1, "run_id": "b"}
    published_between_check_and_put(
        store,
        monkeypatch,
        lambda: store.put_json(partition + MANIFEST_NAME, other),
        lambda: store.put_json(partition + MANIFEST_NAME, manifest),
    )

    assert publish_manifest(store, partition, [new], run_id="b") == manifest

    assert store.read_manifest(partition) == manifest


# -- delete: DeleteObjects' per-key errors -------------------------------------------------------------


def failing_keys(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, failures: dict[str, list[str]]
) -> list[list[str]]:
    """Make the endpoint's DeleteObjects fail for some keys, as S3 does: HTTP 200, the other keys
    deleted, the failed ones under ``Errors`` with a code. moto's server never answers so, hence this
    wrapper around the client's real call; ``failures[key]`` are the codes of its next attempts.
    Returns the keys each call was sent."""
    real = store.client.delete_objects
    calls: list[list[str]] = []

    def delete_objects(**params: Any) -> dict:
        keys = [o["Key"] for o in params["Delete"]["Objects"]]
        calls.append(keys)
        errors = [
            {"Key": k, "Code": failures[k].pop(0), "Message": "We encountered an internal error."}
            for k in keys
            if failures.get(k)
        ]
        failed = {e["Key"] for e in errors}
        objects = [{"Key": k} for k in keys if k not in failed]
        answer = real(**{**params, "Delete": {**params["Delete"], "Objects": objects}}) if objects else {}
        return {**answer, "Errors": errors} if errors else answer

    monkeypatch.setattr(store.client, "delete_objects", delete_objects)
    return calls


def test_delete_sends_keys_that_failed_transiently_again(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"p/x/{i}" for i in range(4)]
    for key in keys:
        store.put_bytes(key, b"x")
    calls = failing_keys(store, monkeypatch, {"p/x/1": ["SlowDown", "InternalError"], "p/x/3": ["SlowDown"]})

    store.delete(keys)

    assert calls == [keys, ["p/x/1", "p/x/3"], ["p/x/1"]]
    assert store.list("p/x/") == []


@pytest.mark.parametrize(
    ("codes", "calls_made"), [(["AccessDenied"], 1), (["InternalError"] * 9, 4)], ids=["denied", "persistent"]
)
def test_delete_of_keys_the_endpoint_keeps_refusing_raises_naming_them(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, codes: list[str], calls_made: int
) -> None:
    """E.g. validation withdrawing a curated manifest: a silent failure would leave it published."""
    keys = ["p/curated/date=2013-03-01/_SUCCESS", "p/curated/date=2013-03-01/data.parquet"]
    for key in keys:
        store.put_bytes(key, b"x")
    calls = failing_keys(store, monkeypatch, {keys[0]: list(codes)})

    with pytest.raises(
        StorageError,
        match=rf"Cannot delete 1 of 2 .* refused s3://{store.bucket}/{keys[0]} \({codes[0]}\).* still there",
    ):
        store.delete(keys)

    assert len(calls) == calls_made
    assert [o.key for o in store.list("p/")] == [keys[0]]


# -- bucket creation and multipart upload errors -----------------------------------------------------


def test_ensure_bucket_creates_the_bucket_in_a_region_other_than_us_east_1(s3_endpoint: str) -> None:
    settings = S3Settings(
        bucket="t-eu-west-1",
        endpoint_url=s3_endpoint,
        region_name="eu-west-1",
        aws_access_key_id=stack.LOCAL_ACCESS_KEY,
        aws_secret_access_key=stack.LOCAL_SECRET_KEY,
        max_attempts=2,
    )
    store = ObjectStore(settings)

    store.ensure_bucket()
    store.ensure_bucket()  # exists now: nothing to do

    assert store.client.get_bucket_location(Bucket="t-eu-west-1")["LocationConstraint"] == "eu-west-1"
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_a_failed_multipart_upload_is_a_storage_error_naming_bucket_and_key(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "SINGLE_PUT_BYTES", 10)  # upload_file, which wraps its errors
    path = tmp_path / "model.bin"
    path.write_bytes(b"x" * 100)
    store = ObjectStore(
        S3Settings(
            bucket="no-such-bucket",
            endpoint_url=s3_endpoint,
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
    )

    with pytest.raises(
        StorageError,
        match=r"Cannot upload s3://no-such-bucket/models/model\.bin: bucket 'no-such-bucket' at "
        r"http://127\.0\.0\.1:\d+ does not exist",
    ):
        store.upload(path, "models/model.bin")


# -- a faulty network in front of the endpoint ---------------------------------------------------------


@contextmanager
def faulty_endpoint(store: ObjectStore, faults: int, status: int | None = None) -> Iterator[ObjectStore]:
    """``store`` through an HTTP proxy to the real endpoint that spoils the answers of the first
    ``faults`` GET/HEAD requests: answered ``status`` with S3's SlowDown error, or, when ``status``
    is None, the endpoint's own answer cut off halfway through its body by a connection reset."""
    host, port = store.settings.endpoint_url.rsplit("/", 1)[-1].split(":")
    left = [faults]

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream = http.client.HTTPConnection(host, int(port))
            upstream.request(self.command, self.path, body, dict(self.headers))
            answer = upstream.getresponse()
            data = answer.read()
            upstream.close()
            spoil = self.command in ("GET", "HEAD") and left[0] > 0
            left[0] -= spoil
            if spoil and status:
                data = (
                    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                )
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
            else:
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "date", "server", "transfer-encoding"):
                        self.send_header(name, value)
            self.end_headers()
            if spoil and not status:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                linger = struct.pack("ii", 1, 0)  # close() then sends RST: "connection reset by peer"
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.close_connection = True
                return
            self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        yield ObjectStore(S3Settings(**{**store.settings.__dict__, "endpoint_url": url, "max_attempts": 3}))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "read",
    [
        lambda s: s.get_bytes(STATE),
        lambda s: s.get_json(STATE),
        lambda s: s.read_for_write(STATE)[0],
        lambda s: s.get_tail(STATE, 10_000),
        lambda s: s.get_range(STATE, 0, 10_000),
    ],
    ids=["get_bytes", "get_json", "read_for_write", "get_tail", "get_range"],
)
def test_a_body_cut_off_by_a_connection_reset_is_fetched_again(
    store: ObjectStore, read: Callable[[ObjectStore], object]
) -> None:
    """botocore retries a request that failed, not a body that broke off while it was read: before the
    fix one reset mid-body of a manifest or state read failed the task."""
    store.put_json(STATE, {"n": "x" * 20_000})

    with faulty_endpoint(store, faults=1) as flaky:
        got = read(flaky)

    assert got == read(store)


def test_an_endpoint_that_keeps_throttling_says_so_and_what_to_do(store: ObjectStore) -> None:
    store.put_json(STATE, {"n": 1})

    with faulty_endpoint(store, faults=99, status=503) as throttling:
        with pytest.raises(StorageError) as error:
            throttling.get_json(STATE)

    assert str(error.value) == (
        f"Cannot read s3://{store.bucket}/{STATE}: the S3 endpoint {throttling.settings.endpoint_url} "
        "kept answering HTTP 503 SlowDown through 3 attempts: it is throttling requests or failing. "
        "Nothing is wrong with the data; run the task again once the endpoint has recovered."
    )


def test_a_range_of_no_bytes_reads_nothing_not_the_whole_object(store: ObjectStore) -> None:
    """The range "bytes=5-4" is not valid, and S3 answers it with the whole object."""
    store.put_bytes("p/ranged.bin", b"0123456789")
    assert (store.get_range("p/ranged.bin", 5, 0), store.get_range("p/ranged.bin", 2, 3)) == (b"", b"234")


def test_an_endpoint_rejecting_conditional_writes_is_named_as_such(store: ObjectStore) -> None:
    """S3-compatible stores answer a header they do not implement with 501 NotImplemented: every
    manifest publish failed with that bare code."""
    from botocore.awsrequest import AWSResponse

    class Body:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>A '
                b"header you provided implies functionality that is not implemented</Message></Error>"
            )

    def reject_conditional(request: Any, **_: Any) -> AWSResponse | None:
        if {"If-Match", "If-None-Match"} & set(request.headers.keys()):
            return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, Body())
        return None

    store.client.meta.events.register("before-send.s3.PutObject", reject_conditional)
    partition = partition_prefix("p", "predictions", DAY)
    part = write_part(store, partition, "part-0.parquet", b"PAR1", rows=1)  # not conditional
    store.client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: (
            AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, Body())
            if "plain" in request.url
            else None
        ),
    )
    with pytest.raises(StorageError, match="AWS_REQUEST_CHECKSUM_CALCULATION=when_required"):
        store.put_bytes("p/plain.bin", b"x")  # a store rejecting another header: not about conditions
    with pytest.raises(
        StorageError, match=r"does not implement conditional writes \(If-Match / If-None-Match\)"
    ):
        publish_manifest(store, partition, [part])


def test_a_spooled_object_is_readable_by_its_owner_only(store: ObjectStore) -> None:
    """Curated rows, predictions and data versions wait on local disk while read: other users of the
    machine must not read them (a download replaces a private temporary file with one of the umask)."""
    store.put_bytes("private/rows.parquet", b"rows")
    with store.spooled("private/rows.parquet") as path:
        assert path.read_bytes() == b"rows" and path.suffix == ".parquet"
        assert path.parent.stat().st_mode & 0o077 == 0
    assert not path.exists()
