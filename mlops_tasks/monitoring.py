"""The drift monitor's inputs, assembled from what the lifecycle already stored.

* reference = the champion's training snapshot: its DVC data version (tag on the registry version),
  a seeded sample of it, scored by the champion's ONNX model for prediction drift;
* current = the monitored window's curated rows that the champion scored, with the published scores
  (days whose predictions another model version published are skipped, and listed in the result);
* live metric = the champion's primary metric on current rows whose label has arrived, against the
  metric it was promoted with; labels and classes as the gate derives them, multiclass from the
  published ``probability_<class>`` columns. Where it cannot be computed (too few labels, undefined on
  these rows, labels the model does not know) it is skipped, and the result says why;
* new data = validated rows curated after the champion's training window.

Both sides are read part by part through :func:`mlops_tasks.drift.sample_parts`, keeping only the
seeded sample: the monitor's memory grows with ``drift.sample_rows``, not with the window.

:func:`mlops_tasks.drift.run_check` makes the decision and stores the cooldown state at
``<prefix>/state/drift.json`` in one conditional write.
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
from mlops_tasks.status import without_credentials
from mlops_tasks.storage import ObjectNotFoundError, partition_prefix, read_part, read_published
from mlops_tasks.versioning import read_record, read_version_file

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.inference import _Model
    from mlops_tasks.storage import ObjectStore

log = logging.getLogger(__name__)


_CURATED = "_curated_match"  # merge indicator: was the scored row's curated row found
_WINDOW_READS = 3  # reads of the window when days are re-scored while it is read


class DayTrainedOn(Exception):
    """The checked day is inside the champion's training data: nothing to monitor (the task skips)."""


class MonitoringError(DataError):
    """The monitor cannot run (no champion, reference unreadable); nothing is triggered."""


def state_key(cfg: PipelineConfig) -> str:
    return f"{cfg.prefix}/state/drift.json"


def monitored_days(cfg: PipelineConfig, day: dt.date) -> list[dt.date]:
    return [day - dt.timedelta(days=i) for i in range(cfg.drift.window_days - 1, -1, -1)]


def _window_parts(
    store: ObjectStore,
    cfg: PipelineConfig,
    day: dt.date,
    columns: list[str],
    *,
    model_version: str,
    outputs: list[str],
    trained_until: dt.date,
) -> tuple[list[drift.Part], list[dict[str, Any]], list[dict[str, Any]]]:
    """The predictions parts the champion (``model_version``) published for the window's days after
    ``trained_until`` (the last day of its training data: the days up to it are its reference, and
    the window's current side must not hold them too, which would dilute drift and flatter the live
    metric with rows it was trained on): the scored rows are the current side; the days another
    version published, which are skipped (an earlier champion's scores would blend its prediction
    drift and metric into this one's); and the scored days whose curated rows were withdrawn since,
    skipped too.

    Each part loads its keys and ``outputs`` joined with the day's curated columns (in predictions
    order, so sampling positions are stable); a day's curated rows are read once, one day at a time."""
    keys = list(cfg.data.key)
    curated_day = functools.lru_cache(maxsize=1)(
        lambda d: _curated_day(store, cfg, d, list(dict.fromkeys([*keys, *columns])))
    )
    parts: list[drift.Part] = []
    skipped: list[dict[str, Any]] = []
    uncurated: list[dict[str, Any]] = []
    for d in monitored_days(cfg, day):
        if d <= trained_until:
            continue
        scored = store.read_manifest(partition_prefix(cfg.prefix, "predictions", d))
        if scored is None:
            continue
        if str(scored.get("model_version")) != str(model_version):
            skipped.append(
                {
                    "day": d.isoformat(),
                    "model_version": scored.get("model_version"),
                    "rows": scored.get("rows"),
                }
            )
            continue
        if store.read_manifest(partition_prefix(cfg.prefix, "curated", d)) is None:
            # Withdrawn since scoring (validated again and failed its gate): like rows a day no longer
            # has, not compared; the window's other days still are.
            uncurated.append({"day": d.isoformat(), "rows": scored.get("rows")})
            continue
        for part in scored["parts"]:
            if part["key"].endswith(".parquet") and part["rows"]:
                parts.append(
                    drift.Part(
                        rows=part["rows"],
                        load=functools.partial(
                            _scored_rows,
                            store,
                            part,
                            [*keys, *outputs],
                            keys,
                            functools.partial(curated_day, d),
                        ),
                        name=store.uri(part["key"]),
                    )
                )
    return parts, skipped, uncurated


def _curated_day(store: ObjectStore, cfg: PipelineConfig, day: dt.date, columns: list[str]) -> pd.DataFrame:
    partition = partition_prefix(cfg.prefix, "curated", day)
    table, _ = read_published(store, partition, columns=columns)
    if table is None:  # withdrawn since the window was listed: reading it again skips the day
        raise ObjectNotFoundError(
            f"{store.uri(partition)}: the day was scored but its curated rows are gone", partition
        )
    return table.to_pandas()


def _scored_rows(
    store: ObjectStore,
    part: dict[str, Any],
    columns: list[str],
    keys: list[str],
    curated: Callable[[], pd.DataFrame],
) -> pd.DataFrame:
    scores = read_part(store, part, columns=columns).to_pandas()
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


def _load_model(model_path: str, cfg: PipelineConfig, champion: dict[str, Any]) -> _Model:
    """The champion's ONNX session, task and classes (checked against the config as inference does)."""
    from mlops_tasks.inference import ModelContractError, _Model

    try:
        return _Model.load(model_path, cfg)
    except ModelContractError as exc:
        raise MonitoringError(
            f"champion v{champion['version']} cannot be used for the drift check: {exc}. "
            "No retraining is triggered."
        ) from None


def _probability_columns(model: _Model) -> list[str]:
    """The published ``probability_<class>`` columns of a multiclass model, in class order."""
    return [f.name for f in model.output_fields() if f.name.startswith("probability_")]


def _score(model: _Model, cfg: PipelineConfig, frame: pd.DataFrame) -> np.ndarray:
    inputs = features.onnx_inputs(frame, cfg.features, source="reference sample")
    return model.session.run([features.SCORE_OUTPUT], features.session_inputs(inputs, model.legacy))[0]


def live_metric(
    cfg: PipelineConfig, current: pd.DataFrame, champion: dict[str, Any], model: _Model
) -> dict[str, Any]:
    """The champion's primary metric on ``current`` rows whose label has arrived, against the value it
    was promoted with: ``{"metric", "promoted", "live", "drop", "labelled_rows"}`` with ``drop`` =
    promoted minus live, oriented so that positive is worse; ``drop`` None and ``skipped`` (why) when it
    cannot be computed. Labels and targets are derived as the gate derives them."""
    from mlops_tasks.evaluation import (
        HIGHER_IS_BETTER,
        compute_metrics,
        label_targets,
        labelled_rows,
        labels_outside,
    )

    metric = cfg.gate.primary_metric
    promoted = (champion.get("metrics") or {}).get(metric)
    result: dict[str, Any] = {
        "metric": metric,
        "promoted": promoted,
        "live": None,
        "drop": None,
        "labelled_rows": 0,
    }

    def skipped(reason: str) -> dict[str, Any]:
        log.info("live %s of champion v%s not computed: %s", metric, champion["version"], reason)
        return {**result, "skipped": reason}

    if promoted is None:
        return skipped(f"champion v{champion['version']} has no gate {metric} to compare with")
    if current.empty:
        return skipped(f"no rows scored by champion v{champion['version']} in the window")
    rows, label = labelled_rows(current, cfg)
    # A row the champion scored NaN/inf has no error to measure (as in inference's shadow metrics);
    # left in, it would make the metric undefined on every other row too, hiding a drop.
    finite = np.isfinite(rows[features.SCORE_OUTPUT].to_numpy(dtype=np.float64))
    if not finite.all():
        log.warning("live %s: %d labelled rows have a non-finite score, left out", metric, (~finite).sum())
        rows, label = rows[finite], label[finite]
    result["labelled_rows"] = len(rows)
    if len(rows) < cfg.drift.min_rows:
        return skipped(
            f"{len(rows)} scored rows have a label, fewer than drift.min_rows={cfg.drift.min_rows}"
        )
    if model.task == "binary":
        # A binary model cannot be right or wrong about a label outside its two classes.
        unknown, classes = labels_outside(label, model.classes)
        if unknown:
            return skipped(
                f"labels {unknown[:5]} of column '{cfg.target.column}' are not among champion "
                f"v{champion['version']}'s classes {classes}"
            )
    probabilities = None
    if model.task == "multiclass":
        probabilities = rows[_probability_columns(model)].to_numpy(dtype=np.float64)
    live = compute_metrics(
        model.task,
        label_targets(label, model.task, model.classes),
        rows[features.SCORE_OUTPUT].to_numpy(dtype=np.float64),
        probabilities,
    ).get(metric)
    if live is None:
        return skipped(f"{metric} is undefined on the {len(rows)} labelled rows (e.g. all of one class)")
    drop = promoted - live if HIGHER_IS_BETTER[metric] else live - promoted
    return {**result, "live": live, "drop": drop}


def _rows_since(store: ObjectStore, cfg: PipelineConfig, after: dt.date, day: dt.date) -> int:
    rows = 0
    for d in store.list_partition_dates(f"{cfg.prefix}/curated/"):
        if after < d <= day:
            manifest = store.read_manifest(partition_prefix(cfg.prefix, "curated", d))
            rows += manifest["rows"] if manifest else 0
    return rows


def _unreadable_window(cfg: PipelineConfig, day: dt.date, exc: Exception) -> MonitoringError:
    return MonitoringError(
        f"the scored rows of {monitored_days(cfg, day)[0]}..{day} cannot be read: {exc}. "
        "No retraining is triggered."
    )


def record_retrain_sent(store: ObjectStore, cfg: PipelineConfig, day: dt.date, check_run_id: str) -> None:
    """Mark the retrain trigger of ``day`` by run ``check_run_id`` as sent (:func:`drift.mark_sent`),
    once its event is known to exist: a drift check of that run cleared and run again then reports
    "already_requested" instead of requesting a second retrain, and keeps the trigger whatever it
    decides."""
    drift.update_state(store, state_key(cfg), lambda state: drift.mark_sent(state, day, check_run_id))


def forget_abandoned_trigger(store: ObjectStore, cfg: PipelineConfig, check_run_id: str) -> None:
    """Drop the unsent retrain triggers of run ``check_run_id``, which ended without sending its
    event (:func:`drift.forget_unsent`): the next check near its day decides afresh."""
    drift.update_state(store, state_key(cfg), lambda state: drift.forget_unsent(state, check_run_id))


def trigger_stands(store: ObjectStore, cfg: PipelineConfig, day: dt.date, check_run_id: str) -> bool:
    """Whether run ``check_run_id``'s retrain trigger of ``day`` is still in the cooldown state (not
    taken over by a later check after the run had ended without sending its event)."""
    try:
        state = store.get_json(state_key(cfg))
    except FileNotFoundError:
        return False
    return drift.has_trigger(state, day, check_run_id)


def run_drift_monitor(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, *, tracking_uri: str, check_run_id: str | None
) -> dict[str, Any]:
    """Run the drift check of ``day`` against the current champion; store the cooldown state.

    ``check_run_id`` identifies the run checking (the DAG run id): a retry of the same run may request
    its day's retrain again, any other check of a day already requested reports "already_requested".
    Required so that no caller forgets it: None (no identity) never counts as a retry.
    """
    from mlops_tasks.registry import champion_info, download_onnx

    if not cfg.data.key:
        raise MonitoringError(
            f"pipeline '{cfg.name}': the drift monitor joins scored rows to their curated features on "
            "data.key, which is empty; declare the columns that identify a row in data.key. Nothing is "
            "triggered."
        )
    champion = champion_info(cfg, tracking_uri=tracking_uri)
    if champion is None or not champion.get("data_version"):
        raise MonitoringError(
            f"{cfg.registered_model_name}: no champion with a data version in the registry at "
            f"{without_credentials(tracking_uri)}; "
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
    training_end = max(dt.date.fromisoformat(d) for d in record["days"])
    if day <= training_end:  # e.g. an old day scored again: its predictions asset event names it
        raise DayTrainedOn(
            f"{day} is inside the training data of champion v{champion['version']} (data version "
            f"{champion['data_version'][:12]}, days up to {training_end}): the check would compare the "
            "champion's training data with part of itself, and a retrain it requested would train on a "
            f"window ending before the champion's. Nothing is checked; the checks of days after "
            f"{training_end} are the drift monitor's."
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = download_onnx(cfg, tracking_uri=tracking_uri, version=champion["version"], dest_dir=tmp)
        model = _load_model(str(path), cfg, champion)
    outputs = [features.SCORE_OUTPUT, *(_probability_columns(model) if model.task == "multiclass" else [])]
    window_columns = [*columns, *([cfg.target.column] if cfg.target.column not in columns else [])]
    for attempt in range(1, _WINDOW_READS + 1):
        try:
            parts, skipped, uncurated = _window_parts(
                store,
                cfg,
                day,
                window_columns,
                model_version=champion["version"],
                outputs=outputs,
                trained_until=training_end,
            )
            current, current_rows = drift.sample_parts(parts, cfg.drift.sample_rows, cfg.drift.seed)
            break
        except ObjectNotFoundError as exc:
            # A day re-scored or validated again while the window was read: its manifest's old parts
            # are deleted once the new ones are published (a day failing validation again loses its
            # curated rows). Read the window again from the manifests as they are now.
            areas = (f"{cfg.prefix}/predictions/", f"{cfg.prefix}/curated/")
            if attempt == _WINDOW_READS or not exc.key.startswith(areas):
                raise _unreadable_window(cfg, day, exc) from None
            log.info("drift check of %s: %s was replaced while read; reading the window again", day, exc.key)
        except (FileNotFoundError, ValueError) as exc:
            raise _unreadable_window(cfg, day, exc) from None
    if uncurated:
        log.warning(
            "drift check of %s: skipped scored days whose curated rows were withdrawn since: %s",
            day,
            ", ".join(f"{u['day']} ({u['rows']} rows)" for u in uncurated),
        )
    if skipped:
        log.warning(
            "drift check of %s: skipped predictions not made by champion v%s: %s",
            day,
            champion["version"],
            ", ".join(f"{s['day']} (v{s['model_version']}, {s['rows']} rows)" for s in skipped),
        )
    if len(current):
        # A day curated again after scoring: rows it no longer has are not compared, nor counted
        # toward drift.min_rows (the share the sample keeps stands for the share of every row).
        kept = current.pop(_CURATED) == "both"
        current_rows = round(current_rows * float(kept.mean()))
        current = current[kept].reset_index(drop=True)
    reference_scores = _score(model, cfg, reference) if len(reference) else None
    live = live_metric(cfg, current, champion, model)
    # The cooldown state is decided on and written back by one conditional PUT (If-Match on the ETag
    # read, ObjectStore.update_json): a check whose state another check changed meanwhile decides
    # again on the new state, so concurrent checks (a user's DAG without max_active_tis_per_dag=1,
    # two DAGs checking one pipeline) request one retrain. A store ignoring conditional writes lets
    # the last writer win, which is safe only for one check at a time (the drift DAG's setting).
    result = drift.run_check(
        store,
        cfg,
        day,
        reference=reference,
        current=current if len(current) else reference.iloc[:0],
        state_key=state_key(cfg),
        check_run_id=check_run_id,
        reference_scores=reference_scores if len(current) else None,
        current_scores=current[features.SCORE_OUTPUT].to_numpy() if len(current) else None,
        new_rows_since_training=_rows_since(store, cfg, training_end, day),
        live_metric_drop=live["drop"],
        reference_rows=reference_rows,
        current_rows=current_rows if len(current) else 0,
        reference_name=f"champion v{champion['version']} training data ({champion['data_version'][:12]})",
        current_name=f"scored rows {monitored_days(cfg, day)[0]}..{day}",
    )
    return {
        **result,
        "champion_version": champion["version"],
        "live_metric": live,
        "skipped_predictions": skipped,
        "uncurated_days": uncurated,
        "report_html_uri": result.get("html_uri"),
        "report_json_uri": result.get("report_uri"),
    }
