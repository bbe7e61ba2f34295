"""What a pipeline looks like right now, read from the registry and the bucket.

One view-model for both faces: ``mlops-tasks status`` prints it and the "ML models" page in the
Airflow UI renders it, so they cannot disagree. Everything here is read-only.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from mlops_tasks.storage import partition_prefix

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig
    from mlops_tasks.storage import ObjectStore


def without_credentials(url: str) -> str:
    """A URL without ``user:password@``: status output and error messages are shown to people,
    logs and alert webhooks, and Airflow masks only a connection's password field."""
    parts = urlsplit(url)
    if not parts.username:
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def redacted(text: str, url: str) -> str:
    """``text`` (e.g. a client library's error, which may quote the URL it called) with the
    credentials of ``url`` removed."""
    parts = urlsplit(url)
    text = text.replace(url, without_credentials(url))
    for secret in (parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***")
    return text


def last_gate(store: ObjectStore, cfg: PipelineConfig) -> dict[str, Any] | None:
    """The newest gate report: latest window date with one, then (several runs gating one window)
    latest write."""
    for day in reversed(store.list_partition_dates(f"{cfg.prefix}/reports/gate/")):
        found = [
            o
            for o in store.list(partition_prefix(cfg.prefix, "reports/gate", day))
            if o.key.endswith("gate.json")
        ]
        if found:
            break
    else:
        return None
    reports = [
        o.key
        for o in sorted(
            found, key=lambda o: (o.last_modified or dt.datetime.min.replace(tzinfo=dt.UTC), o.key)
        )
    ]
    report = store.get_json(reports[-1])
    decision = report.get("decision", report)
    return {
        "day": day.isoformat(),
        "promote": decision.get("promote"),
        "reason": decision.get("reason"),
        "run_id": decision.get("run_id") or reports[-1].rsplit("/", 2)[-2],
        "report_json_uri": store.uri(reports[-1]),
        "report_html_uri": store.uri(reports[-1].removesuffix(".json") + ".html"),
    }


def last_inference(store: ObjectStore, cfg: PipelineConfig) -> dict[str, Any] | None:
    for day in reversed(store.list_partition_dates(f"{cfg.prefix}/predictions/")):
        manifest = store.read_manifest(partition_prefix(cfg.prefix, "predictions", day))
        if manifest:
            return {
                "day": day.isoformat(),
                "rows": manifest["rows"],
                "model_version": manifest.get("model_version"),
            }
    return None


def last_drift(store: ObjectStore, cfg: PipelineConfig) -> dict[str, Any] | None:
    """The newest drift check: the latest day with its ``drift.json`` (the HTML report goes up
    first, so a check stopped between the two PUTs left a day without one)."""
    for day in reversed(store.list_partition_dates(f"{cfg.prefix}/reports/drift/")):
        prefix = partition_prefix(cfg.prefix, "reports/drift", day)
        try:
            report = store.get_json(prefix + "drift.json")
        except FileNotFoundError:
            continue
        break
    else:
        return None
    decision = report.get("decision", {})
    return {
        "day": day.isoformat(),
        "status": decision.get("status"),
        "retrain": decision.get("retrain"),
        "share_drifted": decision.get("share_drifted"),
        "reasons": decision.get("reasons", []),
        "report_json_uri": store.uri(prefix + "drift.json"),
        "report_html_uri": store.uri(prefix + "drift.html") if store.exists(prefix + "drift.html") else None,
    }


def last_training(cfg: PipelineConfig, tracking_uri: str, ui_url: str | None = None) -> dict[str, Any] | None:
    from mlops_tasks import tracking

    client = tracking.client(tracking_uri)
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
    return {
        "pipeline": cfg.name,
        "model": cfg.registered_model_name,
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
        "last_gate": last_gate(store, cfg),
        "last_training": last_training(cfg, tracking_uri, ui_url),
        "last_drift": last_drift(store, cfg),
        "last_inference": last_inference(store, cfg),
    }


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
                f"{infer['day']}: {infer['rows']} rows by v{infer['model_version']}" if infer else "-",
            ]
        )
        if gate:
            notes.append(f"{row['pipeline']}: last gate: {gate['reason']}")
        if drift and drift["reasons"]:
            notes.append(f"{row['pipeline']}: drift: {'; '.join(drift['reasons'])}")
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join([*lines, "", *notes]).rstrip()
