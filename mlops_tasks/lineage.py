"""One lineage record per registered model version: from landed files to the gate decision.

Stored at ``<prefix>/lineage/<model_name>/v<version>.json`` as sorted, indented JSON (same record ->
same bytes, so a retried task rewrites the identical object). Schema (version 1):

=======================  ==========  ============================================================
key                      type        meaning
=======================  ==========  ============================================================
``schema``               int         1 (added by :func:`write_record` when absent)
``model_name``           str         registered model name
``model_version``        str         registry version number
``landing_files``        list[str]   S3 URIs of the raw files the training window came from
``curated_partitions``   list[str]   S3 URIs of the curated partitions read for training
``validation_reports``   list[str]   S3 URIs of the validation reports of those partitions, each
                                     ``.../date=YYYY-MM-DD/<file>``
``data_version``         str         DVC data version (commit / md5) of the training window
``run_id``               str         MLflow run that trained the model
``onnx_artifact_uri``    str         the exported ``model/model.onnx`` of that run
``gate``                 dict        ``promote`` (bool), ``reason`` (str), optional
                                     ``report_json_uri`` / ``report_html_uri`` / ``primary_metric``
                                     / ``metrics`` / ``registry_reason`` (set when the registry did
                                     not apply this decision: the version had recorded another)
``promoted``             bool        whether registration made it the champion
=======================  ==========  ============================================================

Optional keys: ``experiment_id``, ``trigger`` (schedule / drift / manual), ``training_window``
({"start", "end"} ISO dates), ``dag_run_id``, ``onnx_sha256``, ``champion_version`` (the champion
the gate compared this version with). Any further JSON-serialisable key is kept as is.

:func:`read_record` checks a stored record as :func:`write_record` does, so a record of another shape
(edited by hand, written by something else) is a :class:`LineageError` naming its object, never a
half-read record that the UI or the CLI trips over later.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any

from mlops_tasks.config import PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.storage import ObjectNotFoundError, ObjectStore

SCHEMA_VERSION = 1
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model_name": str,
    "model_version": (str, int),
    "landing_files": list,
    "curated_partitions": list,
    "validation_reports": list,
    "data_version": str,
    "run_id": str,
    "onnx_artifact_uri": str,
    "gate": dict,
    "promoted": bool,
}
log = logging.getLogger(__name__)
_VERSION_KEY = re.compile(r"/v(\d+)\.json$")
_REPORT_URI = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/[^/]+$")


class LineageError(DataError):
    """A lineage record is incomplete or malformed; the message names the keys."""


def validate_record(record: Any, where: str | None = None) -> dict[str, Any]:
    """The record with ``schema`` set and ``model_version`` as a string; LineageError if incomplete.

    The message starts with ``where`` (the record's S3 URI, when read from the store) or the model
    name and version, and names every missing or wrong-typed key.
    """
    if not isinstance(record, dict):
        raise LineageError(
            f"{where or 'lineage record'}: a lineage record is a JSON object, got {type(record).__name__}"
        )
    where = where or f"lineage record of model {record.get('model_name')!r} v{record.get('model_version')}"
    missing = [k for k in REQUIRED if k not in record]
    wrong = [
        f"{k} ({type(record[k]).__name__}, expected {getattr(t, '__name__', t)})"
        for k, t in REQUIRED.items()
        if k in record and not isinstance(record[k], t)
    ]
    for k in ("landing_files", "curated_partitions", "validation_reports"):
        if isinstance(record.get(k), list) and not all(isinstance(u, str) for u in record[k]):
            wrong.append(f"{k} (a list of other things than strings, expected S3 URIs)")
    if isinstance(record.get("validation_reports"), list):
        undated = [
            u for u in record["validation_reports"] if isinstance(u, str) and not _REPORT_URI.search(u)
        ]
        if undated:
            wrong.append(f"validation_reports ({undated[0]!r} is not .../date=YYYY-MM-DD/<file>)")
    gate = record.get("gate")
    if isinstance(gate, dict):
        missing += [f"gate.{k}" for k in ("promote", "reason") if k not in gate]
        wrong += [
            f"gate.{k} ({type(gate[k]).__name__}, expected str)"
            for k in ("reason", "report_json_uri", "report_html_uri")
            if gate.get(k) is not None and not isinstance(gate[k], str)
        ]
    if record.get("training_window") is not None and not isinstance(record["training_window"], dict):
        wrong.append(f"training_window ({type(record['training_window']).__name__}, expected dict)")
    if missing or wrong:
        raise LineageError(f"{where}: missing keys {missing}, wrong types {wrong}")
    if not str(record["model_version"]).isdigit():
        raise LineageError(
            f"{where}: model_version must be a registry version number, got {record['model_version']!r}"
        )
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LineageError(f"{where}: not plain JSON: {exc}") from None
    return {"schema": SCHEMA_VERSION, **record, "model_version": str(record["model_version"])}


def record_key(cfg: PipelineConfig, model_name: str, version: str | int) -> str:
    return f"{cfg.prefix}/lineage/{model_name}/v{version}.json"


def write_record(store: ObjectStore, cfg: PipelineConfig, record: dict[str, Any]) -> str:
    """Validate and store the record (one PUT, deterministic bytes); returns its S3 URI."""
    record = validate_record(record)
    return store.put_json(record_key(cfg, record["model_name"], record["model_version"]), record)


def read_record(store: ObjectStore, cfg: PipelineConfig, version: str | int | None = None) -> dict[str, Any]:
    """The record of ``version`` of the pipeline's registered model, or of its latest version.

    FileNotFoundError when there is none; :class:`LineageError` naming the object's S3 URI when it is
    not a record of that version (see :func:`validate_record`); a stored object that is not JSON is
    :class:`~mlops_tasks.storage.CorruptObjectError`.
    """
    name = cfg.registered_model_name
    folder = f"{cfg.prefix}/lineage/{name}/"

    def recorded() -> list[tuple[int, str]]:  # listed only when needed: a named record is one GET
        return sorted(
            (int(m.group(1)), o.key) for o in store.list(folder) if (m := _VERSION_KEY.search(o.key))
        )

    if version is None:
        keys = recorded()
        if not keys:
            raise FileNotFoundError(f"no lineage record for model '{name}' under {store.uri(folder)}")
        number, key = keys[-1]
    else:
        number, key = version, record_key(cfg, name, version)
    where = f"lineage record {store.uri(key)}"
    try:
        record = validate_record(store.get_json(key), where=where)
    except ObjectNotFoundError:
        numbers = [n for n, _ in recorded()]
        have = ", ".join(f"v{n}" for n in numbers[-10:]) + (" and older" if len(numbers) > 10 else "")
        raise FileNotFoundError(
            f"model '{name}' has no lineage record of v{str(number).lstrip('v')} (records: {have or 'none yet'}, "
            f"under {store.uri(folder)}); a version gets one when its training run's lineage task runs"
        ) from None
    if record["model_version"].lstrip("0") != str(number).lstrip("0"):  # stored under another name
        raise LineageError(f"{where}: it is the record of v{record['model_version']}, not of v{number}")
    return record


def format_record(record: dict[str, Any]) -> str:
    """The chain from raw files to the registry decision, one step per line, for logs and the CLI."""

    def many(uris: list[str]) -> str:
        if not uris:
            return "(none)"
        shown = ", ".join(uris[:3])
        return shown + (f" ... (+{len(uris) - 3} more)" if len(uris) > 3 else "")

    gate = record["gate"]
    window = record.get("training_window") or {}
    lines = [
        f"Lineage of {record['model_name']} v{record['model_version']}"
        + (
            f" (data {window.get('start')} .. {window.get('end')}, its last days held out for the gate)"
            if window
            else ""
        ),
        f"  landing files       {len(record['landing_files']):>4}  {many(record['landing_files'])}",
        f"  curated partitions  {len(record['curated_partitions']):>4}  {many(record['curated_partitions'])}",
        f"  validation reports  {len(record['validation_reports']):>4}  {many(record['validation_reports'])}",
        f"  DVC data version          {record['data_version']}",
        f"  MLflow run                {record['run_id']}"
        + (f" (trigger: {record['trigger']})" if record.get("trigger") else ""),
        f"  ONNX artifact             {record['onnx_artifact_uri']}",
        f"  registry version          {record['model_name']} v{record['model_version']}"
        + (" -> champion" if record["promoted"] else " (not champion)"),
        f"  gate decision             {'promote' if gate['promote'] else 'reject'}: {gate['reason']}",
    ]
    if gate.get("registry_reason"):
        lines.append(f"  not applied               {gate['registry_reason']}")
    if gate.get("report_html_uri"):
        lines.append(f"  gate report               {gate['report_html_uri']}")
    return "\n".join(lines)


def assemble_record(
    store: ObjectStore,
    cfg: PipelineConfig,
    *,
    data_version: dict[str, Any],
    training: dict[str, Any],
    export: dict[str, Any],
    decision: dict[str, Any],
    registration: dict[str, Any],
    airflow_run_id: str | None = None,
) -> dict[str, Any]:
    """The record of one training run, from its tasks' results and the data version's record.

    Landing files are those the data version recorded when it was made (``data_version`` may carry
    them as ``landing_files``, S3 keys; otherwise they are read from the version's record), so a
    retried lineage task writes the same record after a day of the window was ingested again.
    Curated partitions are those of the days of the data version; validation reports are those the
    version recorded (the reports of the validations that published its curated parts).
    """
    from mlops_tasks.storage import partition_prefix
    from mlops_tasks.versioning import read_record as read_version_record

    days = [dt.date.fromisoformat(d) for d in data_version["days"]]
    try:
        version_record = read_version_record(store, cfg, data_version["data_version"])
    except DataError as exc:  # no record, or unreadable: the lineage of the model is still worth writing
        log.warning("%s; what it records is taken from the days as they are now", exc)
        version_record = {}
    keys = data_version.get("landing_files", version_record.get("landing_files"))
    reports = version_record.get("validation_reports")
    if not isinstance(reports, list) or len(reports) != len(days):  # a record of an older release
        reports = [partition_prefix(cfg.prefix, "reports/validation", d) + "validation.json" for d in days]
    if keys is None:
        # A data version made before versions recorded their landing files (or without a record):
        # fall back to the days' staging manifests as they are now (what ingest read last), as
        # lineage did before. Kept so that existing deployments' versions still get a record; a day
        # ingested again since the version was made lists the files of that later ingest.
        keys = []
        for day in days:
            staged = store.read_manifest(partition_prefix(cfg.prefix, "staging", day)) or {}
            keys += [f["key"] for f in staged.get("source_files", [])]
    return {
        "model_name": registration["model_name"],
        "model_version": str(registration["version"]),
        "landing_files": sorted(store.uri(k) for k in keys),
        "curated_partitions": [store.uri(partition_prefix(cfg.prefix, "curated", d)) for d in days],
        "validation_reports": [store.uri(key) for key in reports],
        "data_version": data_version["data_version"],
        "run_id": training["run_id"],
        "experiment_id": training.get("experiment_id"),
        "onnx_artifact_uri": export["onnx_artifact_uri"],
        "gate": {
            **{
                key: decision.get(key)
                for key in ("promote", "reason", "primary_metric", "report_json_uri", "report_html_uri")
            },
            # A run gated again with the other outcome: the version keeps its first record.
            **(
                {}
                if registration.get("decision_applied", True)
                else {"registry_reason": registration["reason"]}
            ),
        },
        "promoted": bool(registration["promoted"]),
        # The champion the gate compared this model with, not whatever the registry holds afterwards.
        "champion_version": decision.get("champion_version"),
        "trigger": data_version.get("trigger"),
        "training_window": {"start": data_version["days"][0], "end": data_version["days"][-1]},
        "dag_run_id": airflow_run_id,
    }
