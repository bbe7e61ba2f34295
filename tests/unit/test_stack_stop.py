"""Stopping a stack service ends every process of its group, not only the main one; a service that
died by other hands (a fault test's ``kill -9``) is left as it is."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mlops_tasks.stack import Service, start_process


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def service_with_a_stray(tmp_path: Path) -> tuple[Service, int]:
    """A main process whose group holds a member that ignores SIGTERM, like a LocalExecutor worker
    busy forwarding SIGTERM to its task when the scheduler exits. Returns the service and the member."""
    pid_file = tmp_path / "stray.pid"
    script = f"(trap '' TERM; exec sleep 300) & echo $! > {pid_file}; wait"
    service = start_process("stray", ["bash", "-c", script], "", tmp_path, ready=pid_file.exists)
    while not pid_file.read_text().strip():
        time.sleep(0.05)
    stray = int(pid_file.read_text())
    assert running(stray)
    return service, stray


def test_stop_ends_a_group_member_that_outlives_the_main_process(tmp_path: Path) -> None:
    service, stray = service_with_a_stray(tmp_path)

    service.stop(timeout=10)

    deadline = time.monotonic() + 5
    while running(stray) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(stray), f"process {stray} of the stopped service's group still runs"


def test_stop_of_a_service_killed_by_other_hands_leaves_its_group_alone(tmp_path: Path) -> None:
    service, stray = service_with_a_stray(tmp_path)
    try:
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(5)

        service.stop(timeout=10)

        assert running(stray)
    finally:
        os.kill(stray, signal.SIGKILL)


def test_the_stack_serves_the_config_directory_every_command_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`MLOPS_TASKS_CONFIG_DIR=... mlops-tasks up` must schedule those pipelines, not the repo's."""
    from mlops_tasks.config import CONFIG_DIR_ENV
    from mlops_tasks.stack import LocalStack

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    assert LocalStack(state_dir=tmp_path / "state").config_dir == tmp_path.resolve()
    monkeypatch.delenv(CONFIG_DIR_ENV)
    assert (
        LocalStack(state_dir=tmp_path / "state").config_dir
        == (Path(__file__).parents[2] / "configs").resolve()
    )


def test_the_stack_serves_the_valid_configs_and_warns_of_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the DAG folder does: one config that cannot run must not stop the other pipelines (`up` and
    `make demo` used to fail on it), unless no config can run."""
    from mlops_tasks.config import ConfigError
    from mlops_tasks.stack import LocalStack

    example = (Path(__file__).parents[2] / "configs" / "flights_delay.yaml").read_text()
    (tmp_path / "flights_delay.yaml").write_text(example)
    (tmp_path / "other.yaml").write_text(
        example.replace("name: flights_delay", "name: other").replace("owner: mlops", "owner: [x]")
    )
    local = LocalStack(state_dir=tmp_path / "state", config_dir=tmp_path)
    with caplog.at_level("WARNING", logger="mlops_tasks.stack"):
        assert [cfg.name for cfg in local._configs(warn=True)] == ["flights_delay"]
    (warning,) = caplog.messages
    assert f"{tmp_path / 'other.yaml'}: invalid pipeline config: field 'owner'" in warning
    assert "Skipping a pipeline config, the other pipelines run" in warning

    (tmp_path / "flights_delay.yaml").unlink()
    with pytest.raises(
        ConfigError, match=rf"no pipeline config in {tmp_path} can run: {tmp_path}/other\.yaml"
    ):
        local._configs()
