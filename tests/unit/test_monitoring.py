"""monitoring/ is consistent with what the package emits: every mlops metric gets a Prometheus name
through the statsd-exporter mapping, and every dashboard query uses only names the mapping produces.
Also the drift monitor's live metric (:func:`mlops_tasks.monitoring.live_metric`) on hand-made rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_tasks.config import PipelineConfig, TargetSpec, load_config
from mlops_tasks.evaluation import compute_metrics
from mlops_tasks.features import SCORE_OUTPUT
from mlops_tasks.inference import _Model
from mlops_tasks.monitoring import live_metric
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


# -- the drift monitor's live metric (mlops_tasks.monitoring.live_metric) ----------------------------

WINE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "examples" / "wine_cultivar.yaml"


def champion_model(task: str, classes: list) -> _Model:
    """What the monitor knows of the champion's ONNX model: task and classes (no scoring here)."""
    return _Model(session=None, task=task, classes=classes, legacy=False, label="champion.onnx")


def champion(metric: str, value: float) -> dict:
    return {"version": "3", "metrics": {metric: value}}


def binary_cfg(example_config: PipelineConfig, metric: str = "roc_auc") -> PipelineConfig:
    return example_config.model_copy(
        update={
            "target": TargetSpec(task="binary", column="label"),
            "gate": example_config.gate.model_copy(update={"primary_metric": metric}),
            "drift": example_config.drift.model_copy(update={"min_rows": 20}),
        }
    )


def binary_rows(labels: list, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"label": labels, SCORE_OUTPUT: rng.random(len(labels)).astype(np.float32)})


def test_live_metric_of_a_multiclass_champion_uses_its_class_probabilities() -> None:
    cfg = load_config(WINE_CONFIG)
    cfg = cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"min_rows": 20})})
    classes = ["class_0", "class_1", "class_2"]
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([1, 1, 1], 42).astype(np.float32)
    labels = rng.choice(classes, 42)
    current = pd.DataFrame(
        {
            cfg.target.column: pd.Categorical(labels),
            SCORE_OUTPUT: proba.max(axis=1),
            **{f"probability_{c}": proba[:, i] for i, c in enumerate(classes)},
        }
    )

    got = live_metric(
        cfg, current, champion(cfg.gate.primary_metric, 0.9), champion_model("multiclass", classes)
    )

    metric = cfg.gate.primary_metric
    expected = compute_metrics(
        "multiclass", pd.Categorical(labels, categories=classes).codes, proba.max(axis=1), proba
    )[metric]
    assert "skipped" not in got and got["labelled_rows"] == 42
    assert got["live"] == pytest.approx(expected) and got["drop"] == pytest.approx(0.9 - expected)


def test_live_metric_of_string_labels_uses_the_champion_s_positive_class(
    example_config: PipelineConfig,
) -> None:
    cfg = binary_cfg(example_config)
    current = binary_rows(["no", "yes"] * 30)

    got = live_metric(cfg, current, champion("roc_auc", 0.8), champion_model("binary", ["no", "yes"]))

    y = (current["label"] == "yes").to_numpy(dtype=float)
    assert got["live"] == pytest.approx(compute_metrics("binary", y, current[SCORE_OUTPUT])["roc_auc"])


def test_live_metric_of_0_1_labels_with_missing_ones_counts_only_labelled_rows(
    example_config: PipelineConfig,
) -> None:
    cfg = binary_cfg(example_config)
    labels = [0, 1] * 30
    whole = binary_rows(labels)
    pending = pd.concat([whole, binary_rows([None] * 10, seed=2)], ignore_index=True)
    pending["label"] = pending["label"].astype("float64")  # as parquet hands back an int column with nulls
    model = champion_model("binary", [0.0, 1.0])

    got = live_metric(cfg, pending, champion("roc_auc", 0.8), model)

    assert got["labelled_rows"] == 60
    assert got["live"] == pytest.approx(live_metric(cfg, whole, champion("roc_auc", 0.8), model)["live"])
    assert got["live"] == pytest.approx(
        compute_metrics("binary", np.array(labels), whole[SCORE_OUTPUT])["roc_auc"]
    )


def test_live_drop_of_a_loss_is_positive_when_the_loss_grew(example_config: PipelineConfig) -> None:
    cfg = binary_cfg(example_config, "log_loss")
    current = binary_rows([0, 1] * 30)

    got = live_metric(cfg, current, champion("log_loss", 0.1), champion_model("binary", ["0", "1"]))

    assert got["live"] > 0.1 and got["drop"] == pytest.approx(got["live"] - 0.1)


def test_live_metric_leaves_out_rows_the_champion_scored_nan_or_inf(example_config: PipelineConfig) -> None:
    # e.g. a regression's overflow: those rows have no error to measure, the others still do
    cfg = binary_cfg(example_config)
    whole = binary_rows([0, 1] * 30)
    broken = pd.concat([whole, binary_rows([0, 1])], ignore_index=True)
    broken.loc[60:, SCORE_OUTPUT] = [np.nan, np.inf]
    model = champion_model("binary", [0, 1])

    got = live_metric(cfg, broken, champion("roc_auc", 0.8), model)

    assert "skipped" not in got and got["labelled_rows"] == 60
    assert got["live"] == pytest.approx(live_metric(cfg, whole, champion("roc_auc", 0.8), model)["live"])


@pytest.mark.parametrize(
    ("labels", "promoted", "reason"),
    [
        (["no", "maybe"] * 30, 0.8, "labels ['maybe'] of column 'label' are not among champion v3's classes"),
        ([0, 1] * 5 + [None] * 50, 0.8, "10 scored rows have a label, fewer than drift.min_rows=20"),
        ([1] * 60, 0.8, "roc_auc is undefined on the 60 labelled rows"),
        ([0, 1] * 30, None, "champion v3 has no gate roc_auc to compare with"),
    ],
    ids=["unknown_label", "too_few_labels", "one_class", "no_promoted_metric"],
)
def test_live_metric_that_cannot_be_computed_is_skipped_with_the_reason(
    example_config: PipelineConfig, labels: list, promoted: float | None, reason: str
) -> None:
    cfg = binary_cfg(example_config)
    classes = ["no", "yes"] if isinstance(labels[0], str) else [0, 1]

    got = live_metric(
        cfg, binary_rows(labels), champion("roc_auc", promoted), champion_model("binary", classes)
    )

    assert got["drop"] is None and got["live"] is None and reason in got["skipped"]
