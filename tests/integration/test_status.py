"""The status readers (CLI status, the "ML models" view): a day whose report was cut short is skipped,
a report of the wrong shape is an error naming it, and what they show is redacted and printable."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest

from mlops_tasks.config import PipelineConfig
from mlops_tasks.status import (
    format_status,
    json_safe,
    last_drift,
    last_gate,
    last_inference,
    redacted,
    without_credentials,
)
from mlops_tasks.storage import CorruptObjectError, ObjectStore, partition_prefix
from mlops_tasks.ui import views


def test_a_drift_check_stopped_before_its_json_leaves_the_previous_check_as_the_last(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    assert last_drift(store, example_config) is None
    done = partition_prefix(example_config.prefix, "reports/drift", dt.date(2013, 7, 1))
    store.put_json(done + "drift.json", {"decision": {"status": "drift", "retrain": True, "reasons": ["x"]}})
    cut = partition_prefix(example_config.prefix, "reports/drift", dt.date(2013, 7, 2))
    store.put_bytes(cut + "drift.html", b"<html></html>", "text/html")  # the JSON never went up

    last = last_drift(store, example_config)
    assert (last["day"], last["status"], last["retrain"]) == ("2013-07-01", "drift", True)
    assert last["report_html_uri"] is None  # 07-01's HTML was not written either


def test_the_last_drift_check_links_its_own_page_not_one_a_later_check_left(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """A later check of the day replaced drift.html and died before its drift.json: status paired the
    earlier decision with the later check's page."""
    from mlops_tasks.drift import retrain_page_name
    from mlops_tasks.storage import sha256_bytes

    prefix = partition_prefix(example_config.prefix, "reports/drift", dt.date(2013, 7, 3))
    page = b"<html>the check that decided</html>"
    sha = sha256_bytes(page)
    store.put_bytes(prefix + "drift.html", page, "text/html", metadata={"sha256": sha})
    decision = {"status": "no_drift", "retrain": False, "reasons": []}
    store.put_json(prefix + "drift.json", {"decision": decision, "report_html_sha256": sha})
    assert last_drift(store, example_config)["report_html_uri"] == store.uri(prefix + "drift.html")

    later = b"<html>a later check that died</html>"
    store.put_bytes(prefix + "drift.html", later, "text/html", metadata={"sha256": sha256_bytes(later)})
    assert last_drift(store, example_config)["report_html_uri"] is None

    # a retrain keeps its page under its checksum: that copy is still the decision's
    store.put_json(
        prefix + "drift.json", {"decision": {**decision, "retrain": True}, "report_html_sha256": sha}
    )
    store.put_bytes(prefix + retrain_page_name(sha), page, "text/html")
    assert last_drift(store, example_config)["report_html_uri"] == store.uri(prefix + retrain_page_name(sha))


def test_the_last_gate_is_the_latest_decision_written_whatever_its_window(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    gated = partition_prefix(example_config.prefix, "reports/gate", dt.date(2013, 12, 31))
    store.put_json(gated + "run1/gate.json", {"decision": {"promote": False, "reason": "worse"}})
    cut = partition_prefix(example_config.prefix, "reports/gate", dt.date(2014, 1, 21))
    store.put_bytes(cut + "run2/gate.html", b"<html></html>", "text/html")  # its JSON never went up
    assert last_gate(store, example_config)["run_id"] == "run1"
    time.sleep(1.1)  # S3 dates objects to the second
    # a retrain event asked for June (window_end 2013-06-30) after December was gated
    june = partition_prefix(example_config.prefix, "reports/gate", dt.date(2013, 6, 30))
    store.put_json(june + "run3/vs-v2/gate.json", {"decision": {"promote": True, "reason": "better"}})

    last = last_gate(store, example_config)
    assert (last["day"], last["promote"], last["run_id"]) == ("2013-06-30", True, "run3")


@pytest.mark.parametrize(
    ("area", "name", "body"),
    [
        ("reports/gate", "run1/gate.json", b"[1, 2]"),
        ("reports/gate", "run1/gate.json", b'{"decision": "promote"}'),
        ("reports/gate", "run1/gate.json", b'{"decision": {"promote": tru'),
        ("reports/drift", "drift.json", b'"drift"'),
        ("reports/drift", "drift.json", '{"status": "dérive"}'.encode("latin-1")),
    ],
    ids=["gate-list", "gate-decision-text", "gate-truncated", "drift-text", "drift-latin1"],
)
def test_a_report_of_the_wrong_shape_is_an_error_naming_the_object(
    store: ObjectStore, example_config: PipelineConfig, area: str, name: str, body: bytes
) -> None:
    key = partition_prefix(example_config.prefix, area, dt.date(2013, 7, 1)) + name
    store.put_bytes(key, body)
    read = last_gate if area == "reports/gate" else last_drift
    with pytest.raises(CorruptObjectError, match=re.escape(store.uri(key))):
        read(store, example_config)


def test_values_of_the_wrong_type_in_reports_are_shown_as_unknown_not_a_crash(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    day = dt.date(2013, 7, 1)
    drift = partition_prefix(example_config.prefix, "reports/drift", day) + "drift.json"
    store.put_bytes(
        drift, b'{"decision": {"status": "drift", "share_drifted": NaN, "reasons": [{"column": "x"}]}}'
    )
    predictions = partition_prefix(example_config.prefix, "predictions", day)
    store.put_json(predictions + "_SUCCESS", {"parts": [], "model_version": "3"})

    drift_row, inference_row = last_drift(store, example_config), last_inference(store, example_config)
    assert (drift_row["share_drifted"], drift_row["reasons"]) == (None, ["{'column': 'x'}"])
    assert (inference_row["rows"], inference_row["model_version"]) == (None, "3")
    row = {"pipeline": "p", "champion": None, "last_gate": None, "last_training": None}
    assert "2013-07-01: ? rows by v3" in format_status(
        [row | {"last_drift": drift_row, "last_inference": inference_row}]
    )


def test_status_text_shows_control_characters_as_escapes() -> None:
    """A value from the bucket must not drive the terminal (clear it, forge lines, set its title)."""
    gate = {"day": "2013-07-01", "promote": False, "reason": "worse\x1b[2J\x1b]0;pwned\x07", "run_id": "r"}
    row = {
        "pipeline": "p",
        "champion": None,
        "last_training": None,
        "last_drift": None,
        "last_inference": None,
    }
    text = format_status([row | {"last_gate": gate}])
    assert "\x1b" not in text and "\x07" not in text
    assert "worse\\x1b[2J\\x1b]0;pwned\\x07" in text


@pytest.mark.parametrize(
    ("url", "bare"),
    [
        ("http://user:p@ss@w0rd@mlflow:5000/x", "http://mlflow:5000/x"),
        ("http://user:secret@[::1]:5000", "http://[::1]:5000"),
        ("https://token@mlflow.example.com", "https://mlflow.example.com"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_credentials_are_cut_at_the_last_at_sign_of_the_host(url: str, bare: str) -> None:
    assert without_credentials(url) == bare
    assert redacted(f"API request to {url}/api failed", url) == f"API request to {bare}/api failed"
    assert views.redact({"error": [f"see {url}"]}) == {"error": [f"see {bare}"]}


def test_redaction_removes_the_password_however_quoted_and_leaves_the_host_name() -> None:
    url = "http://mlflow:p%40ss-word@mlflow:5000"
    text = "login mlflow with p@ss-word or p%40ss-word failed at host='mlflow'"
    assert redacted(text, url) == "login mlflow with *** or *** failed at host='mlflow'"


def test_json_safe_makes_non_finite_numbers_null() -> None:
    value = {"a": [float("nan"), 1.5, float("inf")], "b": {"c": -float("inf")}, "d": "x"}
    assert (
        json.dumps(json_safe(value), allow_nan=False)
        == '{"a": [null, 1.5, null], "b": {"c": null}, "d": "x"}'
    )
