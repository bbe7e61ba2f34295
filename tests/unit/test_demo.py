"""The demo's state: every run starts from nothing, and never under a demo still running."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_tasks import demo


def test_a_demo_starts_from_an_empty_state_and_refuses_one_still_running(tmp_path: Path) -> None:
    """A second `make demo` met the first's Airflow database: its manual runs of the same dates
    (HTTP 409 on the first trigger) and its registered model versions."""
    state = tmp_path / ".demo"
    (state / "airflow").mkdir(parents=True)
    (state / "mlflow.db").write_text("the first demo's registry")

    lock = demo.fresh_state(state)

    assert not state.exists()
    with pytest.raises(demo.DemoFailed, match=r"another demo is running on .*\.demo .*stop it first"):
        demo.fresh_state(state)
    state.mkdir()
    (state / "mlflow.db").write_text("the running demo's registry")
    with pytest.raises(demo.DemoFailed):
        demo.fresh_state(state)
    assert (state / "mlflow.db").exists()  # left alone while that demo runs
    lock.close()
    demo.fresh_state(state).close()
    assert not state.exists()
