"""Data versions: curated days frozen as one DVC-tracked dataset in the object store's DVC remote.

A data version is the DVC directory hash of ``data/date=YYYY-MM-DD/<part>.parquet`` built from the
curated parts of the chosen days: the same bytes give the same hash on any machine, so the version
names the data, not the run that made it. Each version leaves two single-PUT objects under
``<prefix>/data_versions/``: the ``.dvc`` file (enough for ``dvc pull`` anywhere) and a JSON record
(days, files with their curated key, sha256, md5 and rows). The record is written last, after the
push, so an existing record means the version is complete in the remote and nothing is uploaded.

DVC runs through its Python API in a throwaway ``dvc init --no-scm`` repository. Its settings (the
remote's URL, endpoint and credentials, from the store's settings) are handed to DVC in memory
(``Repo(config=...)``), never written to a config file, logged or returned: a secret in a configobj
file would need quoting (an unquoted ``#`` starts a comment) and would sit on disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
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
    partition_prefix,
    read_part,
    sha256_file,
)

if TYPE_CHECKING:
    import pandas as pd
    from dvc.repo import Repo

DVC_REMOTE = "store"
DVC_REMOTE_PREFIX = "dvc"
DATA_DIR = "data"


class DataVersionError(DataError):
    """A data version cannot be made or read; the message names the version, day or key."""


def create_data_version(store: ObjectStore, cfg: PipelineConfig, days: list[dt.date]) -> dict[str, Any]:
    """Freeze the curated partitions of ``days`` as one DVC dataset and push it to the DVC remote.

    Days without a curated partition are skipped and listed. Returns ``{"data_version",
    "record_uri", "days": [iso...], "missing_days": [iso...], "rows", "uploaded"}``; ``uploaded`` is
    False when the same data was versioned before.
    """
    if not days:
        raise DataVersionError(f"cannot create a data version of '{cfg.name}': no days were given.")
    with dvc_repo(store) as (root, repo):
        files, included, missing = [], [], []
        for day in sorted(set(days)):
            manifest = store.read_manifest(partition_prefix(cfg.prefix, "curated", day))
            if manifest is None:
                missing.append(day.isoformat())
                continue
            included.append(day.isoformat())
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
    record = {"version": version, "days": included, "missing_days": missing, "files": files, "rows": rows}
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


def checkout_data_version(
    store: ObjectStore, cfg: PipelineConfig, version: str, target_dir: str | Path
) -> Path:
    """Restore a version's files from the DVC remote into ``target_dir`` (``date=YYYY-MM-DD/<part>``),
    byte for byte, independent of the curated partitions (which later runs may replace).

    ``target_dir`` then holds that version's files and nothing else. The files are written into a
    sibling temporary directory first, which then takes the target's place, so a failure midway
    leaves the target as it was. An existing target is replaced only if it is empty or holds a
    checkout (nothing but ``date=YYYY-MM-DD/`` folders of files); any other non-empty directory is
    refused, untouched. The swap is two renames: a crash between them leaves no target and the
    previous checkout in ``.<name>.previous-*/old`` next to it."""
    record = read_record(store, cfg, version)
    dvc_text = store.get_bytes(_record_key(cfg, version, ".dvc"))
    target = Path(os.path.abspath(target_dir))
    _check_replaceable(target, version)
    with dvc_repo(store) as (root, repo):
        (root / f"{DATA_DIR}.dvc").write_bytes(dvc_text)
        repo.pull(remote=DVC_REMOTE)
        for f in record["files"]:
            path = root / f["path"]
            if sha256_file(path) != f["sha256"]:
                raise DataVersionError(
                    f"data version '{version}': {f['path']} pulled from DVC has other bytes"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        # on the target's file system, so that the renames below are atomic
        staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.checkout-", dir=target.parent))
        try:
            shutil.copytree(root / DATA_DIR, staged, dirs_exist_ok=True)
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
    return Path(target_dir)


def _check_replaceable(target: Path, version: str) -> None:
    """Refuse a target a checkout may not replace (see :func:`checkout_data_version`)."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise DataVersionError(
            f"cannot check out data version '{version}' into {target}: it exists and is not a "
            "directory; choose a new or empty directory."
        )
    foreign = [
        entry.name
        for entry in target.iterdir()
        if not (
            entry.is_dir()
            and not entry.is_symlink()
            and _is_date_folder(entry.name)
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


def _is_date_folder(name: str) -> bool:
    try:
        return name.startswith("date=") and dt.date.fromisoformat(name[5:]).isoformat() == name[5:]
    except ValueError:
        return False


def load_data_version(
    store: ObjectStore, cfg: PipelineConfig, version: str, columns: list[str] | None = None
) -> pd.DataFrame:
    """The rows of a data version, read from its curated parts after checking their sha256."""
    import pandas as pd

    record = read_record(store, cfg, version)
    frames = [read_version_file(store, version, f, columns) for f in record["files"]]
    return pd.concat(frames, ignore_index=True)


def read_version_file(
    store: ObjectStore, version: str, file: dict[str, Any], columns: list[str] | None = None
) -> pd.DataFrame:
    """One curated part of a data version record (``record["files"][i]``), checked against its sha256."""
    uri = store.uri(file["curated_key"])
    try:
        table = read_part(store, {"key": file["curated_key"], "sha256": file["sha256"]}, columns)
    except FileNotFoundError:
        raise DataVersionError(
            f"data version '{version}': curated part {uri} no longer exists (its day was curated "
            "again); restore the version with checkout_data_version."
        ) from None
    except ManifestMismatchError:
        raise DataVersionError(
            f"data version '{version}': curated part {uri} has changed (its sha256 is no longer the "
            f"recorded {file['sha256'][:12]}...); restore the version with checkout_data_version."
        ) from None
    return table.to_pandas()


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
    }
    with tempfile.TemporaryDirectory(prefix="mlops-dvc-") as tmp:
        root = Path(tmp)
        Repo.init(str(root), no_scm=True).close()
        config = {
            "core": {"remote": DVC_REMOTE, "analytics": False, "site_cache_dir": str(root / ".dvc" / "site")},
            "remote": {DVC_REMOTE: {k: v for k, v in remote.items() if v}},
        }
        repo = Repo(str(root), config=config)
        try:
            yield root, repo
        finally:
            repo.close()
