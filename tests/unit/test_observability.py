"""Stage results -> metric values (pure mapping; the transport is tested in tests/integration/test_metrics.py)."""

from __future__ import annotations

import pytest

from mlops_tasks.observability import UnknownStepError, metrics_for, role_step


def test_validation_result_reports_good_and_quarantined_rows() -> None:
    metrics = metrics_for("validate", {"good_rows": 90, "bad_rows": 10, "bad_fraction": 0.1, "date": "x"})
    assert metrics == {"good_rows": 90.0, "quarantined_rows": 10.0, "bad_fraction": 0.1}


def test_scoring_rate_is_rows_over_the_sum_of_measured_seconds() -> None:
    result = {"rows": 1000, "seconds": {"read": 0.1, "preprocess": 0.1, "score": 0.2, "write": 0.1}}
    assert metrics_for("score", result)["rows_per_second"] == pytest.approx(2000.0)


def test_scoring_without_measured_time_reports_no_rate() -> None:
    assert "rows_per_second" not in metrics_for("score", {"rows": 0, "seconds": {"read": 0.0}})


def test_gate_reports_both_models_primary_metric_and_the_decision_as_0_or_1() -> None:
    decision = {
        "promote": False,
        "primary_metric": "roc_auc",
        "challenger": {"metrics": {"roc_auc": 0.71, "f1": 0.3}},
        "champion": {"metrics": {"roc_auc": 0.74}},
    }
    assert metrics_for("gate", decision) == {
        "promoted": 0.0,
        "challenger_roc_auc": 0.71,
        "champion_roc_auc": 0.74,
    }


def test_first_gate_without_champion_reports_only_the_challenger() -> None:
    decision = {"promote": True, "primary_metric": "roc_auc", "challenger": {"metrics": {"roc_auc": 0.7}}}
    assert metrics_for("gate", decision) == {"promoted": 1.0, "challenger_roc_auc": 0.7}


def test_drift_reports_share_and_retrain_flag() -> None:
    assert metrics_for("drift", {"share_drifted": 0.4, "retrain": True}) == {
        "retrain": 1.0,
        "drift_share": 0.4,
    }


def test_unknown_step_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UnknownStepError, match="known steps: .*validate"):
        metrics_for("trian", {})


def test_the_gate_reports_the_challenger_on_the_rows_the_champion_was_compared_on() -> None:
    """A champion is scored only on evaluation days it did not train on: the challenger beside it is
    its metric on those rows, not on all of them (the dashboard showed it ahead of a gate it lost)."""
    decision = {
        "promote": False,
        "primary_metric": "roc_auc",
        "challenger": {"metrics": {"roc_auc": 0.80}},
        "champion": {"metrics": {"roc_auc": 0.70}, "challenger_metrics": {"roc_auc": 0.65}},
    }
    assert metrics_for("gate", decision) == {
        "promoted": 0.0,
        "challenger_roc_auc": 0.65,
        "champion_roc_auc": 0.70,
    }


def test_the_shadow_branch_reports_under_its_own_steps() -> None:
    assert (role_step("score", "champion"), role_step("publish", "challenger")) == ("score", "shadow_publish")
    result = {"rows": 1000, "parts": 2, "seconds": {"score": 0.5}}
    assert metrics_for("shadow_publish", result) == metrics_for("publish", result)
    assert metrics_for("shadow_score", result) == metrics_for("score", result)
