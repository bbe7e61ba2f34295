"""What a pipeline looks like right now, read from the registry and the bucket.

One view-model for both faces: ``mlops-tasks status`` prints it and the "ML models" page in the
Airflow UI renders it, so they cannot disagree. Everything here is read-only.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from mlops_tasks.storage import CorruptObjectError, parse_partition_date, partition_prefix

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.storage import ObjectStore


# The userinfo of any URL in a text: up to the last "@" before the host's end, as URL parsers read
# it (a password may hold "@"; "/", "?" and "#" in one must be percent-encoded).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s]*@")
# Control characters but newline and tab: a value from the bucket or the registry printed raw could
# move the cursor, clear the screen or forge lines of a terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def without_credentials(url: str) -> str:
    """A URL without ``user:password@``: status output and error messages are shown to people,
    logs and alert webhooks, and Airflow masks only a connection's password field."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redacted(text: str, url: str | None = None) -> str:
    """``text`` (e.g. a client library's error, which may quote the URL it called) without the
    userinfo of any URL in it, and without ``url``'s password wherever it appears (as written in
    the URL or percent-decoded, as a client may quote it)."""
    text = _USERINFO.sub(r"\1", text)
    password = urlsplit(url).password if url else None
    for secret in {password, unquote(password)} if password else ():
        text = text.replace(secret, "***")
    return text


def printable(text: str) -> str:
    """``text`` with control characters but newline and tab shown as ``\\xNN`` escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None: strict JSON (the UI's API, ``status --json``) has
    no NaN or Infinity, and a report in the bucket may hold them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _number(value: Any) -> float | int | None:
    """A finite number from a report, else None (the report is shown, not trusted)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _report(store: ObjectStore, key: str, what: str) -> dict[str, Any]:
    """A JSON report written by a task, as a dict whose ``decision`` (if any) is a dict too; any
    other shape is a :class:`CorruptObjectError` naming the object."""
    report = store.get_json(key)
    decision = report.get("decision", report) if isinstance(report, dict) else None
    if not isinstance(decision, dict):
        raise CorruptObjectError(
            f"{store.uri(key)} is not a {what} report (a JSON object with a 'decision' object); "
            "re-run the task that writes it"
        )
    return report


def last_gate(store: ObjectStore, cfg: PipelineConfig) -> dict[str, Any] | None:
    """The newest gate decision: the latest written ``gate.json`` of any window. A retrain asked
    for an earlier window (``window_end`` in the event) gates after December's training: by window
    date, its decision would never show."""
    found = [o for o in store.list(f"{cfg.prefix}/reports/gate/") if o.key.endswith("/gate.json")]
    if not found:
        return None
    newest = max(found, key=lambda o: (o.last_modified or dt.datetime.min.replace(tzinfo=dt.UTC), o.key))
    report = _report(store, newest.key, "gate")
    decision = report.get("decision", report)
    day = parse_partition_date(newest.key)
    return {
        "day": day.isoformat() if day else None,
        "promote": decision.get("promote") is True,
        "reason": str(decision.get("reason", "")),
        "run_id": str(decision.get("run_id") or _gated_run(newest.key)),
        "report_json_uri": store.uri(newest.key),
        "report_html_uri": store.uri(newest.key.removesuffix(".json") + ".html"),
    }


def _gated_run(key: str) -> str:
    """The run of a gate report ``.../date=D/<run id>/[vs-<champion>/]gate.json`` (releases before
    this one wrote no ``vs-`` folder)."""
    folders = key.split("/")[:-1]
    return folders[-2] if folders[-1].startswith("vs-") else folders[-1]


def last_inference(store: ObjectStore, cfg: PipelineConfig) -> dict[str, Any] | None:
    for day in reversed(store.list_partition_dates(f"{cfg.prefix}/predictions/")):
        manifest = store.read_manifest(partition_prefix(cfg.prefix, "predictions", day))
        if isinstance(manifest, dict):
            return {
                "day": day.isoformat(),
                "rows": _number(manifest.get("rows")),
                "model_version": manifest.get("model_version"),
            }
        if manifest is not None:
            raise CorruptObjectError(
                f"the manifest of {store.uri(partition_prefix(cfg.prefix, 'predictions', day))} is not a JSON object"
            )
    return None


def last_drift(store: ObjectStore, cfg: PipelineConfig) -> dict[str, Any] | None:
    """The newest drift check: the latest day with its ``drift.json`` (the HTML report goes up
    first, so a check stopped between the two PUTs left a day without one)."""
    for day in reversed(store.list_partition_dates(f"{cfg.prefix}/reports/drift/")):
        prefix = partition_prefix(cfg.prefix, "reports/drift", day)
        try:
            report = _report(store, prefix + "drift.json", "drift")
        except FileNotFoundError:
            continue
        break
    else:
        return None
    decision = report.get("decision", report)
    reasons = decision.get("reasons") or []
    return {
        "day": day.isoformat(),
        "status": None if decision.get("status") is None else str(decision["status"]),
        "retrain": decision.get("retrain") is True,
        "share_drifted": _number(decision.get("share_drifted")),
        "reasons": [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)],
        "report_json_uri": store.uri(prefix + "drift.json"),
        "report_html_uri": _drift_page(store, prefix, report, decision.get("retrain") is True),
    }


def _drift_page(store: ObjectStore, prefix: str, report: dict, retrained: bool) -> str | None:
    """The page of the check that wrote ``report``: drift.html while it still holds that check's
    bytes (a later check of the day replaces it, and may die before its drift.json), else the copy a
    retrain keeps; None when neither is that page. A report written before pages were checksummed
    links drift.html as it is."""
    sha256 = report.get("report_html_sha256")
    latest = store.metadata(prefix + "drift.html")
    if not isinstance(sha256, str):
        return store.uri(prefix + "drift.html") if latest is not None else None
    if latest is not None and latest.get("sha256") == sha256:
        return store.uri(prefix + "drift.html")
    if not retrained:
        return None
    from mlops_tasks.drift import retrain_page_name  # scipy and pandas: only on this rare path

    kept = prefix + retrain_page_name(sha256)
    return store.uri(kept) if store.exists(kept) else None


def last_training(cfg: PipelineConfig, tracking_uri: str, ui_url: str | None = None) -> dict[str, Any] | None:
    from mlops_tasks import tracking

    client = tracking.client(tracking_uri)
    with tracking.reachable(tracking_uri, f"read the last training run of '{cfg.name}'"):
        experiment = client.get_experiment_by_name(cfg.experiment_name)
        if experiment is None:
            return None
        runs = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
        )
    if not runs:
        return None
    run = runs[0]
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "trigger": run.data.tags.get("trigger"),
        "data_version": run.data.tags.get("data_version"),
        "started_ms": run.info.start_time,
        "url": f"{ui_url or without_credentials(tracking_uri)}/#/experiments/{experiment.experiment_id}"
        f"/runs/{run.info.run_id}",
    }


def pipeline_status(
    store: ObjectStore, cfg: PipelineConfig, *, tracking_uri: str, ui_url: str | None = None
) -> dict[str, Any]:
    """The summary row of one pipeline (see module docstring)."""
    from mlops_tasks.registry import champion_info

    champion = champion_info(cfg, tracking_uri=tracking_uri)
    metric = cfg.gate.primary_metric
    gate = last_gate(store, cfg)
    return {
        "pipeline": cfg.name,
        "model": cfg.registered_model_name,
        "no_champion": None if champion else _no_champion(cfg, tracking_uri, gate),
        "champion": None
        if champion is None
        else {
            "version": champion["version"],
            "metric": metric,
            "value": (champion.get("metrics") or {}).get(metric),
            "promoted_at": champion.get("promoted_at") or champion.get("created_at"),
            "data_version": champion.get("data_version"),
            "run_id": champion.get("run_id"),
        },
        "last_gate": gate,
        "last_training": last_training(cfg, tracking_uri, ui_url),
        "last_drift": last_drift(store, cfg),
        "last_inference": last_inference(store, cfg),
    }


def _no_champion(cfg: PipelineConfig, tracking_uri: str, gate: dict[str, Any] | None) -> str:
    """Why no version serves: not yet, or a champion removed by hand (the registered model deleted in
    MLflow, or the alias taken off), which stops batch inference until a version serves again."""
    from mlops_tasks.registry import CHAMPION, champion_history

    registered, promoted = champion_history(cfg, tracking_uri=tracking_uri)
    consequence = "batch inference fails until a version serves"
    if not registered and gate and gate["promote"]:
        return (
            f"'{cfg.registered_model_name}' is not in the registry, though the gate of {gate['day']} "
            f"promoted a version (deleted in MLflow?): {consequence} (train again)"
        )
    if promoted:
        return (
            f"no version holds the alias '{CHAMPION}', though v{promoted} was promoted (alias removed?): "
            f"{consequence} (set the alias on a version, or train again)"
        )
    return "no champion yet"


def format_status(rows: list[dict[str, Any]]) -> str:
    """A terminal table: one line per pipeline, then the reasons."""
    header = ["pipeline", "champion", "metric", "last gate", "last training", "drift", "last inference"]
    table = [header]
    notes = []
    for row in rows:
        champ, gate, train = row["champion"], row["last_gate"], row["last_training"]
        drift, infer = row["last_drift"], row["last_inference"]
        value = champ and champ["value"]
        table.append(
            [
                row["pipeline"],
                f"v{champ['version']}" if champ else "none",
                f"{champ['metric']}={value:.4f}" if champ and value is not None else "-",
                ("promoted" if gate["promote"] else "rejected") + f" ({gate['day']})" if gate else "-",
                f"{train['status'].lower()} via {train['trigger'] or '?'}" if train else "-",
                f"{drift['status']} ({drift['day']}, {drift['share_drifted']:.0%} drifted)"
                if drift and drift["share_drifted"] is not None
                else (drift["status"] if drift else "-"),
                f"{infer['day']}: {infer['rows'] if infer['rows'] is not None else '?'} rows by "
                f"v{infer['model_version']}"
                if infer
                else "-",
            ]
        )
        if not champ and row.get("no_champion"):
            notes.append(f"{row['pipeline']}: champion: {row['no_champion']}")
        if gate:
            notes.append(f"{row['pipeline']}: last gate: {gate['reason']}")
        if drift and drift["reasons"]:
            notes.append(f"{row['pipeline']}: drift: {'; '.join(drift['reasons'])}")
    table = [[printable(str(c)) for c in r] for r in table]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join([*lines, "", *map(printable, notes)]).rstrip()
