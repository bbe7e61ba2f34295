"""Metrics, gate rules and the gate report on hand-made numbers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_tasks import evaluation
from mlops_tasks.config import GateSpec, PipelineConfig, TargetSpec
from tests.integration.onnx_fixtures import EXAMPLE_VOCAB, build_model, curated_frame, random_params


def test_binary_metrics_of_a_perfect_ranking() -> None:
    got = evaluation.compute_metrics("binary", np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert got["roc_auc"] == 1.0 and got["pr_auc"] == 1.0 and got["accuracy"] == 1.0 and got["f1"] == 1.0
    assert got["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.8, 0.9])))


def test_binary_auc_ranks_the_scores_as_they_are_however_close_to_0_or_1() -> None:
    """Clipped to [1e-7, 1 - 1e-7], distinct scores would tie: 0.75 and 0.625 instead."""
    y = np.array([0, 0, 1, 1])
    for score, auc in (([1e-12, 1e-11, 1e-10, 0.9], 1.0), ([0.1, 0.99999994, 1.0, 0.2], 0.75)):
        got = evaluation.compute_metrics("binary", y, np.array(score, dtype=np.float32))
        assert got["roc_auc"] == auc and np.isfinite(got["log_loss"])


def test_binary_auc_is_undefined_not_nan_when_rows_have_one_class() -> None:
    got = evaluation.compute_metrics("binary", np.array([0, 0, 0]), np.array([0.1, 0.7, 0.2]))
    assert got["roc_auc"] is None and got["pr_auc"] is None and got["accuracy"] == pytest.approx(2 / 3)


def test_regression_metrics() -> None:
    got = evaluation.compute_metrics("regression", np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 1.0]))
    assert got == {"rmse": pytest.approx(np.sqrt(10 / 3)), "mae": pytest.approx(4 / 3)}


def test_multiclass_metrics_count_a_class_the_model_does_not_know_as_wrong() -> None:
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    got = evaluation.compute_metrics("multiclass", np.array([0, 1, 2, 3]), proba.max(axis=1), proba)
    assert got["accuracy"] == 0.75
    assert got["log_loss"] == pytest.approx(-(3 * np.log(0.8) + np.log(1e-7)) / 4)
    # per class: the last row ranks among class 0's; the unknown class 3 is not ranked at all (0.5)
    assert got["roc_auc"] == pytest.approx((2.5 / 3 + 1 + 1 + 0.5) / 4)
    assert got["f1"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)


def test_multiclass_rankings_are_undefined_when_the_rows_hold_one_class() -> None:
    """pr_auc was 1.0 for a model wrong on every row (an all-ones class column), and passed the gate."""
    wrong = np.array([[0.9, 0.05, 0.05]] * 4)  # sure of class 0; every row is class 1
    got = evaluation.compute_metrics("multiclass", np.array([1, 1, 1, 1]), wrong.max(axis=1), wrong)
    assert got["pr_auc"] is None and got["roc_auc"] is None and got["accuracy"] == 0.0


def test_multiclass_models_with_different_classes_are_scored_on_the_same_rows_and_classes() -> None:
    """A challenger trained without class C gets every C row wrong: it must not score better than a
    champion that knows C (with C rows dropped it got roc_auc 1.0 on the remaining rows)."""
    label = pd.Series(["A", "B", "C", "C", "C", "A", "B"])
    y_challenger = evaluation.label_targets(label, "multiclass", ["A", "B"])
    y_champion = evaluation.label_targets(label, "multiclass", ["A", "B", "C"])
    sure = np.eye(2)[[0, 1, 0, 1, 0, 0, 1]] * 0.98 + 0.01  # perfect on A and B rows
    decent = np.eye(3)[y_champion] * 0.6 + 0.4 / 3

    challenger = evaluation.compute_metrics("multiclass", y_challenger, sure.max(axis=1), sure)
    champion = evaluation.compute_metrics("multiclass", y_champion, decent.max(axis=1), decent)

    for metric in ("roc_auc", "pr_auc", "accuracy", "f1"):
        assert challenger[metric] < champion[metric], metric
    assert challenger["log_loss"] > champion["log_loss"]


def test_a_model_predicting_nan_has_no_defined_metric_and_fails_the_gate(
    example_config: PipelineConfig,
) -> None:
    regression = evaluation.compute_metrics(
        "regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, np.nan, 3.0])
    )
    binary = evaluation.compute_metrics("binary", np.array([0, 1, 1]), np.array([0.1, np.nan, 0.9]))
    assert regression == {"rmse": None, "mae": None}
    assert set(binary.values()) == {None}
    cfg = gated(example_config, primary_metric="rmse")
    checks = evaluation.gate_checks(
        cfg, {"metrics": regression, "onnx_bytes": 1, "p95_batch_latency_ms": 1}, None
    )
    assert failed(checks) == ["metric_defined"]
    # A NaN recorded elsewhere (an older report) is undefined too, for the challenger and the champion.
    assert failed(evaluation.gate_checks(cfg, candidate("rmse", float("nan")), None)) == ["metric_defined"]
    assert failed(evaluation.gate_checks(cfg, candidate("rmse", 5.0), candidate("rmse", float("nan")))) == [
        "beats_champion"
    ]


def test_label_targets_use_the_last_class_as_positive_and_index_unknown_classes_past_the_known() -> None:
    labels = pd.Series(["1", "0", "1"], dtype="string")
    assert evaluation.label_targets(labels, "binary", ["0", "1"]).tolist() == [1.0, 0.0, 1.0]
    multi = pd.Series(["b", "z", "a", "y", "z"], dtype="string")
    assert evaluation.label_targets(multi, "multiclass", ["a", "b"]).tolist() == [1, 3, 0, 2, 3]


def test_the_gate_refuses_binary_labels_outside_the_model_s_two_classes(
    example_config: PipelineConfig, tmp_path: Path
) -> None:
    """Counted as negative, a third label would make the model look right about rows it knows
    nothing of (and wrong about others): the gate names the column and the labels instead."""
    cfg = example_config.model_copy(update={"target": TargetSpec(task="binary", column="status")})
    params = random_params(cfg.features, EXAMPLE_VOCAB, [4])
    model = evaluation.OnnxModel(
        build_model(tmp_path / "m.onnx", cfg.features, params, "binary", ["late", "on_time"]), cfg
    )
    rows = curated_frame(dt.date(2013, 7, 1), 6)
    labels = pd.Series(["late", "on_time", "diverted", "late", "diverted", "on_time"])

    with pytest.raises(evaluation.EvaluationDataError) as refused:
        model.assess(rows, labels, cfg)

    message = str(refused.value)
    assert "column 'status': 2 evaluation rows have labels ['diverted']" in message
    assert "['late', 'on_time']" in message and "nothing is registered" in message
    known = model.assess(rows, labels.replace("diverted", "late"), cfg)
    assert known["rows"] == 6 and known["metrics"]["accuracy"] is not None


def candidate(metric: str, value: float, size: int = 1000, p95: float = 5.0, version: str = "1") -> dict:
    return {"metrics": {metric: value}, "onnx_bytes": size, "p95_batch_latency_ms": p95, "version": version}


def gated(cfg: PipelineConfig, **gate: object) -> PipelineConfig:
    return cfg.model_copy(update={"gate": GateSpec(**gate)})


def failed(checks: list[dict]) -> list[str]:
    return [c["name"] for c in checks if not c["passed"]]


def test_gate_without_champion_applies_absolute_rules_only(example_config: PipelineConfig) -> None:
    cfg = gated(example_config, min_value=0.6, max_onnx_bytes=500, max_p95_batch_latency_ms=10)
    checks = evaluation.gate_checks(cfg, candidate("roc_auc", 0.7, size=600), None)
    assert [c["name"] for c in checks] == [
        "metric_defined",
        "min_value",
        "max_onnx_bytes",
        "max_p95_batch_latency_ms",
    ]
    assert failed(checks) == ["max_onnx_bytes"]


def test_gate_rejects_a_model_slower_than_its_latency_limit_and_passes_one_at_it(
    example_config: PipelineConfig,
) -> None:
    cfg = gated(example_config, max_p95_batch_latency_ms=10)
    slow = evaluation.gate_checks(cfg, candidate("roc_auc", 0.7, p95=10.5), None)
    assert failed(slow) == ["max_p95_batch_latency_ms"]
    assert slow[-1]["value"] == 10.5 and "10.5 ms must be <= 10" in slow[-1]["detail"]
    assert failed(evaluation.gate_checks(cfg, candidate("roc_auc", 0.7, p95=10.0), None)) == []


def test_gate_floor_on_a_loss_is_a_ceiling(example_config: PipelineConfig) -> None:
    cfg = gated(example_config, primary_metric="log_loss", min_value=0.5)
    assert failed(evaluation.gate_checks(cfg, candidate("log_loss", 0.45), None)) == []
    assert failed(evaluation.gate_checks(cfg, candidate("log_loss", 0.55), None)) == ["min_value"]


def test_gate_requires_beating_the_champion_by_the_margin(example_config: PipelineConfig) -> None:
    cfg = gated(example_config, min_improvement=0.01)
    champion = candidate("roc_auc", 0.70)
    assert failed(evaluation.gate_checks(cfg, candidate("roc_auc", 0.705), champion)) == ["beats_champion"]
    assert failed(evaluation.gate_checks(cfg, candidate("roc_auc", 0.72), champion)) == []


def test_gate_rejects_a_tie_with_the_champion(example_config: PipelineConfig) -> None:
    checks = evaluation.gate_checks(
        gated(example_config), candidate("roc_auc", 0.7), candidate("roc_auc", 0.7)
    )
    assert failed(checks) == ["beats_champion"]


def test_gate_fails_when_the_primary_metric_is_undefined(example_config: PipelineConfig) -> None:
    checks = evaluation.gate_checks(gated(example_config, min_value=0.6), candidate("roc_auc", None), None)
    assert failed(checks) == ["metric_defined"]


def gate_decision(cfg: PipelineConfig, challenger: dict, champion: dict, reason: str) -> dict:
    """A decision as evaluate_and_gate makes it, of a champion v3, for the report."""
    checks = evaluation.gate_checks(cfg, challenger, champion)
    return {
        "promote": not failed(checks),
        "reason": reason,
        "primary_metric": cfg.gate.primary_metric,
        "challenger": challenger,
        "champion": champion,
        "champion_version": "3",
        "checks": checks,
        "model_name": "m",
        "day": "2013-03-01",
    }


def test_html_report_is_self_contained_and_shows_every_check(example_config: PipelineConfig) -> None:
    cfg = gated(example_config, min_value=0.6, max_onnx_bytes=500)
    challenger = {"run_id": "r1", "rows": 10, **candidate("roc_auc", 0.65, size=600)}
    champion = {"run_id": "r0", "rows": 10, **candidate("roc_auc", 0.61, version="3")}
    page = evaluation.render_html(gate_decision(cfg, challenger, champion, "rejected: <size>"))
    assert "<svg" in page and "<script" not in page and "http" not in page.replace("http://www.w3.org", "")
    assert "&lt;size&gt;" in page and "0.6500" in page and "0.6100" in page
    assert page.count("<td>max_onnx_bytes</td>") == 1 and "FAIL" in page


def test_gate_rejects_when_the_champion_s_metric_is_undefined_on_the_rows(
    example_config: PipelineConfig,
) -> None:
    checks = evaluation.gate_checks(
        gated(example_config), candidate("roc_auc", 0.7), candidate("roc_auc", None, version="3")
    )
    (beats,) = [c for c in checks if c["name"] == "beats_champion"]
    assert failed(checks) == ["beats_champion"] and beats["value"] is None
    assert "champion v3's roc_auc is undefined on the evaluation rows" in beats["detail"]
    assert evaluation._reason(checks, candidate("roc_auc", None, version="3")).startswith("rejected: ")


def test_a_champion_that_trained_on_evaluation_days_is_compared_on_the_other_days_only(
    example_config: PipelineConfig,
) -> None:
    """On all rows the champion (0.80, memorised) beats the challenger (0.72); on the rows of days it
    never saw it scores 0.69 and the challenger's 0.71 on those rows wins."""
    cfg = gated(example_config, min_improvement=0.01)
    challenger = {"run_id": "r1", "rows": 30, **candidate("roc_auc", 0.72)}
    champion = {
        "run_id": "r0",
        "rows": 20,
        **candidate("roc_auc", 0.69, version="3"),
        "trained_on_days": ["2013-03-01"],
        "challenger_metrics": {"roc_auc": 0.71},
    }
    checks = evaluation.gate_checks(cfg, challenger, champion)
    (beats,) = [c for c in checks if c["name"] == "beats_champion"]
    assert failed(checks) == [] and beats["value"] == pytest.approx(0.02)
    assert (
        "0.7100 vs champion v3 0.6900 on the 20 evaluation rows of days it did not train on"
        in beats["detail"]
    )
    assert "(not 2013-03-01)" in beats["detail"]
    page = evaluation.render_html(gate_decision(cfg, challenger, champion, "promoted"))
    assert "<th>challenger, champion's rows</th>" in page and "<td>0.7100</td>" in page
    assert "trained on 1 of the evaluation days (2013-03-01)" in page and "the 20 rows of the other" in page

    # Its metric undefined on those rows (one class only) is no comparison either.
    undefined = {**champion, "challenger_metrics": {"roc_auc": None}}
    (beats,) = [
        c for c in evaluation.gate_checks(cfg, challenger, undefined) if c["name"] == "beats_champion"
    ]
    assert (
        not beats["passed"]
        and "this model's roc_auc is undefined on the 20 evaluation rows" in beats["detail"]
    )


def test_a_champion_that_trained_on_every_evaluation_day_cannot_be_beaten_by_a_backfill(
    example_config: PipelineConfig,
) -> None:
    champion = {
        "run_id": "r0",
        "rows": 0,
        "metrics": {},
        "onnx_bytes": 10,
        "version": "3",
        "trained_on_days": ["2013-03-01", "2013-03-02"],
        "challenger_metrics": {},
    }
    checks = evaluation.gate_checks(gated(example_config), candidate("roc_auc", 0.9), champion)
    (beats,) = [c for c in checks if c["name"] == "beats_champion"]
    assert failed(checks) == ["beats_champion"]
    assert "champion v3 trained on every evaluation day (2013-03-01, 2013-03-02)" in beats["detail"]
    assert "(a backfill)" in beats["detail"]


def test_a_label_column_read_as_floats_because_of_a_missing_label_gives_the_same_classes(
    example_config: PipelineConfig,
) -> None:
    cfg = example_config.model_copy(update={"target": TargetSpec(task="binary", column="y")})
    whole = pd.DataFrame({"y": [0, 1, 1]})
    with_gap = pd.DataFrame({"y": [0.0, 1.0, 1.0, np.nan]})
    assert evaluation.labelled_rows(whole, cfg)[1].tolist() == ["0", "1", "1"]
    rows, label = evaluation.labelled_rows(with_gap, cfg)
    assert len(rows) == 3 and label.tolist() == ["0", "1", "1"]


def test_label_targets_match_classes_however_the_model_s_metadata_writes_them() -> None:
    labels = pd.Series(["1", "0", "1.0"], dtype="string")
    for classes in (["0", "1"], [0.0, 1.0], [0, 1], ["0.0", "1.0"]):
        assert evaluation.label_targets(labels, "binary", classes).tolist() == [1.0, 0.0, 1.0]
    assert evaluation.label_targets(labels, "multiclass", [0.0, 1.0]).tolist() == [1, 0, 1]


def test_binary_f1_is_undefined_without_a_positive_row_for_every_model_alike() -> None:
    """0/0, not 0.0: a perfect model on a window of negatives scored f1 0 (failing a min_value, and
    tying with any champion); and a sloppy model's 0.0 beside a perfect model's undefined f1 made the
    gate prefer the sloppy one."""
    perfect = evaluation.compute_metrics("binary", np.zeros(5), np.full(5, 0.1))
    wrong = evaluation.compute_metrics("binary", np.zeros(5), np.full(5, 0.9))
    assert (perfect["accuracy"], perfect["f1"]) == (1.0, None)
    assert (wrong["accuracy"], wrong["f1"]) == (0.0, None)
    # with positive rows, a model predicting none of them finds none: 0
    silent = evaluation.compute_metrics("binary", np.array([0, 0, 1, 1]), np.full(4, 0.1))
    assert silent["f1"] == 0.0


def test_a_champion_giving_no_finite_score_on_some_rows_is_beaten_by_a_model_scoring_them_all(
    example_config: PipelineConfig,
) -> None:
    """Its metrics are undefined there: refusing the comparison kept a broken champion serving for
    good, every retrain rejected. A champion undefined for another reason still blocks."""
    cfg = gated(example_config)
    broken = {**candidate("roc_auc", None, version="3"), "nonfinite_rows": 2, "rows": 5000}
    checks = evaluation.gate_checks(cfg, candidate("roc_auc", 0.7), broken)
    (beats,) = [c for c in checks if c["name"] == "beats_champion"]
    assert beats["passed"] and failed(checks) == []
    assert beats["detail"] == (
        "champion v3 gives no finite score for 2 of the evaluation rows; this model scores every one of them"
    )
    undefined = {**broken, "nonfinite_rows": 0}
    assert failed(evaluation.gate_checks(cfg, candidate("roc_auc", 0.7), undefined)) == ["beats_champion"]
