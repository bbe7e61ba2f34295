"""Curated-like rows of the example data for model-stage tests and benchmarks.

What the ingest stage hands to training: flights left-joined with the origin's hourly weather on
(origin, time_hour) as UTC timestamps, cancelled flights (no dep_delay) dropped, plus the lineage
columns ``_day``, ``_source_file``, ``_source_line`` and ``_ingest_error``.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from mlops_tasks import example, stack
from mlops_tasks.config import PipelineConfig
from mlops_tasks.storage import ObjectStore, S3Settings

WEATHER_COLUMNS = [
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
]


def example_rows(start: dt.date, end: dt.date, max_rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Flights scheduled from ``start`` to ``end`` (inclusive) with weather; optionally a seeded sample."""
    flights = example.flights()
    days = pd.to_datetime(flights[["year", "month", "day"]])
    flights = flights[(days >= pd.Timestamp(start)) & (days <= pd.Timestamp(end))]
    flights = flights[flights["dep_delay"].notna()].copy()
    weather = example.weather()[["origin", "time_hour", *WEATHER_COLUMNS]].copy()
    for frame in (flights, weather):
        frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    weather = weather.drop_duplicates(["origin", "time_hour"])
    rows = flights.merge(weather, on=["origin", "time_hour"], how="left")
    rows["_day"] = pd.to_datetime(rows[["year", "month", "day"]]).dt.date
    rows["_source_file"] = "landing/date=" + rows["_day"].astype(str) + "/flights.csv"
    rows["_source_line"] = range(2, len(rows) + 2)
    rows["_ingest_error"] = None
    if max_rows is not None and len(rows) > max_rows:
        rows = rows.sample(max_rows, random_state=seed).sort_values(["_day", "sched_dep_time"], kind="stable")
    return rows.reset_index(drop=True)


def small_config(base: PipelineConfig, name: str, **changes: Any) -> PipelineConfig:
    """``base`` with a small, fast network, its own experiment and registered model ``name``, and the
    given top-level sections replaced (e.g. ``gate=...``, ``target=...``)."""
    # batches of 64: a few thousand rows make enough optimiser steps in 4 epochs for a model the
    # gates judge as a model (batches of 256 over 3 epochs left it near chance on some windows)
    model = base.model.model_copy(update={"hidden_layers": [32, 16], "epochs": 4, "batch_size": 64})
    mlflow = base.mlflow.model_copy(update={"experiment": name, "registered_model": name})
    return base.model_copy(update={"model": model, "mlflow": mlflow, **changes})


def with_shuffled_labels(rows: pd.DataFrame, column: str, seed: int = 1) -> pd.DataFrame:
    """The same rows with the target column permuted: a model trained on it learns nothing."""
    shuffled = rows.copy()
    shuffled[column] = rows[column].sample(frac=1.0, random_state=seed).to_numpy()
    return shuffled


@contextmanager
def local_tracking_server() -> Iterator[str]:
    """The embedded stack's S3 endpoint + MLflow server in a temporary directory (for benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="mlops-bench-") as tmp:
        s3 = stack.start_s3(Path(tmp))
        try:
            settings = S3Settings(
                bucket="mlops",
                endpoint_url=s3.url,
                aws_access_key_id=stack.LOCAL_ACCESS_KEY,
                aws_secret_access_key=stack.LOCAL_SECRET_KEY,
            )
            ObjectStore(settings).ensure_bucket()
            mlflow = stack.start_mlflow(Path(tmp), s3.url, "mlops")
            try:
                yield mlflow.url
            finally:
                mlflow.stop()
        finally:
            s3.stop()
