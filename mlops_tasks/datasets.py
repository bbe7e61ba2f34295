"""scikit-learn's bundled data sets as daily landing files: the second pipeline of the "add your own
model" walkthrough (docs/new-pipeline.md, configs/examples/wine_cultivar.yaml).

Every pipeline reads raw files from ``<prefix>/landing/date=YYYY-MM-DD/``, but the bundled sets have no
time axis. Each row therefore gets a synthetic day that depends only on the data set, ``start``, ``days``
and ``seed``: the rows are shuffled with the seed (the shipped files are sorted by class, so slicing them
in order would give each day one class) and dealt round-robin over the days. Same arguments -> same
days, same CSV bytes, same keys: landing twice is a no-op.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

import numpy as np

from mlops_tasks.errors import DataError
from mlops_tasks.storage import partition_prefix

if TYPE_CHECKING:
    import pandas as pd

    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.storage import ObjectStore

# The tabular sets bundled with scikit-learn (no download): loader ``sklearn.datasets.load_<name>``.
BUNDLED = ("breast_cancer", "diabetes", "digits", "iris", "wine")
KEY_COLUMN = "row_id"
TARGET_COLUMN = "target"
LAND_THREADS = 8  # boto3's default connection pool holds 10


class DatasetError(DataError):
    """A landing request the bundled data cannot satisfy (unknown data set, no days)."""


def column_name(name: str) -> str:
    """Raw column names as config-friendly identifiers ("od280/od315_of_diluted_wines" ->
    "od280_od315_of_diluted_wines", "mean radius" -> "mean_radius")."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", name.strip()).strip("_").lower()


def sklearn_frame(dataset: str) -> pd.DataFrame:
    """One bundled data set as a frame: ``row_id`` (its row number in the shipped file, the key), the
    features under :func:`column_name` names, and ``target`` (the class name for classifiers, e.g.
    "class_0" for wine, so predictions read as names and not as indices)."""
    import sklearn.datasets

    if dataset not in BUNDLED:
        raise DatasetError(
            f"'{dataset}' is not a tabular data set bundled with scikit-learn; choose one of {list(BUNDLED)}"
        )
    bunch = getattr(sklearn.datasets, f"load_{dataset}")(as_frame=True)
    frame = bunch.frame.rename(columns=column_name)
    if "target_names" in bunch:
        frame[TARGET_COLUMN] = np.asarray(bunch.target_names)[bunch.target.to_numpy()]
    frame.insert(0, KEY_COLUMN, np.arange(len(frame), dtype=np.int64))
    return frame


def synthetic_days(rows: int, start: dt.date, days: int, seed: int = 0) -> list[dt.date]:
    """The landing day of each of ``rows`` rows: shuffled with ``seed``, dealt over ``days`` days from
    ``start`` (day sizes differ by at most one row; every day gets rows when ``rows >= days``)."""
    if days < 1:
        raise DatasetError(f"cannot spread rows over {days} day(s): days must be at least 1")
    position = np.empty(rows, dtype=np.int64)
    position[np.random.default_rng(seed).permutation(rows)] = np.arange(rows)
    return [start + dt.timedelta(days=int(p % days)) for p in position]


def daily_csv(frame: pd.DataFrame, days: list[dt.date]) -> dict[dt.date, tuple[bytes, int]]:
    """One CSV per day (rows in key order, "\\n" line ends, pandas' shortest float repr): deterministic
    bytes, so a re-landing writes identical objects. Values: (CSV bytes, rows)."""
    by_day = frame.assign(_day=days).groupby("_day", sort=True)
    return {
        day: (
            part.drop(columns="_day")
            .sort_values(KEY_COLUMN)
            .to_csv(index=False, lineterminator="\n")
            .encode(),
            len(part),
        )
        for day, part in by_day
    }


def seed_sklearn_landing(
    store: ObjectStore,
    cfg: PipelineConfig,
    dataset: str,
    start: dt.date,
    days: int,
    *,
    seed: int = 0,
    threads: int = LAND_THREADS,
) -> dict[str, int | str]:
    """Land ``dataset`` as ``<dataset>.csv`` under the pipeline's ``landing/date=YYYY-MM-DD/`` for
    ``days`` days from ``start``, as an upstream system would (one PUT per day, idempotent).

    Returns counts: ``days``, ``objects``, ``rows``, ``bytes`` and the ``first``/``last`` landed day
    (the walkthrough triggers runs relative to them)."""
    frame = sklearn_frame(dataset)
    files = daily_csv(frame, synthetic_days(len(frame), start, days, seed))
    objects = {
        partition_prefix(cfg.prefix, "landing", day) + f"{dataset}.csv": data
        for day, (data, _) in files.items()
    }
    sent = store.put_many(objects, "text/csv", threads)
    return {
        "days": len(files),
        "objects": len(objects),
        "rows": sum(rows for _, rows in files.values()),
        "bytes": sent,
        "first": min(files).isoformat(),
        "last": max(files).isoformat(),
    }
