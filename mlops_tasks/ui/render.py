"""HTML of the "ML models" page: self-contained (inline CSS and SVG, no scripts, no external assets),
every value escaped. Input is the redacted view-model of :mod:`mlops_tasks.ui.views`.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import Any

from mlops_tasks.lineage import format_record
from mlops_tasks.ui.views import report_link

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2933;background:#f7f9fb}
header{background:#017cee;color:#fff;padding:12px 24px}header h1{margin:0;font-size:18px}
main{padding:16px 24px}h2{font-size:16px;margin:24px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{text-align:left;vertical-align:top;padding:8px 10px;border-bottom:1px solid #e4e7eb}
th{background:#eef2f6;font-weight:600;font-size:13px}td small{color:#616e7c;display:block}
a{color:#0b63c4}.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.ok{background:#d7f5dd;color:#17632a}.bad{background:#fde2e1;color:#a61b1b}.warn{background:#fff1c2;color:#7a5a00}
.none{background:#e4e7eb;color:#3e4c59}.error{color:#a61b1b}
pre{background:#fff;padding:10px;overflow-x:auto;box-shadow:0 1px 2px rgba(0,0,0,.08)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;padding:10px}dt{font-weight:600}
svg{background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
"""
_PILL = {
    "promoted": "ok",
    "no_drift": "ok",
    "rejected": "bad",
    "drift": "bad",
    "cooldown": "warn",
    "already_requested": "warn",
    "insufficient_data": "none",
    "data_quality": "bad",
}


def _e(value: Any) -> str:
    return escape("-" if value is None else str(value))


def _metric(value: float | None) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _pill(label: str) -> str:
    return f'<span class="pill {_PILL.get(label, "none")}">{_e(label)}</span>'


def _a(href: str | None, text: str, *, top: bool = False) -> str:
    """A link; Airflow pages open in the top window (the view may be framed by the Airflow UI), others in a
    new tab."""
    if not href:
        return ""
    target = "_top" if top else "_blank"
    return f'<a href="{_e(href)}" target="{target}" rel="noopener noreferrer">{_e(text)}</a>'


def _when(value: str | int | None) -> str:
    """An ISO timestamp or epoch milliseconds as ``YYYY-MM-DD HH:MM UTC``."""
    if value is None:
        return "-"
    try:
        moment = (
            dt.datetime.fromtimestamp(value / 1000, dt.UTC)
            if isinstance(value, int)
            else dt.datetime.fromisoformat(value)
        )
    except (ValueError, OSError):
        return _e(value)
    return _e(moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def page(title: str, body: str, root: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1><a href="{_e(root)}/" style="color:#fff;text-decoration:none">ML models</a>'
        f"{' &middot; ' + _e(title) if title != 'ML models' else ''}</h1></header>"
        f"<main>{body}</main></body></html>"
    )


def _champion_cell(champ: dict[str, Any] | None, no_champion: str | None) -> str:
    if not champ:
        return _pill("none") + f"<small>{_e(no_champion or 'no champion yet')}</small>"
    return (
        f'<strong class="champion-version">v{_e(champ["version"])}</strong> '
        f"{_e(champ['metric'])} {_metric(champ['value'])}"
        f"<small>promoted {_when(champ['promoted_at'])}</small>"
    )


def _gate_cell(gate: dict[str, Any] | None, root: str) -> str:
    if not gate:
        return "-"
    link = _a(report_link(root, gate["report_html_uri"]), "gate report")
    return (
        f"{_pill('promoted' if gate['promote'] else 'rejected')} {_e(gate['day'])}"
        f"<small>{_e(gate['reason'])}</small><small>{link}</small>"
    )


def _training_cell(train: dict[str, Any] | None) -> str:
    if not train:
        return "-"
    return (
        f"{_e(str(train['status']).lower())} via <strong>{_e(train['trigger'] or 'unknown')}</strong>"
        f"<small>{_when(train['started_ms'])}</small><small>{_a(train['url'], 'MLflow run')}</small>"
    )


def _drift_cell(drift: dict[str, Any] | None, root: str) -> str:
    if not drift:
        return "-"
    share = drift["share_drifted"]
    shown = f"{share:.0%} of columns drifted" if isinstance(share, int | float) else ""
    report = _a(report_link(root, drift["report_html_uri"]), "Evidently report")
    return (
        f'<span class="drift-status">{_pill(str(drift["status"]))}</span> {_e(drift["day"])}'
        f"<small>{_e(shown)}</small><small>{report}</small>"
    )


def _inference_cell(infer: dict[str, Any] | None) -> str:
    if not infer:
        return "-"
    return f"{_e(infer['day'])}<small>{_e(infer['rows'])} rows by v{_e(infer['model_version'])}</small>"


def overview(rows: list[dict[str, Any]], root: str) -> str:
    """The front page: one table row per pipeline."""
    return page("ML models", _table(rows, root), root)


def _table(rows: list[dict[str, Any]], root: str) -> str:
    """A pipeline whose store or registry failed shows its error instead of its row."""
    head = (
        "<tr><th>Pipeline</th><th>Champion</th><th>Last gate</th><th>Last training</th>"
        "<th>Last drift check</th><th>Last batch inference</th><th>Data version</th></tr>"
    )
    body = []
    for row in rows:
        name = f'<a href="{_e(root)}/pipelines/{_e(row["pipeline"])}">{_e(row["pipeline"])}</a>'
        if "error" in row:
            body.append(f'<tr><td>{name}</td><td colspan="6" class="error">{_e(row["error"])}</td></tr>')
            continue
        champ = row["champion"]
        data_version = (champ or {}).get("data_version") or (row["last_training"] or {}).get("data_version")
        body.append(
            f'<tr id="pipeline-{_e(row["pipeline"])}"><td>{name}<small>model {_e(row["model"])}</small></td>'
            f"<td>{_champion_cell(champ, row.get('no_champion'))}</td><td>{_gate_cell(row['last_gate'], root)}</td>"
            f"<td>{_training_cell(row['last_training'])}</td><td>{_drift_cell(row['last_drift'], root)}</td>"
            f"<td>{_inference_cell(row['last_inference'])}</td><td><code>{_e(data_version)}</code></td></tr>"
        )
    if not rows:
        body.append('<tr><td colspan="7">No pipeline configs found.</td></tr>')
    return f"<table>{head}{''.join(body)}</table>"


def metric_chart(history: list[dict[str, Any]], metric: str, width: int = 640, height: int = 220) -> str:
    """Inline SVG: the primary metric at each registered version's gate; promoted versions green,
    rejected red, the champion ringed."""
    points = [h for h in history if isinstance(h["value"], int | float) and math.isfinite(h["value"])]
    if not points:
        return "<p>No gate metrics recorded yet.</p>"
    pad_l, pad_r, pad_t, pad_b = 56, 24, 24, 28
    low, high = min(p["value"] for p in points), max(p["value"] for p in points)
    span = (high - low) or abs(high) or 1.0
    low, high = low - span * 0.1, high + span * 0.1
    step = (width - pad_l - pad_r) / max(len(points) - 1, 1)

    def xy(i: int, value: float) -> tuple[float, float]:
        x = pad_l + (i * step if len(points) > 1 else (width - pad_l - pad_r) / 2)
        return x, pad_t + (high - value) / (high - low) * (height - pad_t - pad_b)

    coords = [xy(i, p["value"]) for i, p in enumerate(points)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(metric)} per registered version">',
        f'<text x="4" y="{pad_t + 4}" font-size="11">{high:.4f}</text>',
        f'<text x="4" y="{height - pad_b}" font-size="11">{low:.4f}</text>',
        f'<text x="{width - pad_r}" y="{pad_t - 8}" font-size="11" text-anchor="end">'
        f"{_e(metric)} at each version's gate</text>",
        '<polyline fill="none" stroke="#9aa5b1" stroke-width="1.5" points="'
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        + '"/>',
    ]
    for (x, y), p in zip(coords, points, strict=True):
        color = "#1f9d3a" if p["decision"] == "promote" else "#d64545"
        tip = f"v{p['version']}: {metric} {p['value']:.4f} ({p['decision'] or 'no decision'})"
        if "champion" in p["aliases"]:
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" stroke="#017cee" stroke-width="2"/>'
            )
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{color}"><title>{_e(tip)}</title></circle>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{height - pad_b + 14}" font-size="11" text-anchor="middle">'
            f"v{_e(p['version'])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _history_table(history: list[dict[str, Any]], metric: str) -> str:
    rows = "".join(
        f"<tr><td>v{_e(h['version'])}</td><td>{_e(', '.join(h['aliases']) or '')}</td>"
        f"<td>{_e(h['decision'])}</td><td>{_metric(h['value'])}</td><td>{_when(h['created_at'])}</td>"
        f"<td>{_e(h['reason'])}</td></tr>"
        for h in reversed(history)
    )
    return (
        f"<table><tr><th>Version</th><th>Aliases</th><th>Gate</th><th>{_e(metric)}</th><th>Registered</th>"
        f"<th>Reason</th></tr>{rows}</table>"
    )


def _lineage(record: dict[str, Any] | None, root: str) -> str:
    if not record:
        return "<p>No lineage record yet.</p>"
    if "error" in record:
        return f"<p>The lineage record cannot be shown: {_e(record['error'])}</p>"
    reports = [(uri.rsplit("/", 2)[-2], uri) for uri in record.get("validation_reports", [])]
    gate_uri = (record.get("gate") or {}).get("report_html_uri")
    links = [_a(report_link(root, uri), f"validation {label}") for label, uri in reports[:31]]
    if gate_uri:
        links.insert(0, _a(report_link(root, gate_uri), "gate report"))
    return f"<pre>{_e(format_record(record))}</pre><p>{' &middot; '.join(links)}</p>"


def detail(view: dict[str, Any], cfg_name: str, metric: str, root: str) -> str:
    """The drill-down page of one pipeline."""
    status, links = view["status"], view["links"]
    gate = status["last_gate"]
    dag_links = " &middot; ".join(
        _a(href, kind.replace("_", " "), top=True) for kind, href in links["dags"].items()
    )
    mlflow_links = " &middot; ".join(
        link
        for link in (
            _a(links["mlflow_model"], "registered model"),
            _a(links["mlflow_champion_version"], "champion version"),
            _a(links["mlflow_champion_run"], "champion run"),
        )
        if link
    )
    body = (
        _table([status], root)
        + "<h2>Links</h2><dl>"
        + f"<dt>Airflow DAG runs</dt><dd>{dag_links}</dd><dt>MLflow</dt><dd>{mlflow_links}</dd>"
        + (
            f"<dt>Last gate report</dt><dd>{_a(report_link(root, gate['report_html_uri']), 'HTML')} "
            f"{_a(report_link(root, gate['report_json_uri']), 'JSON')}</dd>"
            if gate
            else ""
        )
        + "</dl>"
        + f"<h2>{_e(metric)} per registered version</h2>"
        + metric_chart(view["history"], metric)
        + _history_table(view["history"], metric)
        + "<h2>Lineage</h2>"
        + _lineage(view["lineage"], root)
    )
    return page(cfg_name, body, root)
