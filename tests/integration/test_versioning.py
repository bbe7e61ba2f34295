"""Data versions over the real S3 endpoint: DVC remote in the test bucket, records next to it."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlops_tasks import versioning
from mlops_tasks.ingestion import to_parquet_bytes
from mlops_tasks.storage import ObjectStore, S3Settings, partition_prefix, publish_manifest, write_part
from mlops_tasks.versioning import (
    CHECKOUT_MARKER,
    DVC_REMOTE,
    DataVersionError,
    checkout_data_version,
    create_data_version,
    dvc_object_key,
    dvc_repo,
    load_data_version,
    read_record,
    resolve_version,
)

DAY1, DAY2, DAY3 = dt.date(2013, 1, 1), dt.date(2013, 1, 2), dt.date(2013, 1, 3)


def curate(store: ObjectStore, cfg, day: dt.date, values: list[int]) -> str:
    """Publish a tiny curated partition the way validation does; returns its part key."""
    frame = pd.DataFrame({"dep_delay": pd.Series(values, dtype="float64"), "_day": day.isoformat()})
    partition = partition_prefix(cfg.prefix, "curated", day)
    part = write_part(store, partition, "data.parquet", to_parquet_bytes(frame), rows=len(frame))
    publish_manifest(store, partition, [part], day=day.isoformat())
    return part["key"]


def test_same_data_gives_the_same_version_without_a_new_upload(store, example_config):
    curate(store, example_config, DAY1, [1, 2, 3])
    curate(store, example_config, DAY2, [4, 5])
    first = create_data_version(store, example_config, [DAY1, DAY2])
    remote_objects = [o.key for o in store.list("dvc/")]
    second = create_data_version(store, example_config, [DAY2, DAY1])
    assert first["uploaded"] is True and second["uploaded"] is False
    assert second["data_version"] == first["data_version"]
    assert first["rows"] == 5 and first["days"] == ["2013-01-01", "2013-01-02"]
    assert [o.key for o in store.list("dvc/")] == remote_objects
    assert store.exists(f"{example_config.prefix}/data_versions/{first['data_version']}.dvc")


def test_changed_data_gives_a_new_version(store, example_config):
    curate(store, example_config, DAY1, [1, 2, 3])
    before = create_data_version(store, example_config, [DAY1])
    curate(store, example_config, DAY1, [1, 2, 99])
    after = create_data_version(store, example_config, [DAY1])
    assert after["data_version"] != before["data_version"] and after["uploaded"] is True


def test_checkout_restores_the_curated_parts_byte_for_byte(store, example_config, tmp_path: Path):
    keys = {DAY1: curate(store, example_config, DAY1, [1, 2]), DAY2: curate(store, example_config, DAY2, [3])}
    version = create_data_version(store, example_config, [DAY1, DAY2])["data_version"]
    target = checkout_data_version(store, example_config, version, tmp_path / "restored")
    restored = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert restored == sorted(
        [CHECKOUT_MARKER, *(f"date={d.isoformat()}/{k.rsplit('/', 1)[-1]}" for d, k in keys.items())]
    )
    assert json.loads((target / CHECKOUT_MARKER).read_text()) == {
        "pipeline": example_config.name,
        "data_version": version,
    }
    for day, key in keys.items():
        assert (target / f"date={day.isoformat()}" / key.rsplit("/", 1)[-1]).read_bytes() == store.get_bytes(
            key
        )


def test_a_version_is_found_by_its_first_characters_when_they_name_one(store, example_config):
    curate(store, example_config, DAY1, [1, 2])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    assert resolve_version(store, example_config, version[:12]) == version
    assert resolve_version(store, example_config, version) == version
    with pytest.raises(DataVersionError, match="is unknown"):
        resolve_version(store, example_config, "f" * 12 if not version.startswith("f") else "0" * 12)
    # a second version sharing the first characters (its record only: enough to be listed)
    twin = version[:12] + ("0" if version[12] != "0" else "1") * (len(version) - 12)
    store.put_json(f"{example_config.prefix}/data_versions/{twin}.json", {})
    with pytest.raises(DataVersionError, match="is the start of 2 data versions"):
        resolve_version(store, example_config, version[:12])
    assert resolve_version(store, example_config, version) == version
    with pytest.raises(DataVersionError, match="is not a data version"):
        resolve_version(store, example_config, "../etc")


def test_load_reads_the_version_rows_and_columns(store, example_config):
    curate(store, example_config, DAY1, [1, 2])
    curate(store, example_config, DAY2, [3])
    version = create_data_version(store, example_config, [DAY1, DAY2])["data_version"]
    frame = load_data_version(store, example_config, version, columns=["dep_delay"])
    assert list(frame.columns) == ["dep_delay"] and frame["dep_delay"].tolist() == [1.0, 2.0, 3.0]


def test_a_version_whose_day_was_curated_again_is_read_from_its_dvc_copy(
    store, example_config, caplog: pytest.LogCaptureFixture
):
    key = curate(store, example_config, DAY1, [1, 2])
    curate(store, example_config, DAY2, [3])
    version = create_data_version(store, example_config, [DAY1, DAY2])["data_version"]
    original = load_data_version(store, example_config, version)
    curate(store, example_config, DAY1, [1, 2, 4])  # a late landing file: the day's part is replaced
    assert not store.exists(key)

    with caplog.at_level(logging.INFO, logger="mlops_tasks.versioning"):
        again = load_data_version(store, example_config, version)

    pd.testing.assert_frame_equal(again, original)  # before the fix: DataVersionError 'no longer exists'
    dvc_copy = store.uri(dvc_object_key(read_record(store, example_config, version)["files"][0]["md5"]))
    said = "no longer exists (its day was curated again); reading the version's copy in the DVC remote"
    assert f"{said}, {dvc_copy}" in caplog.text


def test_a_curated_part_with_other_bytes_is_read_from_its_dvc_copy(store, example_config):
    key = curate(store, example_config, DAY1, [1, 2])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    store.put_bytes(key, to_parquet_bytes(pd.DataFrame({"dep_delay": [7.0], "_day": "2013-01-01"})))

    frame = load_data_version(store, example_config, version, columns=["dep_delay"])

    assert frame["dep_delay"].tolist() == [1.0, 2.0]


def test_the_remote_key_of_a_version_file_is_where_dvc_pushed_it(store, example_config):
    curate(store, example_config, DAY1, [1, 2])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    (file,) = read_record(store, example_config, version)["files"]
    assert store.get_bytes(dvc_object_key(file["md5"])) == store.get_bytes(file["curated_key"])


def delete(store, key):
    store.delete([key])


def overwrite(store, key):
    store.put_bytes(key, b"other bytes")


@pytest.mark.parametrize(
    ("damage_dvc", "says"),
    [(delete, "does not exist either"), (overwrite, "has other bytes than recorded too")],
    ids=["dvc_copy_gone", "dvc_copy_corrupt"],
)
def test_a_version_file_with_neither_copy_intact_is_a_clear_error(store, example_config, damage_dvc, says):
    key = curate(store, example_config, DAY1, [1, 2])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    (file,) = read_record(store, example_config, version)["files"]
    store.delete([key])
    damage_dvc(store, dvc_object_key(file["md5"]))

    with pytest.raises(DataVersionError) as raised:
        load_data_version(store, example_config, version)

    assert str(raised.value) == (
        f"data version '{version}': {file['path']} cannot be read: its curated part {store.uri(key)} "
        f"no longer exists (its day was curated again), and its copy in the DVC remote "
        f"{store.uri(dvc_object_key(file['md5']))} {says}. Neither holds the bytes the version recorded; "
        "unless the DVC remote can be restored, train on a new data version."
    )


def stage(store: ObjectStore, cfg, day: dt.date, read: list[str], listed: list[str]) -> list[dict]:
    """Publish a staging manifest the way ingest does (files ``read`` of the ``listed`` landing files);
    returns its ``landing_files`` fingerprints, which validation copies into the curated manifest."""
    landing = partition_prefix(cfg.prefix, "landing", day)
    fingerprints = [{"key": landing + name, "size": 10, "etag": f'"{name}"'} for name in listed]
    sources = [{"key": landing + name} for name in read]
    publish_manifest(
        store,
        partition_prefix(cfg.prefix, "staging", day),
        [],
        day=day.isoformat(),
        source_files=sources,
        landing_files=fingerprints,
    )
    return fingerprints


def curate_from(store: ObjectStore, cfg, day: dt.date, values: list[int], landing_files: list[dict]) -> None:
    frame = pd.DataFrame({"dep_delay": pd.Series(values, dtype="float64"), "_day": day.isoformat()})
    partition = partition_prefix(cfg.prefix, "curated", day)
    part = write_part(store, partition, "data.parquet", to_parquet_bytes(frame), rows=len(frame))
    publish_manifest(store, partition, [part], day=day.isoformat(), landing_files=landing_files)


def test_the_record_lists_the_landing_files_the_days_were_read_from(store, example_config):
    cfg = example_config
    curate_from(
        store, cfg, DAY1, [1], stage(store, cfg, DAY1, ["b.csv", "a.csv"], ["a.csv", "b.csv", "bad.csv"])
    )
    curate(store, cfg, DAY2, [2])  # curated before manifests recorded landing files: staging as it is
    stage(store, cfg, DAY2, ["c.csv"], ["c.csv"])

    version = create_data_version(store, cfg, [DAY1, DAY2])["data_version"]

    landing = [partition_prefix(cfg.prefix, "landing", d) for d in (DAY1, DAY1, DAY2)]
    assert read_record(store, cfg, version)["landing_files"] == [
        p + n for p, n in zip(landing, ["a.csv", "b.csv", "c.csv"], strict=True)
    ]


def test_a_day_ingested_again_but_not_curated_yet_lists_the_curated_manifest_s_files(store, example_config):
    cfg = example_config
    curate_from(store, cfg, DAY1, [1], stage(store, cfg, DAY1, ["a.csv"], ["a.csv"]))
    stage(store, cfg, DAY1, ["a.csv", "late.csv"], ["a.csv", "late.csv"])  # validation still to come

    version = create_data_version(store, cfg, [DAY1])["data_version"]

    landing = partition_prefix(cfg.prefix, "landing", DAY1)
    assert read_record(store, cfg, version)["landing_files"] == [landing + "a.csv"]


def test_credentials_reach_dvc_intact_and_no_file_holds_them(s3_endpoint):
    # '#' starts a comment in DVC's configobj files; quotes and spaces need quoting there too.
    secret = "abc#def 'q\" ;x"
    settings = S3Settings(
        bucket="b", endpoint_url=s3_endpoint, aws_access_key_id="key#1", aws_secret_access_key=secret
    )
    with dvc_repo(ObjectStore(settings)) as (root, repo):
        remote = repo.config["remote"][DVC_REMOTE]
        assert (remote["access_key_id"], remote["secret_access_key"]) == ("key#1", secret)
        assert remote["endpointurl"] == s3_endpoint and remote["url"] == "s3://b/dvc"
        written = [p for p in root.rglob("*") if p.is_file() and b"abc#def" in p.read_bytes()]
        assert written == []


def test_unknown_version_is_a_clear_error(store, example_config):
    with pytest.raises(DataVersionError, match="data version 'abc123' of 'flights_delay' is unknown"):
        load_data_version(store, example_config, "abc123")


def test_missing_days_are_skipped_and_listed(store, example_config):
    curate(store, example_config, DAY1, [1])
    result = create_data_version(store, example_config, [DAY1, DAY3])
    assert result["days"] == ["2013-01-01"] and result["missing_days"] == ["2013-01-03"]


def test_no_curated_day_at_all_is_a_clear_error(store, example_config):
    with pytest.raises(DataVersionError, match="none of the 1 day.*has a curated partition"):
        create_data_version(store, example_config, [DAY3])
    with pytest.raises(DataVersionError, match="no days were given"):
        create_data_version(store, example_config, [])


def files_in(directory: Path) -> list[str]:
    """The data files of ``directory`` (a checkout's marker aside)."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != CHECKOUT_MARKER
    )


def two_versions(store, cfg) -> tuple[str, str, list[str]]:
    """A version of two days, then one of the first day curated again; and the second's files."""
    curate(store, cfg, DAY1, [1, 2])
    curate(store, cfg, DAY2, [3])
    first = create_data_version(store, cfg, [DAY1, DAY2])["data_version"]
    key = curate(store, cfg, DAY1, [1, 2, 99])
    second = create_data_version(store, cfg, [DAY1])["data_version"]
    return first, second, [f"date={DAY1.isoformat()}/{key.rsplit('/', 1)[-1]}"]


def test_checkout_into_a_previous_checkout_replaces_it_whole(store, example_config, tmp_path: Path):
    first, second, second_files = two_versions(store, example_config)
    target = tmp_path / "restored"
    target.mkdir()  # an empty directory is a target too
    checkout_data_version(store, example_config, first, target)
    assert len(files_in(target)) == 2

    checkout_data_version(store, example_config, second, target)

    assert files_in(target) == second_files  # before the fix: the first version's files stayed too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored"]  # no temporary leftovers


def test_checkout_refuses_a_directory_holding_other_files_and_leaves_it_alone(
    store, example_config, tmp_path: Path
):
    curate(store, example_config, DAY1, [1])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    target = tmp_path / "work"
    (target / "date=2013-01-01").mkdir(parents=True)
    (target / CHECKOUT_MARKER).write_text("{}")  # a checkout, to which notes were added
    (target / "notes.txt").write_text("mine")

    with pytest.raises(
        DataVersionError, match=r"into .*work: the directory holds notes\.txt.*Nothing was changed"
    ):
        checkout_data_version(store, example_config, version, target)

    assert files_in(target) == ["notes.txt"] and (target / "date=2013-01-01").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_checkout_refuses_a_copy_of_landing_data_that_only_looks_like_a_checkout(
    store, example_config, tmp_path: Path
):
    """``aws s3 sync .../landing ./data`` makes date=YYYY-MM-DD/ folders of files too: without the
    marker a checkout writes, it is somebody's data, not a checkout to replace."""
    curate(store, example_config, DAY1, [1])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    mirror = tmp_path / "mirror"
    (mirror / "date=2013-01-01").mkdir(parents=True)
    (mirror / "date=2013-01-01" / "flights.csv").write_text("year,month\n")

    with pytest.raises(
        DataVersionError, match=r"into .*mirror: the directory is not empty and has no \.mlops-checkout"
    ):
        checkout_data_version(store, example_config, version, mirror)

    assert files_in(mirror) == ["date=2013-01-01/flights.csv"]


def test_checkout_restores_a_file_whose_dvc_copy_is_gone_from_its_intact_curated_part(
    store, example_config, tmp_path: Path
):
    keys = [curate(store, example_config, DAY1, [1, 2]), curate(store, example_config, DAY2, [3])]
    version = create_data_version(store, example_config, [DAY1, DAY2])["data_version"]
    first = read_record(store, example_config, version)["files"][0]
    store.delete([dvc_object_key(first["md5"])])

    target = checkout_data_version(store, example_config, version, tmp_path / "restored")

    assert [(target / p).read_bytes() for p in files_in(target)] == [store.get_bytes(k) for k in keys]
    # neither copy left: one clear error naming both, and no target
    curate(store, example_config, DAY1, [7])  # its day curated again: the part is gone
    with pytest.raises(DataVersionError, match=r"DVC remote is missing or damaged.*curated part .* is gone"):
        checkout_data_version(store, example_config, version, tmp_path / "again")
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("path", "/tmp/outside/.bashrc", "names the file '/tmp/outside/.bashrc', not data/date=YYYY-MM-DD"),
        ("path", "data/date=2013-01-01/../../../escaped", "names the file 'data/date=2013-01-01/../../"),
        ("path", "data/date=2013-01-01/..", "names the file 'data/date=2013-01-01/..'"),
        (
            "curated_key",
            "secrets/other-team.parquet",
            "from 'secrets/other-team.parquet', not a curated part",
        ),
    ],
)
def test_checkout_refuses_a_record_edited_to_write_outside_its_target_or_read_other_objects(
    store, example_config, tmp_path: Path, field: str, value: str, says: str
):
    """The record and the .dvc file come from the bucket: anyone who may write it must not be able to
    make a checkout write files elsewhere on the machine of whoever runs it."""
    curate(store, example_config, DAY1, [1, 2])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    record_key = f"{example_config.prefix}/data_versions/{version}.json"
    record = store.get_json(record_key)
    store.delete([dvc_object_key(record["files"][0]["md5"])])  # the copy is restored from curated_key
    record["files"][0][field] = value
    store.put_json(record_key, record)

    with pytest.raises(DataVersionError, match="which mlops_tasks never writes") as refused:
        checkout_data_version(store, example_config, version, tmp_path / "restored")
    assert says in str(refused.value)
    assert not (tmp_path / "restored").exists() and not Path("/tmp/outside/.bashrc").exists()


def test_checkout_refuses_a_dvc_file_edited_to_name_other_outputs(store, example_config, tmp_path: Path):
    curate(store, example_config, DAY1, [1, 2])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    dvc_key = f"{example_config.prefix}/data_versions/{version}.dvc"
    store.put_bytes(dvc_key, store.get_bytes(dvc_key).replace(b"path: data", b"path: ../../elsewhere"))

    with pytest.raises(DataVersionError, match=r"naming the outputs \['../../elsewhere'\], not 'data'"):
        checkout_data_version(store, example_config, version, tmp_path / "restored")


def test_checkout_below_a_file_is_refused_before_downloading(store, example_config, tmp_path: Path):
    curate(store, example_config, DAY1, [1])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataVersionError, match=r"below .*afile: it is a file"):
        checkout_data_version(store, example_config, version, tmp_path / "afile" / "data")


def test_a_checkout_failing_midway_leaves_the_previous_checkout_as_it_was(
    store, example_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    first, _, _ = two_versions(store, example_config)
    target = checkout_data_version(store, example_config, first, tmp_path / "restored")
    before = {name: (target / name).read_bytes() for name in files_in(target)}

    class DiskFullHalfwayThroughAFile:
        """versioning's ``shutil``, whose copytree runs out of space halfway through its first file."""

        def __getattr__(self, name: str):
            return getattr(shutil, name)

        def copytree(self, src, dst, **kwargs):
            def copy(s: str, d: str) -> str:
                data = Path(s).read_bytes()
                Path(d).write_bytes(data[: len(data) // 2])
                raise OSError(28, "No space left on device", d)

            return shutil.copytree(src, dst, copy_function=copy, **kwargs)

    monkeypatch.setattr(versioning, "shutil", DiskFullHalfwayThroughAFile())
    two_files = create_data_version(store, example_config, [DAY1, DAY2])["data_version"]
    with pytest.raises(OSError, match="No space left"):
        checkout_data_version(store, example_config, two_files, target)

    assert {name: (target / name).read_bytes() for name in files_in(target)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored"]


def test_checkout_returns_where_the_files_are_for_a_target_through_a_missing_directory(
    store, example_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``missing/../restored`` means ``./restored`` to the checkout (as to os.path.abspath) but does not
    resolve as given: before the fix it was returned as given, and the CLI counted 0 files in it."""
    curate(store, example_config, DAY1, [1, 2])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    monkeypatch.chdir(tmp_path)

    target = checkout_data_version(store, example_config, version, "missing/../restored")

    assert target == tmp_path / "restored"
    assert len(files_in(target)) == 1


@pytest.mark.parametrize("target", [".", ".."], ids=["current", "holding the current"])
def test_checkout_refuses_the_current_directory_and_those_holding_it(
    store, example_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
):
    """Before the fix a checkout into ``.`` renamed the current directory away: it reported success,
    and this process (and the user's shell) went on seeing an empty, deleted directory."""
    curate(store, example_config, DAY1, [1])
    version = create_data_version(store, example_config, [DAY1])["data_version"]
    here = tmp_path / "empty" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)

    with pytest.raises(DataVersionError, match=r"is the current directory or holds it.*e\.g\. \./data"):
        checkout_data_version(store, example_config, version, target)

    assert Path.cwd() == here and here.is_dir() and files_in(tmp_path) == []
