"""The drift monitor's inputs, assembled from what the lifecycle already stored.

* reference = the champion's training snapshot: its DVC data version (tag on the registry version),
  a seeded sample of it, scored by the champion's ONNX model for prediction drift;
* current = the monitored window's curated rows that were scored, with the published scores;
* live metric = the champion's primary metric on current rows whose label has arrived, against the
  metric it was promoted with;
* new data = validated rows curated after the champion's training window.

Both sides are read part by part through :func:`mlops_tasks.drift.sample_parts`, keeping only the
seeded sample: the monitor's memory grows with ``drift.sample_rows``, not with the window.

:func:`mlops_tasks.drift.run_check` makes the decision; the cooldown state lives at
``<prefix>/state/drift.json``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlops_tasks import drift, features
from mlops_tasks.errors import DataError
from mlops_tasks.storage import partition_prefix, read_part, read_published
from mlops_tasks.versioning import read_record, read_version_file

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.storage import ObjectStore

log = logging.getLogger(__name__)
LOWER_IS_BETTER = {"log_loss", "rmse", "mae"}


_CURATED = "_curated_match"  # merge indicator: was the scored row's curated row found


class MonitoringError(DataError):
    """The monitor cannot run (no champion, reference unreadable); nothing is triggered."""


def state_key(cfg: PipelineConfig) -> str:
    return f"{cfg.prefix}/state/drift.json"


def monitored_days(cfg: PipelineConfig, day: dt.date) -> list[dt.date]:
    return [day - dt.timedelta(days=i) for i in range(cfg.drift.window_days - 1, -1, -1)]


def _window_parts(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, columns: list[str]
) -> list[drift.Part]:
    """The published predictions parts of the window's days: the scored rows are the current side.
    Each loads its keys and scores joined with the day's curated columns (in predictions order, so
    sampling positions are stable); a day's curated rows are read once, one day at a time."""
    keys = list(cfg.data.key)
    curated_day = functools.lru_cache(maxsize=1)(
        lambda d: _curated_day(store, cfg, d, list(dict.fromkeys([*keys, *columns])))
    )
    parts = []
    for d in monitored_days(cfg, day):
        scored = store.read_manifest(partition_prefix(cfg.prefix, "predictions", d))
        for part in scored["parts"] if scored else []:
            if part["key"].endswith(".parquet") and part["rows"]:
                parts.append(
                    drift.Part(
                        rows=part["rows"],
                        load=functools.partial(
                            _scored_rows, store, part, keys, functools.partial(curated_day, d)
                        ),
                        name=store.uri(part["key"]),
                    )
                )
    return parts


def _curated_day(store: ObjectStore, cfg: PipelineConfig, day: dt.date, columns: list[str]) -> pd.DataFrame:
    partition = partition_prefix(cfg.prefix, "curated", day)
    table, _ = read_published(store, partition, columns=columns)
    if table is None:
        raise FileNotFoundError(f"{store.uri(partition)}: the day was scored but its curated rows are gone")
    return table.to_pandas()


def _scored_rows(
    store: ObjectStore, part: dict[str, Any], keys: list[str], curated: Callable[[], pd.DataFrame]
) -> pd.DataFrame:
    scores = read_part(store, part, columns=[*keys, features.SCORE_OUTPUT]).to_pandas()
    return scores.merge(curated(), on=keys, how="left", validate="one_to_one", indicator=_CURATED)


def _version_parts(store: ObjectStore, version: str, record: dict, columns: list[str]) -> list[drift.Part]:
    return [
        drift.Part(
            rows=f["rows"],
            load=functools.partial(read_version_file, store, version, f, columns),
            name=store.uri(f["curated_key"]),
        )
        for f in record["files"]
        if f["rows"]
    ]


def _score(model_path: str, cfg: PipelineConfig, frame: pd.DataFrame) -> np.ndarray:
    from mlops_tasks.inference import make_session

    session = make_session(model_path, cfg)
    inputs = features.onnx_inputs(frame, cfg.features, source="reference sample")
    return session.run(
        [features.SCORE_OUTPUT], features.session_inputs(inputs, features.is_legacy_session(session))
    )[0]


def _live_metric_drop(cfg: PipelineConfig, current: pd.DataFrame, champion: dict[str, Any]) -> float | None:
    """Promoted metric minus live metric (positive = worse), on rows whose label has arrived."""
    from mlops_tasks.evaluation import compute_metrics

    metric = cfg.gate.primary_metric
    promoted = (champion.get("metrics") or {}).get(metric)
    if promoted is None or cfg.target.column not in current:
        return None
    labels = features.derive_label(current, cfg.target)
    known = labels.notna().to_numpy()
    if known.sum() < cfg.drift.min_rows:
        return None
    live = compute_metrics(
        cfg.target.task, labels[known].to_numpy(), current[features.SCORE_OUTPUT].to_numpy()[known]
    )
    if live.get(metric) is None:
        return None
    drop = promoted - live[metric]
    return -drop if metric in LOWER_IS_BETTER else drop


def _rows_since(store: ObjectStore, cfg: PipelineConfig, after: dt.date, day: dt.date) -> int:
    rows = 0
    for d in store.list_partition_dates(f"{cfg.prefix}/curated/"):
        if after < d <= day:
            manifest = store.read_manifest(partition_prefix(cfg.prefix, "curated", d))
            rows += manifest["rows"] if manifest else 0
    return rows


def run_drift_monitor(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, *, tracking_uri: str
) -> dict[str, Any]:
    """Run the drift check of ``day`` against the current champion; store the cooldown state."""
    from mlops_tasks.registry import champion_info, download_onnx

    champion = champion_info(cfg, tracking_uri=tracking_uri)
    if champion is None or not champion.get("data_version"):
        raise MonitoringError(
            f"{cfg.registered_model_name}: no champion with a data version in the registry at {tracking_uri}; "
            "nothing to compare against and nothing is triggered."
        )
    try:
        record = read_record(store, cfg, champion["data_version"])
        columns = drift.monitored_columns(cfg)
        reference, reference_rows = drift.sample_parts(
            _version_parts(store, champion["data_version"], record, columns),
            cfg.drift.sample_rows,
            cfg.drift.seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise MonitoringError(
            f"reference data of champion v{champion['version']} (data version {champion['data_version']}) "
            f"cannot be used: {exc}. No retraining is triggered."
        ) from None
    window_columns = [*columns, *([cfg.target.column] if cfg.target.column not in columns else [])]
    try:
        current, current_rows = drift.sample_parts(
            _window_parts(store, cfg, day, window_columns), cfg.drift.sample_rows, cfg.drift.seed
        )
    except (FileNotFoundError, ValueError) as exc:
        raise MonitoringError(
            f"the scored rows of {monitored_days(cfg, day)[0]}..{day} cannot be read: {exc}. "
            "No retraining is triggered."
        ) from None
    if len(current):
        # A day curated again after scoring: rows it no longer has are not compared.
        current = current[current.pop(_CURATED) == "both"].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = download_onnx(cfg, tracking_uri=tracking_uri, version=champion["version"], dest_dir=tmp)
        reference_scores = _score(str(model), cfg, reference) if len(reference) else None
    state = store.get_json(state_key(cfg)) if store.exists(state_key(cfg)) else None
    training_end = max(dt.date.fromisoformat(d) for d in record["days"])
    result = drift.run_check(
        store,
        cfg,
        day,
        reference=reference,
        current=current if len(current) else reference.iloc[:0],
        state=state,
        reference_scores=reference_scores if len(current) else None,
        current_scores=current[features.SCORE_OUTPUT].to_numpy() if len(current) else None,
        new_rows_since_training=_rows_since(store, cfg, training_end, day),
        live_metric_drop=_live_metric_drop(cfg, current, champion) if len(current) else None,
        reference_rows=reference_rows,
        current_rows=current_rows if len(current) else 0,
        reference_name=f"champion v{champion['version']} training data ({champion['data_version'][:12]})",
        current_name=f"scored rows {monitored_days(cfg, day)[0]}..{day}",
    )
    store.put_json(state_key(cfg), drift.next_state(state, result, day))
    return {
        **result,
        "champion_version": champion["version"],
        "report_html_uri": result.get("html_uri"),
        "report_json_uri": result.get("report_uri"),
    }
