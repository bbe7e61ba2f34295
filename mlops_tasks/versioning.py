"""Data versions: curated days frozen as one DVC-tracked dataset in the object store's DVC remote.

A data version is the DVC directory hash of ``data/date=YYYY-MM-DD/<part>.parquet`` built from the
curated parts of the chosen days: the same bytes give the same hash on any machine, so the version
names the data, not the run that made it. Each version leaves two single-PUT objects under
``<prefix>/data_versions/``: the ``.dvc`` file (enough for ``dvc pull`` anywhere) and a JSON record
(days, files with their curated key, sha256, md5 and rows, and the landing files the days were
ingested from). The record is written last, after the push, so an existing record means the version
is complete in the remote and nothing is uploaded.

Reading a version (:func:`load_data_version`, :func:`read_version_file`) takes each file from its
curated part while that still holds the recorded bytes, and otherwise from the DVC remote, where
DVC keeps it under its md5 (:func:`dvc_object_key`): curating a day again (a late landing file)
replaces the day's parts, but the versions made before it stay readable. Both copies are checked
against the recorded sha256, one file at a time.

DVC runs through its Python API in a throwaway ``dvc init --no-scm`` repository. Its settings (the
remote's URL, endpoint and credentials, from the store's settings) are handed to DVC in memory
(``Repo(config=...)``), never written to a config file, logged or returned: a secret in a configobj
file would need quoting (an unquoted ``#`` starts a comment) and would sit on disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlops_tasks.config import PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.storage import (
    ManifestMismatchError,
    ObjectStore,
    parse_partition_date,
    partition_prefix,
    read_part,
    sha256_bytes,
    sha256_file,
)

if TYPE_CHECKING:
    import pandas as pd
    from dvc.repo import Repo

DVC_REMOTE = "store"
DVC_REMOTE_PREFIX = "dvc"
DATA_DIR = "data"
# Written into every checkout: only a directory holding it is replaced by the next checkout.
CHECKOUT_MARKER = ".mlops-checkout"

log = logging.getLogger(__name__)


class DataVersionError(DataError):
    """A data version cannot be made or read; the message names the version, day or key."""


def create_data_version(store: ObjectStore, cfg: PipelineConfig, days: list[dt.date]) -> dict[str, Any]:
    """Freeze the curated partitions of ``days`` as one DVC dataset and push it to the DVC remote.

    Days without a curated partition are skipped and listed. Returns ``{"data_version",
    "record_uri", "days": [iso...], "missing_days": [iso...], "rows", "uploaded"}``; ``uploaded`` is
    False when the same data was versioned before (its record, written then, is kept as it is).

    The record also lists, sorted, the keys of the landing files the days were ingested from
    (``landing_files``, see :func:`_day_landing_files`), read now, and the keys of the validation
    reports of the days' curated partitions (``validation_reports``, one per day), so that lineage written later
    names what this version holds even after a day is ingested or validated again. They stay out of the result,
    which goes to XCom: :func:`mlops_tasks.lineage.assemble_record` reads them from the record.
    """
    if not days:
        raise DataVersionError(f"cannot create a data version of '{cfg.name}': no days were given.")
    with dvc_repo(store) as (root, repo):
        files, included, missing, landing, reports = [], [], [], set(), []
        for day in sorted(set(days)):
            manifest = store.read_manifest(partition_prefix(cfg.prefix, "curated", day))
            if manifest is None:
                missing.append(day.isoformat())
                continue
            included.append(day.isoformat())
            landing.update(_day_landing_files(store, cfg, day, manifest))
            # manifests of older releases name no report: the day's latest then
            latest = partition_prefix(cfg.prefix, "reports/validation", day) + "validation.json"
            reports.append(manifest.get("validation_report") or latest)
            for part in manifest["parts"]:
                files.append(_fetch_part(store, root, day, part))
        if not included:
            raise DataVersionError(
                f"cannot create a data version of '{cfg.name}': none of the {len(missing)} day(s) "
                f"{missing[0]} .. {missing[-1]} has a curated partition (validate them first)."
            )
        repo.add(str(root / DATA_DIR))
        dvc_text = (root / f"{DATA_DIR}.dvc").read_text()
        version = yaml.safe_load(dvc_text)["outs"][0]["md5"].removesuffix(".dir")
        record_key = _record_key(cfg, version)
        rows = sum(f["rows"] for f in files)
        result = {
            "data_version": version,
            "record_uri": store.uri(record_key),
            "days": included,
            "missing_days": missing,
            "rows": rows,
            "uploaded": False,
        }
        if store.exists(record_key):
            return result
        repo.push(remote=DVC_REMOTE)
    store.put_bytes(_record_key(cfg, version, ".dvc"), dvc_text.encode(), "text/yaml")
    record = {
        "version": version,
        "days": included,
        "missing_days": missing,
        "files": files,
        "rows": rows,
        "landing_files": sorted(landing),
        # the keys of the reports of the validations that published these days' curated parts
        "validation_reports": reports,
    }
    store.put_json(record_key, record)
    return {**result, "uploaded": True}


def read_record(store: ObjectStore, cfg: PipelineConfig, version: str) -> dict[str, Any]:
    """The JSON record of a data version; :class:`DataVersionError` if there is none."""
    key = _record_key(cfg, version)
    try:
        return store.get_json(key)
    except FileNotFoundError:
        raise DataVersionError(
            f"data version '{version}' of '{cfg.name}' is unknown: {store.uri(key)} does not exist."
        ) from None


def resolve_version(store: ObjectStore, cfg: PipelineConfig, version: str) -> str:
    """The data version ``version`` names: itself, or the one version it is the start of (as the
    demo and the UI shorten versions to 12 characters). :class:`DataVersionError` if it names none
    or several."""
    prefix = _record_key(cfg, version).removesuffix(".json")
    versions = sorted(
        o.key.rsplit("/", 1)[-1].removesuffix(".json") for o in store.list(prefix) if o.key.endswith(".json")
    )
    if version in versions:
        return version
    if len(versions) > 1:
        raise DataVersionError(
            f"'{version}' is the start of {len(versions)} data versions of '{cfg.name}' "
            f"({', '.join(versions[:5])}); give more of it."
        )
    if not versions:
        raise DataVersionError(
            f"data version '{version}' of '{cfg.name}' is unknown: nothing under {store.uri(prefix)}."
        )
    return versions[0]


def checkout_data_version(
    store: ObjectStore, cfg: PipelineConfig, version: str, target_dir: str | Path
) -> Path:
    """Restore a version's files from the DVC remote into ``target_dir`` (``date=YYYY-MM-DD/<part>``),
    byte for byte, independent of the curated partitions (which later runs may replace).

    ``target_dir`` then holds that version's files and nothing else but :data:`CHECKOUT_MARKER`,
    which names the version. The files are written into a sibling temporary directory first, which
    then takes the target's place, so a failure midway leaves the target as it was. An existing
    target is replaced only if it is empty or is a checkout (the marker, and nothing but
    ``date=YYYY-MM-DD/`` folders of files): any other non-empty directory is refused, untouched - a
    local copy of the landing area looks like a checkout but for the marker - and so is the current
    directory or one holding it. The swap is two renames:
    a crash between them leaves no target and the previous checkout in ``.<name>.previous-*/old``
    next to it. Returns the target's absolute path (``a/../b`` need not resolve as given)."""
    target = Path(os.path.abspath(target_dir))
    if Path.cwd().is_relative_to(target.resolve()):
        # the swap would leave this process, and the shell that ran it, in the replaced directory
        raise DataVersionError(
            f"cannot check out data version '{version}' into {target}: it is the current directory "
            "or holds it, and a checkout replaces its target whole (this shell would be left in a "
            "deleted directory, seeing none of the files). Name a directory below it, e.g. ./data."
        )
    record = read_record(store, cfg, version)
    dvc_text = store.get_bytes(_record_key(cfg, version, ".dvc"))
    _check_restorable(store, cfg, version, record, dvc_text)
    _check_replaceable(target, version)
    _check_creatable(target.parent, version)
    with dvc_repo(store) as (root, repo):
        (root / f"{DATA_DIR}.dvc").write_bytes(dvc_text)
        from dvc.exceptions import DvcException

        try:
            repo.pull(remote=DVC_REMOTE)
            pull_problem = ""
        # A copy missing from the remote (DVC reports it either way, by thread timing): its curated
        # part may still hold the bytes, which _restore_from_curated checks.
        except (DvcException, OSError) as exc:
            pull_problem = f" (DVC: {exc})"
        for f in record["files"]:
            path = root / f["path"]
            if not path.is_file() or sha256_file(path) != f["sha256"]:
                _restore_from_curated(store, version, f, path, pull_problem)
        target.parent.mkdir(parents=True, exist_ok=True)
        # on the target's file system, so that the renames below are atomic
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.checkout-", dir=target.parent))
        try:
            shutil.copytree(root / DATA_DIR, staged, dirs_exist_ok=True)
            marker = {"pipeline": cfg.name, "data_version": version}
            (staged / CHECKOUT_MARKER).write_text(json.dumps(marker) + "\n")
            _check_replaceable(target, version)  # again: it may have changed during the pull
            if target.exists():
                previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.previous-", dir=target.parent))
                target.rename(previous / "old")
                try:
                    staged.rename(target)
                except OSError:
                    (previous / "old").rename(target)
                    raise
                shutil.rmtree(previous)
            else:
                staged.rename(target)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return target


# A file of a data version as _fetch_part records it: a curated part's name below its day's folder.
_VERSION_FILE = re.compile(rf"{DATA_DIR}/date=\d{{4}}-\d{{2}}-\d{{2}}/[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _check_restorable(
    store: ObjectStore, cfg: PipelineConfig, version: str, record: dict[str, Any], dvc_text: bytes
) -> None:
    """Refuse a record or ``.dvc`` file that would make a checkout write outside its target, or read
    other objects than the pipeline's curated parts: both come from the bucket, which people and
    tools other than mlops_tasks may write."""
    key = _record_key(cfg, version)

    def refuse(what: str) -> DataVersionError:
        return DataVersionError(
            f"data version '{version}': {store.uri(key)} {what}, which mlops_tasks never writes (the "
            "record was changed outside it); nothing was checked out."
        )

    try:
        outs = [out["path"] for out in yaml.safe_load(dvc_text)["outs"]]
    except (yaml.YAMLError, TypeError, KeyError):
        raise refuse(f"has a .dvc file beside it that is not DVC's record of '{DATA_DIR}'") from None
    if outs != [DATA_DIR]:
        raise refuse(f"has a .dvc file beside it naming the outputs {outs}, not '{DATA_DIR}'")
    for file in record.get("files", []):
        if not _VERSION_FILE.fullmatch(str(file.get("path"))):
            raise refuse(f"names the file {file.get('path')!r}, not {DATA_DIR}/date=YYYY-MM-DD/<part>")
        if not str(file.get("curated_key")).startswith(f"{cfg.prefix}/curated/"):
            raise refuse(f"restores {file['path']} from {file.get('curated_key')!r}, not a curated part")


def _restore_from_curated(
    store: ObjectStore, version: str, file: dict[str, Any], path: Path, why: str
) -> None:
    """Write ``file`` of the version to ``path`` from its curated part, whose bytes must still be
    the recorded ones; :class:`DataVersionError` naming both places otherwise."""
    where = f"data version '{version}': {file['path']}"
    try:
        data = store.get_bytes(file["curated_key"])
    except FileNotFoundError:
        data = None
    if data is None or sha256_bytes(data) != file["sha256"]:
        state = "is gone" if data is None else "holds other bytes (its day was curated again)"
        raise DataVersionError(
            f"{where}: its copy in the DVC remote is missing or damaged{why}, and its curated part "
            f"{store.uri(file['curated_key'])} {state}; these bytes cannot be restored. Nothing was "
            "changed in the target."
        )
    log.warning(
        "%s: the DVC remote's copy is missing%s; restored from its curated part (sha256 checked)", where, why
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _check_creatable(directory: Path, version: str) -> None:
    """Refuse, before any download, a target whose parent cannot be a directory (a file on the way)."""
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise DataVersionError(
                    f"cannot check out data version '{version}' below {ancestor}: it is a file, not a "
                    "directory; choose another target."
                )
            return


def _check_replaceable(target: Path, version: str) -> None:
    """Refuse a target a checkout may not replace (see :func:`checkout_data_version`)."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise DataVersionError(
            f"cannot check out data version '{version}' into {target}: it exists and is not a "
            "directory; choose a new or empty directory."
        )
    entries = list(target.iterdir())
    if entries and not (target / CHECKOUT_MARKER).is_file():
        raise DataVersionError(
            f"cannot check out data version '{version}' into {target}: the directory is not empty and "
            f"has no {CHECKOUT_MARKER} file, so no checkout wrote it (a checkout replaces its target "
            "whole). Nothing was changed; choose a new or empty directory."
        )
    foreign = [
        entry.name
        for entry in entries
        if entry.name != CHECKOUT_MARKER
        and not (
            entry.is_dir()
            and not entry.is_symlink()
            and parse_partition_date(entry.name) is not None
            and all(f.is_file() and not f.is_symlink() for f in entry.iterdir())
        )
    ]
    if foreign:
        raise DataVersionError(
            f"cannot check out data version '{version}' into {target}: the directory holds "
            f"{', '.join(sorted(foreign)[:3])}{' ...' if len(foreign) > 3 else ''}, which no checkout "
            "wrote (a checkout holds only date=YYYY-MM-DD/ folders of files, and replaces a previous "
            "one whole). Nothing was changed; choose a new or empty directory."
        )


def load_data_version(
    store: ObjectStore, cfg: PipelineConfig, version: str, columns: list[str] | None = None
) -> pd.DataFrame:
    """The rows of a data version, file by file (see :func:`read_version_file`): from its curated
    parts, or from the DVC remote for a part its day's curating again replaced."""
    import pandas as pd

    record = read_record(store, cfg, version)
    frames = [read_version_file(store, version, f, columns) for f in record["files"]]
    return pd.concat(frames, ignore_index=True)


def read_version_file(
    store: ObjectStore, version: str, file: dict[str, Any], columns: list[str] | None = None
) -> pd.DataFrame:
    """One file of a data version record (``record["files"][i]``), checked against its sha256.

    Read from its curated part while that holds the recorded bytes; when the part is gone or holds
    other bytes (its day was curated again), from the version's copy in the DVC remote (logged).
    :class:`DataVersionError` naming the version, the file and both places when neither copy is
    intact. One file is downloaded at a time, to a temporary file removed afterwards.
    """
    curated = {"key": file["curated_key"], "sha256": file["sha256"]}
    try:
        return read_part(store, curated, columns).to_pandas()
    except FileNotFoundError:
        curated_problem = "no longer exists (its day was curated again)"
    except ManifestMismatchError:
        curated_problem = f"has other bytes than the recorded sha256 {file['sha256'][:12]}..."
    where = f"data version '{version}': {file.get('path', file['curated_key'])}"
    md5 = file.get("md5")
    if not md5:
        raise DataVersionError(
            f"{where}: its curated part {store.uri(curated['key'])} {curated_problem}, and the record "
            "names no md5 to find its copy in the DVC remote by. Train on a new data version."
        )
    dvc_key = dvc_object_key(md5)
    log.warning(
        "%s: curated part %s %s; reading the version's copy in the DVC remote, %s",
        where,
        store.uri(curated["key"]),
        curated_problem,
        store.uri(dvc_key),
    )
    try:
        frame = read_part(store, {"key": dvc_key, "sha256": file["sha256"]}, columns).to_pandas()
    except FileNotFoundError:
        dvc_problem = "does not exist either"
    except ManifestMismatchError:
        dvc_problem = "has other bytes than recorded too"
    else:
        log.info("%s: read from the DVC remote, %s (sha256 checked)", where, store.uri(dvc_key))
        return frame
    raise DataVersionError(
        f"{where} cannot be read: its curated part {store.uri(curated['key'])} {curated_problem}, "
        f"and its copy in the DVC remote {store.uri(dvc_key)} {dvc_problem}. Neither holds the bytes "
        "the version recorded; unless the DVC remote can be restored, train on a new data version."
    )


def dvc_object_key(md5: str) -> str:
    """The key of a file in the DVC remote (DVC 3's layout: ``files/md5/<2 hex>/<30 hex>``)."""
    if len(md5) != 32 or not md5.isalnum():
        raise DataVersionError(f"'{md5}' is not an md5 hash of a data version file.")
    return f"{DVC_REMOTE_PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"


def _record_key(cfg: PipelineConfig, version: str, suffix: str = ".json") -> str:
    if not version.isalnum():
        raise DataVersionError(f"'{version}' is not a data version (expected a DVC md5 hash).")
    return f"{cfg.prefix}/data_versions/{version}{suffix}"


def _fetch_part(store: ObjectStore, root: Path, day: dt.date, part: dict[str, Any]) -> dict[str, Any]:
    """Download one curated part into the DVC workspace, checking it against its manifest."""
    relative = f"{DATA_DIR}/date={day.isoformat()}/{part['key'].rsplit('/', 1)[-1]}"
    path = store.download(part["key"], root / relative)
    digest = sha256_file(path)
    if digest != part["sha256"]:
        raise DataVersionError(
            f"curated part {store.uri(part['key'])} does not match its manifest's sha256; "
            f"the partition of {day} is being rewritten, retry."
        )
    md5 = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    return {"path": relative, "curated_key": part["key"], "sha256": digest, "md5": md5, "rows": part["rows"]}


def _day_landing_files(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, curated: dict[str, Any]
) -> list[str]:
    """The keys of the landing files ``day``'s curated partition (its manifest ``curated``) came from.

    The staging manifest's ``source_files`` (the files ingest read rows from) when that manifest is
    the one the partition was validated from (its ``landing_files`` fingerprints are the curated
    manifest's copy); when the day was ingested again since, the curated manifest's own
    ``landing_files`` (every landing file routed to the pipeline then, a rejected one too). Curated
    manifests written before ``landing_files`` was recorded have no fingerprints to compare: staging's
    ``source_files`` as they are now, as lineage read them before versions recorded them.
    """
    staged = store.read_manifest(partition_prefix(cfg.prefix, "staging", day)) or {}
    recorded = curated.get("landing_files")
    if recorded is None or staged.get("landing_files") == recorded:
        return [f["key"] for f in staged.get("source_files", [])]
    return [f["key"] for f in recorded]


@contextmanager
def dvc_repo(store: ObjectStore) -> Iterator[tuple[Path, Repo]]:
    """A temporary no-SCM DVC repository whose default remote is ``s3://<bucket>/dvc``; its settings
    live in memory only (see the module docstring)."""
    from dvc.repo import Repo

    s = store.settings
    remote = {
        "url": f"s3://{store.bucket}/{DVC_REMOTE_PREFIX}",
        "region": s.region_name,
        "endpointurl": s.endpoint_url,
        "access_key_id": s.aws_access_key_id,
        "secret_access_key": s.aws_secret_access_key,
        "session_token": s.aws_session_token,
        "ssl_verify": s.verify if s.verify is not True else None,
    }
    with tempfile.TemporaryDirectory(prefix="mlops-dvc-") as tmp:
        root = Path(tmp)
        Repo.init(str(root), no_scm=True).close()
        config = {
            "core": {"remote": DVC_REMOTE, "analytics": False, "site_cache_dir": str(root / ".dvc" / "site")},
            "remote": {DVC_REMOTE: {k: v for k, v in remote.items() if v is not None and v != ""}},
        }
        repo = Repo(str(root), config=config)
        try:
            yield root, repo
        finally:
            repo.close()
