"""The status readers (CLI status, the "ML models" view) skip a day whose report was cut short."""

from __future__ import annotations

import datetime as dt

from mlops_tasks.config import PipelineConfig
from mlops_tasks.status import last_drift, last_gate
from mlops_tasks.storage import ObjectStore, partition_prefix


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


def test_the_last_gate_is_the_latest_window_with_a_gate_report(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    gated = partition_prefix(example_config.prefix, "reports/gate", dt.date(2013, 1, 10))
    store.put_json(gated + "run1/gate.json", {"decision": {"promote": True, "reason": "better"}})
    later = partition_prefix(example_config.prefix, "reports/gate", dt.date(2013, 1, 21))
    store.put_bytes(later + "run2/gate.html", b"<html></html>", "text/html")

    last = last_gate(store, example_config)
    assert (last["day"], last["promote"], last["run_id"]) == ("2013-01-10", True, "run1")
