"""Drift comparison and retrain policy on small synthetic frames."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from mlops_tasks import drift
from mlops_tasks.config import PipelineConfig

DAY = dt.date(2013, 7, 10)


def make_config(categorical: str = "c", **drift_knobs: object) -> PipelineConfig:
    """A 3-feature pipeline with the given ``drift:`` settings (and name of the categorical feature)."""
    return PipelineConfig.model_validate(
        {
            "name": "toy",
            "start_date": "2013-01-01",
            "data": {
                "key": ["x"],
                "columns": [
                    {"name": "x", "type": "float"},
                    {"name": "y", "type": "float"},
                    {"name": categorical, "type": "category"},
                    {"name": "target", "type": "float"},
                ],
            },
            "target": {"task": "regression", "column": "target"},
            "gate": {"primary_metric": "rmse"},
            "features": {"numeric": ["x", "y"], "categorical": [categorical]},
            "drift": {"min_rows": 100, "sample_rows": 5000, "critical_columns": ["x"], **drift_knobs},
        }
    )


def frame(n: int, seed: int, x_shift: float = 0.0, c_probs: tuple[float, float, float] = (0.6, 0.3, 0.1)):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(x_shift, 1.0, n),
            "y": rng.uniform(0, 10, n),
            "c": rng.choice(["a", "b", "z"], n, p=list(c_probs)),
            "target": rng.normal(size=n),
        }
    )


def test_same_distribution_is_not_drift():
    result = drift.compare(make_config(), frame(3000, 1), frame(3000, 2))
    assert result["drifted_columns"] == []
    assert result["share_drifted"] == 0.0


def test_shifted_numeric_column_drifts_by_normalised_wasserstein():
    result = drift.compare(make_config(), frame(3000, 1), frame(3000, 2, x_shift=1.0))
    x = result["columns"]["x"]
    assert (x["stat_test"], x["drifted"]) == ("wasserstein", True)
    assert x["statistic"] == pytest.approx(1.0, abs=0.1)
    assert result["drifted_critical"] == ["x"]
    assert result["drifted_columns"] == ["x"]


def test_new_category_mix_drifts_by_jensen_shannon():
    result = drift.compare(make_config(), frame(3000, 1), frame(3000, 2, c_probs=(0.1, 0.3, 0.6)))
    c = result["columns"]["c"]
    assert (c["stat_test"], c["drifted"]) == ("jensenshannon", True)
    assert result["drifted_columns"] == ["c"]


def test_small_reference_uses_p_value_tests():
    result = drift.compare(make_config(), frame(500, 1), frame(500, 2, x_shift=1.0))
    assert result["columns"]["x"]["stat_test"] == "ks"
    assert result["columns"]["x"]["p_value"] < 0.05
    assert result["columns"]["c"]["stat_test"] == drift.CHISQUARE
    assert result["columns"]["c"]["drifted"] is False


def test_a_numeric_column_of_a_small_window_keeps_its_distance_test() -> None:
    """~900 flights of one day against a two-month reference: they share that day's weather, a
    narrow slice of the reference. Judged as independent draws by a p-value test, the first check
    after every promotion (one day scored by the new champion) found temperature drifted; a slice
    half a standard deviation off the reference mean is no drift by the distance."""
    cfg = make_config(wasserstein_threshold=1.0, sample_rows=20_000)
    reference = frame(20_000, 1)
    one_day = frame(900, 2).assign(x=np.random.default_rng(3).normal(0.5, 0.3, 900))

    x = drift.compare(cfg, reference, one_day)["columns"]["x"]

    assert (x["stat_test"], x["drifted"]) == ("wasserstein", False) and 0.3 < x["statistic"] < 0.8
    shifted = drift.compare(cfg, reference, one_day.assign(x=one_day["x"] + 1.5))["columns"]["x"]
    assert (shifted["stat_test"], shifted["drifted"]) == ("wasserstein", True)
    # 3 categories in 900 rows: enough values per category for a distance (see the airports test)
    c = drift.compare(cfg, reference, one_day)["columns"]["c"]
    assert (c["stat_test"], c["drifted"]) == ("jensenshannon", False)


def test_small_sample_tests_judge_on_drift_column_p_value() -> None:
    """One small shift: its KS p-value lies between the two settings, so they decide oppositely."""
    reference, current = frame(500, 1), frame(500, 2, x_shift=0.2)
    p_value = drift.compare(make_config(), reference, current)["columns"]["x"]["p_value"]
    assert 1e-4 < p_value < 0.5
    strict, lenient = (
        drift.compare(make_config(column_p_value=p), reference, current)["columns"]["x"]
        for p in (p_value / 2, min(p_value * 2, 0.99))
    )
    assert (strict["threshold"], strict["drifted"]) == (p_value / 2, False)
    assert lenient["drifted"] is True


@pytest.mark.parametrize(("test", "at_threshold"), [("ks", True), (drift.CHISQUARE, False), ("z", False)])
def test_a_p_value_equal_to_the_threshold_is_drift_for_ks_only_as_in_evidently(test, at_threshold) -> None:
    plan = drift._Plan("numeric" if test == "ks" else "categorical", test, 0.05)
    assert drift._drifted(plan, 1.0, 0.05) is at_threshold
    assert drift._drifted(plan, 1.0, 0.0499) is True and drift._drifted(plan, 1.0, 0.0501) is False


def test_the_chi_squared_test_of_small_samples_flags_identical_distributions_at_its_p_value_rate():
    """Evidently's goodness of fit against the reference's counts took the 800 reference rows'
    noise for drift: 85% of these 40 draws of one distribution were "drift" at p 0.05."""
    cfg = make_config(min_rows=100)
    flagged = [
        drift.compare(cfg, frame(800, seed), frame(3000, 1000 + seed))["columns"]["c"]["drifted"]
        for seed in range(40)
    ]
    assert sum(flagged) <= 6  # 5% expected: 2 of 40
    shifted = drift.compare(cfg, frame(800, 1), frame(3000, 2, c_probs=(0.5, 0.35, 0.15)))["columns"]["c"]
    assert shifted["stat_test"] == drift.CHISQUARE and shifted["drifted"] is True


def test_the_report_runs_the_decision_s_chi_squared_test():
    cfg = make_config(min_rows=100, report_rows=5000)
    ref, cur = frame(800, 1), frame(3000, 2, c_probs=(0.55, 0.33, 0.12))
    comparison = drift.compare(cfg, ref, cur)
    _, summary = drift.evidently_report(cfg, ref, cur, day=DAY, comparison=comparison)
    keys = ("stat_test", "p_value", "threshold", "drifted")  # Evidently reports no chi2 statistic
    reported, decided = summary["columns"]["c"], comparison["columns"]["c"]
    assert {k: reported[k] for k in keys} == {k: decided[k] for k in keys}
    assert decided["stat_test"] == drift.CHISQUARE and decided["drifted"] is True


def test_numeric_column_with_few_values_is_compared_as_categories():
    ref, cur = frame(3000, 1), frame(3000, 2)
    ref["y"], cur["y"] = ref["y"].round() % 3, cur["y"].round() % 3
    column = drift.compare(make_config(), ref, cur)["columns"]["y"]
    assert (column["kind"], column["stat_test"]) == ("categorical", "jensenshannon")


def test_a_column_the_window_has_no_value_of_is_a_data_quality_finding_not_drift():
    """Not drift (retrained on, the model would learn the broken feed), and reported whatever the
    check decides: here x, critical, drifted too, and that retrain still goes ahead."""
    cfg = make_config()
    current = frame(3000, 2, x_shift=1.0)
    current["y"] = np.nan
    result = drift.compare(cfg, frame(3000, 1), current, current_name="s3://b/p/predictions/x")
    y = result["columns"]["y"]
    assert (y["drifted"], y["stat_test"], y["missing_values"]) == (False, None, True)
    assert y["missing"] == {"reference": 0.0, "current": 1.0}
    assert "all values are missing in current (s3://b/p/predictions/x)" == y["reason"]
    assert result["missing_values_columns"] == ["y"] and result["drifted_columns"] == ["x"]

    decision = drift.decide(cfg, result, day=DAY, state=None)

    assert (decision["status"], decision["retrain"], decision["missing_values_columns"]) == (
        "drift",
        True,
        ["y"],
    )
    assert decision["data_quality"] == [
        "column y: 100% of its values missing, against 0% in the reference "
        "(drift.max_missing_share_increase 20%)"
    ]
    alone = drift.decide(
        cfg, drift.compare(cfg, frame(3000, 1), current.assign(x=frame(3000, 3)["x"])), day=DAY, state=None
    )
    assert (alone["status"], alone["retrain"], alone["reasons"]) == (
        "data_quality",
        False,
        decision["data_quality"],
    )


@pytest.mark.parametrize(("missing", "flagged"), [(0.9, True), (0.5, True), (0.15, False)])
def test_a_column_mostly_missing_in_the_window_is_a_data_quality_problem(
    missing: float, flagged: bool
) -> None:
    """The values left look like the reference's: the drift tests never saw a feed going away."""
    cfg = make_config(critical_columns=[])
    current = frame(3000, 2)
    current.loc[: int(3000 * missing) - 1, "y"] = np.nan
    result = drift.compare(cfg, frame(3000, 1), current)
    y = result["columns"]["y"]
    assert y["drifted"] is False and y["stat_test"] == "wasserstein"
    assert (y["missing_values"], result["missing_values_columns"]) == (flagged, ["y"] if flagged else [])
    status = drift.decide(cfg, result, day=DAY, state=None)["status"]
    assert status == ("data_quality" if flagged else "no_drift")
    _, summary = drift.evidently_report(cfg, frame(3000, 1), current, day=DAY, comparison=result)
    assert summary["missing_values_columns"] == result["missing_values_columns"]


def test_a_champion_giving_no_finite_score_for_the_window_is_a_data_quality_problem() -> None:
    reference, current = frame(3000, 1), frame(3000, 2)
    scores = {"reference_scores": np.full(3000, 0.3), "current_scores": np.full(3000, np.nan)}
    result = drift.compare(make_config(), reference, current, **scores)
    assert result["missing_values_columns"] == [drift.PREDICTION_COLUMN]
    assert drift.decide(make_config(), result, day=DAY, state=None)["status"] == "data_quality"


def test_values_the_reference_lacked_appearing_in_the_window_are_drift() -> None:
    reference = frame(3000, 1)
    reference["y"] = np.nan
    y = drift.compare(make_config(), reference, frame(3000, 2))["columns"]["y"]
    assert (y["drifted"], y["missing_values"]) == (True, False)


def test_a_column_empty_on_both_sides_is_not_drift_and_requests_no_retrain():
    # e.g. a column the source never fills: nothing changed, so no retrain every cooldown
    cfg = make_config()
    ref, cur = frame(3000, 1), frame(3000, 2)
    ref["x"], cur["x"] = np.nan, np.nan
    result = drift.compare(cfg, ref, cur, reference_name="v1", current_name="window")
    x = result["columns"]["x"]
    assert (x["drifted"], x["stat_test"]) == (False, None)
    assert (
        x["reason"]
        == "all values are missing in reference (v1) and current (window): nothing to compare, not drift"
    )
    assert (result["drifted_columns"], result["drifted_critical"]) == ([], [])
    assert drift.decide(cfg, result, day=DAY, state=None)["status"] == "no_drift"
    _, summary = drift.evidently_report(cfg, ref, cur, day=DAY, comparison=result)
    assert summary["columns"]["x"] == x


def test_column_missing_on_one_side_is_an_error_naming_it():
    with pytest.raises(drift.DriftInputError, match=r"missing from today\.parquet \(current\): \['c'\]"):
        drift.compare(
            make_config(), frame(3000, 1), frame(3000, 2).drop(columns="c"), current_name="today.parquet"
        )


def test_non_numeric_values_in_a_numeric_feature_are_an_error_naming_column():
    current = frame(3000, 2)
    current["x"] = current["x"].astype(object)
    current.loc[5, "x"] = "n/a"
    with pytest.raises(drift.DriftInputError, match=r"current: column 'x' must be numeric.*'n/a'"):
        drift.compare(make_config(), frame(3000, 1), current)


def test_an_integer_category_with_a_null_on_one_side_only_is_not_drift():
    # pandas makes an int64 column with a null float64; 5.0 and 5 are the same category
    cfg = make_config(critical_columns=[])
    ref, cur = frame(3000, 1), frame(3000, 2)
    rng = np.random.default_rng(3)
    ref["c"] = rng.integers(5, 23, 3000).astype("float64")
    ref.loc[0, "c"] = np.nan
    cur["c"] = rng.integers(5, 23, 3000)
    column = drift.compare(cfg, ref, cur)["columns"]["c"]
    assert (column["stat_test"], column["drifted"]) == ("jensenshannon", False)
    assert column["statistic"] < 0.1


def test_large_inputs_are_sampled_to_sample_rows_with_the_seed():
    result = drift.compare(make_config(sample_rows=1000), frame(4000, 1), frame(2500, 2))
    assert result["rows"] == {
        "reference": 4000,
        "current": 2500,
        "reference_compared": 1000,
        "current_compared": 1000,
    }


def test_comparison_is_deterministic_for_the_seed_and_changes_with_it():
    ref, cur = frame(8000, 1), frame(8000, 2, x_shift=0.05)
    first = drift.compare(make_config(sample_rows=1500), ref, cur)
    assert drift.compare(make_config(sample_rows=1500), ref, cur) == first
    other = drift.compare(make_config(sample_rows=1500, seed=7), ref, cur)
    assert other["columns"]["x"]["statistic"] != first["columns"]["x"]["statistic"]


def test_sampling_parts_one_at_a_time_equals_sampling_the_whole_frame():
    cfg = make_config(sample_rows=1500)
    ref, cur = frame(8000, 1), frame(6000, 2, x_shift=0.05)
    loaded = []

    def parts(whole: pd.DataFrame, sizes: list[int]) -> list[drift.Part]:
        bounds = np.cumsum([0, *sizes])
        pieces = [whole.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds, bounds[1:], strict=False)]
        return [
            drift.Part(rows=len(p), load=lambda p=p, i=i: loaded.append(i) or p, name=f"part-{i}")
            for i, p in enumerate(pieces)
        ]

    ref_sample, ref_rows = drift.sample_parts(parts(ref, [3000, 0, 5000]), 1500, cfg.drift.seed)
    cur_sample, cur_rows = drift.sample_parts(parts(cur, [6000]), 1500, cfg.drift.seed)
    assert (ref_rows, cur_rows, len(ref_sample), len(cur_sample)) == (8000, 6000, 1500, 1500)
    assert 1 not in loaded  # an empty (or untouched) part is never read
    streamed = drift.compare(cfg, ref_sample, cur_sample, reference_rows=ref_rows, current_rows=cur_rows)
    assert streamed == drift.compare(cfg, ref, cur)


def test_a_part_whose_rows_changed_since_its_manifest_is_an_error_naming_it():
    part = drift.Part(rows=10, load=lambda: frame(9, 1), name="s3://b/curated/date=2013-07-01/part-0.parquet")
    with pytest.raises(
        drift.DriftInputError, match=r"part-0.parquet: has 9 rows but its manifest/record says 10"
    ):
        drift.sample_parts([part], 5, 42)


def test_the_evidently_report_renders_report_rows_while_the_decision_uses_sample_rows():
    cfg = make_config(sample_rows=3000, report_rows=1000)
    ref, cur = frame(4000, 1), frame(4000, 2, x_shift=1.0)
    _, summary = drift.evidently_report(cfg, ref, cur, day=DAY)
    assert summary["sample"]["rows"] == 1000
    assert (summary["rows"]["reference_compared"], summary["rows"]["current"]) == (1000, 4000)
    assert summary["drifted_columns"] == drift.compare(cfg, ref, cur)["drifted_columns"] == ["x"]


def test_a_column_the_decision_tested_keeps_its_result_when_the_report_sample_has_no_value_of_it():
    """One value of y in 20,000 current rows: in the decision's sample, not in the report's 1,000."""
    cfg = make_config(sample_rows=20000, report_rows=1000)
    ref, cur = frame(20000, 1), frame(20000, 2)
    cur["y"] = np.nan
    cur.loc[0, "y"] = 5.0
    comparison = drift.compare(cfg, ref, cur)
    _, summary = drift.evidently_report(cfg, ref, cur, day=DAY, comparison=comparison)
    tested, reported = comparison["columns"]["y"], summary["columns"]["y"]
    assert tested["stat_test"] is not None
    assert {k: reported[k] for k in tested} | {"reason": None} == tested | {"reason": None}
    assert reported["reason"].startswith("not in this report: all values are missing in current")
    assert summary["drifted_columns"] == comparison["drifted_columns"]


def test_the_evidently_report_uses_the_tests_chosen_on_the_decision_sample():
    # A sparse column: 1500 reference values in the decision sample (distance test), about 600 in the
    # report's sample, which alone would choose KS and could contradict the decision.
    cfg = make_config(sample_rows=5000, report_rows=2000, critical_columns=[])
    ref, cur = frame(5000, 1), frame(5000, 2)
    rng = np.random.default_rng(4)
    ref.loc[rng.permutation(5000)[:3500], "x"] = np.nan
    assert drift.compare(make_config(sample_rows=2000), ref, cur)["columns"]["x"]["stat_test"] == "ks"
    comparison = drift.compare(cfg, ref, cur)
    for summary in (
        drift.evidently_report(cfg, ref, cur, day=DAY, comparison=comparison)[1],
        drift.evidently_report(cfg, ref, cur, day=DAY)[1],  # without a comparison: computed the same way
    ):
        assert {c: (e["kind"], e["stat_test"], e["threshold"]) for c, e in summary["columns"].items()} == {
            c: (e["kind"], e["stat_test"], e["threshold"]) for c, e in comparison["columns"].items()
        }
        assert summary["columns"]["x"]["stat_test"] == "wasserstein"


class _Scripts(HTMLParser):
    """The text of each <script> element, as a browser splits the page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._inside = tag == "script"
        if self._inside:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.scripts[-1] += data


def test_a_column_name_with_markup_stays_data_in_the_evidently_report():
    name = "</script><script>alert(1)</script><!--"
    cfg = make_config(categorical=name)
    ref, cur = (f.rename(columns={"c": name}) for f in (frame(3000, 1), frame(3000, 2)))
    html, _ = drift.evidently_report(cfg, ref, cur, day=DAY)
    parser = _Scripts()
    parser.feed(html)
    data = [s for s in parser.scripts if "var metric_" in s]
    assert [s for s in parser.scripts if "alert(1)" in s] == data  # no script of the column name's own
    report, _ = json.JSONDecoder().raw_decode(data[0], data[0].index("= ") + 2)  # the whole report data
    assert f'"column_name": {json.dumps(name)}' in json.dumps(report)


def test_the_report_states_the_decision_the_monitor_acts_on_above_evidently_s_verdict():
    """y has no value in the reference: drifted for the decision (1 of 3 columns with x), but
    Evidently cannot test it, and its own share (1 of 2) read "drift" where the decision's did not."""
    cfg = make_config(sample_rows=3000, report_rows=1000, drift_share_threshold=0.5, critical_columns=[])
    ref, cur = frame(3000, 1), frame(3000, 2, x_shift=1.0)
    ref["y"] = np.nan
    comparison = drift.compare(cfg, ref, cur)
    html, _ = drift.evidently_report(cfg, ref, cur, day=DAY, comparison=comparison)
    assert comparison["drifted_columns"] == ["x", "y"]
    banner = html[html.index('<div id="mlops-drift-decision"') :]
    banner = banner[: banner.index("</div>")]
    assert html.index("<body>") < html.index('<div id="mlops-drift-decision"')
    assert "2 of 3 monitored columns drifted (share 0.667; drift.drift_share_threshold 0.5): x, y" in banner
    assert "more often missing" not in banner
    cur["c"] = None  # the categorical feed breaks too
    missing = drift.compare(cfg, ref, cur)
    html, _ = drift.evidently_report(cfg, ref, cur, day=DAY, comparison=missing)
    assert "far more often missing than in the reference (a data-quality finding, not drift): c." in html
    assert "samples of up to 3,000 rows per side" in banner and "up to 1,000 rows per side" in banner


def test_category_values_shaped_like_ids_are_data_and_the_page_bytes_repeat():
    """Renumbering Evidently's random ids rewrote every 32-hex string on the page: md5 values of a
    category showed as counters, and the page showed values the data does not have."""
    cfg = make_config(sample_rows=2000, report_rows=2000)
    digests = {v: hashlib.md5(v.encode()).hexdigest() for v in ("a", "b", "z")}
    ref, cur = (f.assign(c=f["c"].map(digests)) for f in (frame(2000, 1), frame(2000, 2)))
    first, _ = drift.evidently_report(cfg, ref, cur, day=DAY)
    again, _ = drift.evidently_report(cfg, ref, cur, day=DAY)
    assert first == again
    assert all(digest in first for digest in digests.values())
    ids = re.findall(r'"id": "([0-9a-f-]{32,36})"|metric_([0-9a-f]{32})', first)
    assert ids and all(int(a or b, 16) < 1000 for a, b in ids)  # every Evidently id renumbered


def test_a_comparison_of_other_inputs_is_refused_by_the_report():
    comparison = drift.compare(make_config(), frame(3000, 1), frame(3000, 2))  # without scores
    with pytest.raises(drift.DriftInputError, match=r"no entry for \['score'\]"):
        drift.evidently_report(
            make_config(),
            frame(3000, 1),
            frame(3000, 2),
            day=DAY,
            comparison=comparison,
            reference_scores=np.zeros(3000),
            current_scores=np.zeros(3000),
        )


def test_shifted_scores_are_prediction_drift():
    rng = np.random.default_rng(0)
    result = drift.compare(
        make_config(),
        frame(3000, 1),
        frame(3000, 2),
        reference_scores=rng.beta(2, 5, 3000),
        current_scores=rng.beta(5, 2, 3000),
    )
    assert result["prediction_drift"]["drifted"] is True
    assert "score" not in result["columns"]


def test_scores_of_the_wrong_length_are_an_error():
    with pytest.raises(drift.DriftInputError, match=r"current_scores has shape \(10,\), expected \(3000,\)"):
        drift.compare(
            make_config(),
            frame(3000, 1),
            frame(3000, 2),
            reference_scores=np.zeros(3000),
            current_scores=np.zeros(10),
        )


# -- decide ---------------------------------------------------------------------------------------


def drifted_comparison():
    return drift.compare(make_config(), frame(3000, 1), frame(3000, 2, x_shift=1.0))


def requested(cfg: PipelineConfig, day: dt.date = DAY, run: str = "run-a") -> dict:
    """The state after ``run`` requested a retrain for ``day``."""
    decision = drift.decide(cfg, drifted_comparison(), day=day, state=None, check_run_id=run)
    assert decision["retrain"] is True
    return drift.next_state(None, decision, day, check_run_id=run)


def test_critical_column_drift_triggers_retrain():
    decision = drift.decide(make_config(drift_share_threshold=0.5), drifted_comparison(), day=DAY, state=None)
    assert (decision["retrain"], decision["status"]) == (True, "drift")
    assert len(decision["reasons"]) == 1
    assert decision["reasons"][0].startswith("critical column 'x' (wasserstein distance")


def test_drifted_share_at_threshold_triggers_retrain_without_critical_columns():
    cfg = make_config(critical_columns=[], drift_share_threshold=0.3)
    decision = drift.decide(
        cfg, drift.compare(cfg, frame(3000, 1), frame(3000, 2, x_shift=1.0)), day=DAY, state=None
    )
    assert decision["retrain"] is True
    assert decision["reasons"] == ["33% of monitored columns drifted (drift.drift_share_threshold 30%): x"]


def test_no_drift_means_no_retrain():
    cfg = make_config()
    decision = drift.decide(cfg, drift.compare(cfg, frame(3000, 1), frame(3000, 2)), day=DAY, state=None)
    assert (decision["retrain"], decision["status"], decision["reasons"]) == (False, "no_drift", [])


def test_too_few_current_rows_is_insufficient_data_without_trigger():
    cfg = make_config(min_rows=1000)
    decision = drift.decide(
        cfg, drift.compare(cfg, frame(3000, 1), frame(400, 2, x_shift=3.0)), day=DAY, state=None
    )
    assert (decision["retrain"], decision["status"]) == (False, "insufficient_data")
    assert decision["reasons"] == ["current has 400 rows, fewer than drift.min_rows=1000"]
    # no drift figures from too few rows (an empty side would make every column "drifted")
    assert (decision["share_drifted"], decision["drifted_columns"], decision["prediction_drift"]) == (
        None,
        [],
        False,
    )


def test_drift_twice_inside_the_cooldown_triggers_once():
    cfg, comparison = make_config(cooldown_days=7), drifted_comparison()
    state = None
    decisions = []
    for i, day in enumerate((DAY, DAY + dt.timedelta(days=3), DAY + dt.timedelta(days=7))):
        decision = drift.decide(cfg, comparison, day=day, state=state, check_run_id=f"run-{i}")
        state = drift.next_state(state, decision, day, check_run_id=f"run-{i}")
        decisions.append((decision["status"], decision["retrain"]))
    assert decisions == [("drift", True), ("cooldown", False), ("drift", True)]
    assert state["triggers"] == [
        {"day": DAY.isoformat(), "run_id": "run-0"},
        {"day": (DAY + dt.timedelta(days=7)).isoformat(), "run_id": "run-2"},
    ]


def test_a_later_trigger_inside_the_cooldown_blocks_an_earlier_day_checked_afterwards():
    # out of order (backfill): the retrain requested for DAY already covers the day before
    cfg, comparison = make_config(cooldown_days=7), drifted_comparison()
    state = drift.next_state(None, drift.decide(cfg, comparison, day=DAY, state=None), DAY)
    earlier = DAY - dt.timedelta(days=1)
    decision = drift.decide(cfg, comparison, day=earlier, state=state)
    assert (decision["status"], decision["retrain"]) == ("cooldown", False)
    assert decision["cooldown_until"] == (DAY + dt.timedelta(days=7)).isoformat()
    week_before = DAY - dt.timedelta(days=7)
    assert drift.decide(cfg, comparison, day=week_before, state=state)["status"] == "drift"


def test_a_retry_of_the_requesting_run_reproduces_its_decision():
    cfg, comparison = make_config(cooldown_days=7), drifted_comparison()
    first = drift.decide(cfg, comparison, day=DAY, state=None, check_run_id="run-a")
    state = drift.next_state(None, first, DAY, check_run_id="run-a")
    assert drift.decide(cfg, comparison, day=DAY, state=state, check_run_id="run-a") == first
    assert drift.next_state(state, first, DAY, check_run_id="run-a") == state


def test_a_cleared_check_of_a_run_whose_retrain_went_out_does_not_request_again():
    """Clearing a finished drift_check reruns it under the same run id; once request_retraining sent
    the event (mark_sent) the trigger is no longer the run's to make again."""
    cfg, comparison = make_config(cooldown_days=7), drifted_comparison()
    state = drift.mark_sent(requested(cfg), DAY, "run-a")
    assert state["triggers"] == [{"day": DAY.isoformat(), "run_id": "run-a", "sent": True}]
    again = drift.decide(cfg, comparison, day=DAY, state=state, check_run_id="run-a")
    assert (again["status"], again["retrain"], again["requested_by"]) == ("already_requested", False, "run-a")
    assert drift.next_state(state, again, DAY, check_run_id="run-a")["triggers"] == state["triggers"]
    no_drift = drift.decide(cfg, drift.compare(cfg, frame(3000, 1), frame(3000, 2)), day=DAY, state=state)
    assert drift.next_state(state, no_drift, DAY, check_run_id="run-a")["triggers"] == state["triggers"]


@pytest.mark.parametrize("run", ["run-b", None], ids=["another_run", "no_run_id"])
@pytest.mark.parametrize("cooldown_days", [7, 0])
def test_another_check_of_a_requested_day_does_not_request_again(run: str | None, cooldown_days: int):
    # a schedule and the predictions event, a re-scored day, a new run: one day's drift, one retrain
    cfg = make_config(cooldown_days=cooldown_days)
    state = requested(cfg)
    decision = drift.decide(cfg, drifted_comparison(), day=DAY, state=state, check_run_id=run)
    assert (decision["status"], decision["retrain"], decision["requested_by"]) == (
        "already_requested",
        False,
        "run-a",
    )
    assert any(r.startswith("critical column 'x'") for r in decision["reasons"])  # reported all the same
    assert drift.next_state(state, decision, DAY, check_run_id=run)["triggers"] == state["triggers"]


def test_a_trigger_outlives_later_checks_of_its_day_that_do_not_retrain():
    cfg = make_config(cooldown_days=7, min_rows=1000)
    state = requested(cfg)
    too_few = drift.compare(cfg, frame(3000, 1), frame(400, 2))
    no_drift = drift.compare(cfg, frame(3000, 1), frame(3000, 2))
    for i, comparison in enumerate((too_few, no_drift, drifted_comparison())):
        decision = drift.decide(cfg, comparison, day=DAY, state=state, check_run_id=f"later-{i}")
        state = drift.next_state(state, decision, DAY, check_run_id=f"later-{i}")
    assert state["triggers"] == [{"day": DAY.isoformat(), "run_id": "run-a"}]
    two_days_later = DAY + dt.timedelta(days=2)
    assert drift.decide(cfg, drifted_comparison(), day=two_days_later, state=state)["status"] == "cooldown"


def test_a_retry_that_no_longer_retrains_withdraws_only_its_own_trigger():
    cfg = make_config(cooldown_days=7)
    state = requested(cfg, DAY - dt.timedelta(days=10), "run-old")
    state = drift.next_state(
        state,
        drift.decide(cfg, drifted_comparison(), day=DAY, state=state, check_run_id="run-a"),
        DAY,
        check_run_id="run-a",
    )
    retry = drift.decide(
        cfg, drift.compare(cfg, frame(3000, 1), frame(3000, 2)), day=DAY, state=state, check_run_id="run-a"
    )
    assert retry["status"] == "no_drift"
    after = drift.next_state(state, retry, DAY, check_run_id="run-a")
    assert after["triggers"] == [{"day": (DAY - dt.timedelta(days=10)).isoformat(), "run_id": "run-old"}]


def test_a_state_of_bare_trigger_days_reads_as_triggers_of_an_unknown_run():
    cfg, comparison = make_config(cooldown_days=7), drifted_comparison()
    old = {
        "triggers": [DAY.isoformat()],
        "last_check": {"day": DAY.isoformat(), "status": "drift", "retrain": True},
    }
    same_day = drift.decide(cfg, comparison, day=DAY, state=old, check_run_id="run-b")
    assert (same_day["status"], same_day["requested_by"]) == ("already_requested", None)
    later = DAY + dt.timedelta(days=3)
    assert drift.decide(cfg, comparison, day=later, state=old, check_run_id="run-b")["status"] == "cooldown"
    assert drift.next_state(old, same_day, DAY, check_run_id="run-b")["triggers"] == [
        {"day": DAY.isoformat(), "run_id": None}
    ]


def test_live_metric_drop_beyond_threshold_triggers_retrain():
    cfg = make_config(max_metric_drop=0.02)
    comparison = drift.compare(cfg, frame(3000, 1), frame(3000, 2))
    decision = drift.decide(cfg, comparison, day=DAY, state=None, live_metric_drop=0.03)
    assert decision["retrain"] is True
    assert decision["reasons"] == ["live rmse dropped by 0.0300 (> 0.02)"]


def test_enough_new_rows_since_training_triggers_retrain():
    cfg = make_config(retrain_after_new_rows=50_000)
    comparison = drift.compare(cfg, frame(3000, 1), frame(3000, 2))
    assert (
        drift.decide(cfg, comparison, day=DAY, state=None, new_rows_since_training=49_999)["retrain"] is False
    )
    assert (
        drift.decide(cfg, comparison, day=DAY, state=None, new_rows_since_training=50_000)["retrain"] is True
    )


def test_decisions_are_deterministic_for_the_seed():
    cfg = make_config(sample_rows=1000)
    ref, cur = frame(6000, 1), frame(6000, 2, x_shift=0.3)
    runs = [drift.decide(cfg, drift.compare(cfg, ref, cur), day=DAY, state=None) for _ in range(2)]
    assert runs[0] == runs[1]


def test_a_backfilled_day_older_than_every_remembered_trigger_keeps_its_own():
    """The state remembers MAX_REMEMBERED_TRIGGERS triggers, the newest; a retrain requested for an
    older day (a backfill) must outlive the write that records it, or another check of that day
    would request it again."""
    cfg = make_config(cooldown_days=0)
    weekly = [
        {"day": (DAY + dt.timedelta(days=7 * i)).isoformat(), "run_id": f"run-{i}", "sent": True}
        for i in range(drift.MAX_REMEMBERED_TRIGGERS)
    ]
    old_day = DAY - dt.timedelta(days=30)
    decision = drift.decide(
        cfg, drifted_comparison(), day=old_day, state={"triggers": weekly}, check_run_id="b"
    )
    state = drift.next_state({"triggers": weekly}, decision, old_day, check_run_id="b")

    assert decision["retrain"] and len(state["triggers"]) == drift.MAX_REMEMBERED_TRIGGERS
    assert state["triggers"][0] == {"day": old_day.isoformat(), "run_id": "b"}
    again = drift.decide(cfg, drifted_comparison(), day=old_day, state=state, check_run_id="c")
    assert again["status"] == "already_requested"
    # fewer than the limit: nothing is dropped
    few = drift.next_state({"triggers": weekly[:3]}, decision, old_day, check_run_id="b")
    assert len(few["triggers"]) == 4


@pytest.mark.parametrize("scale", [1e100, 1e200])
def test_numeric_drift_is_seen_on_huge_values_as_on_small_ones(scale: float) -> None:
    """The variance of values past ~1e154 overflowed to inf: every value doubled read as no drift."""
    rng = np.random.default_rng(0)
    ref, cur = frame(3000, 1), frame(3000, 2)
    ref["y"], cur["y"] = rng.uniform(1, 2, 3000), rng.uniform(2, 4, 3000)  # every value doubled
    small = drift.compare(make_config(), ref, cur)["columns"]["y"]
    ref["y"], cur["y"] = ref["y"] * scale, cur["y"] * scale
    huge = drift.compare(make_config(), ref, cur)["columns"]["y"]
    assert (huge["stat_test"], huge["drifted"]) == ("wasserstein", True)
    assert huge["statistic"] == pytest.approx(small["statistic"], rel=1e-6)


def test_a_small_window_over_many_categories_is_not_drift_when_nothing_changed() -> None:
    """100 airports, 1,000 current rows: their Jensen-Shannon distance to the reference is ~0.12 for
    the same distribution, over the default threshold; the p-value test judges such a window."""
    cfg = make_config(min_rows=100, sample_rows=50_000)
    rng = np.random.default_rng(3)
    shares = 1 / np.arange(1, 101)
    shares /= shares.sum()

    def airports(n: int) -> pd.DataFrame:
        return frame(n, int(rng.integers(1 << 30))).assign(
            c=rng.choice([f"A{i}" for i in range(100)], n, p=shares)
        )

    reference = airports(20_000)
    small, large = (drift.compare(cfg, reference, airports(n))["columns"]["c"] for n in (1_000, 5_000))
    assert (small["stat_test"], small["drifted"]) == (drift.CHISQUARE, False)
    assert (large["stat_test"], large["drifted"]) == ("jensenshannon", False)
    assert large["statistic"] < cfg.drift.jensenshannon_threshold
