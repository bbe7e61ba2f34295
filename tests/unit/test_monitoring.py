"""monitoring/ is consistent with what the package emits: every mlops metric gets a Prometheus name
through the statsd-exporter mapping, and every dashboard query uses only names the mapping produces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from mlops_tasks.observability import metrics_for

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
SAMPLE_RESULTS = {
    "ingest": {"rows": 10, "files": 2, "rejected_files": [], "malformed_lines": 0},
    "validate": {"good_rows": 9, "bad_rows": 1, "bad_fraction": 0.1},
    "gate": {"promote": True, "primary_metric": "roc_auc", "challenger": {"metrics": {"roc_auc": 0.7}}},
    "score": {"rows": 10, "seconds": {"score": 0.5}},
    "publish": {"rows": 10, "parts": 1},
    "drift": {"share_drifted": 0.2, "retrain": False},
}


def prometheus_name(statsd_name: str) -> str | None:
    """What statsd-exporter names the metric (first matching glob; "*" = one dot-free segment)."""
    for mapping in yaml.safe_load((MONITORING / "statsd_mapping.yml").read_text())["mappings"]:
        pattern = "^" + re.escape(mapping["match"]).replace(r"\*", "([^.]+)") + "$"
        if match := re.match(pattern, statsd_name):
            return re.sub(r"\$\{?(\d)\}?", lambda m: match.group(int(m.group(1))), mapping["name"])
    return None


@pytest.mark.parametrize("step", sorted(SAMPLE_RESULTS))
def test_every_emitted_metric_gets_a_prometheus_name(step: str) -> None:
    names = {
        metric: prometheus_name(f"airflow.mlops.flights_delay.{step}.{metric}")
        for metric in metrics_for(step, SAMPLE_RESULTS[step])
    }
    assert names == {metric: f"mlops_{step}_{metric}" for metric in names}


def test_dashboard_queries_only_series_the_mapping_produces() -> None:
    produced = {f"mlops_{step}_{m}" for step, r in SAMPLE_RESULTS.items() for m in metrics_for(step, r)}
    produced |= {"airflow_ti_finish", "airflow_task_duration"}
    dashboard = json.loads((MONITORING / "grafana/dashboards/mlops.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries.append(dashboard["templating"]["list"][0]["query"])
    used = {name for q in queries for name in re.findall(r"\b(mlops_[a-z_]+|airflow_[a-z_]+)\b", q)}
    assert used - produced == set()
    assert len(dashboard["panels"]) >= 10
