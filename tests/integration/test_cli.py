"""The ``mlops-tasks`` command: clear one-line errors and non-zero exits, real S3 endpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_tasks import stack
from tests.conftest import EXAMPLE_CONFIG, REPO, make_store


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "mlops-tasks"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, "MLOPS_TASKS_STACK_DIR": "/nonexistent", **(env or {})},
    )


def test_config_validate_accepts_the_shipped_configs() -> None:
    result = cli("config", "validate")
    assert result.returncode == 0, result.stderr
    assert "ok: flights_delay" in result.stdout


def test_invalid_config_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE_CONFIG.read_text().replace("epochs: 8", "epochs: zero"))
    result = cli("config", "validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "bad.yaml" in result.stderr and "model.epochs" in result.stderr
    assert "Traceback" not in result.stderr


def test_seed_lands_example_days_through_the_connection(s3_endpoint: str, mlflow_server: str) -> None:
    make_store(s3_endpoint, "mlops")
    env = stack.connection_env(s3_endpoint, mlflow_server)
    result = cli("seed", "flights_delay", "--start", "2013-05-01", "--end", "2013-05-02", env=env)
    assert result.returncode == 0, result.stderr
    assert "seeded 2 day(s)" in result.stdout
    store = make_store(s3_endpoint, "mlops")
    assert store.exists("flights_delay/landing/date=2013-05-02/flights.csv")


def test_unreachable_object_store_is_a_clear_error_not_a_traceback(mlflow_server: str) -> None:
    env = stack.connection_env(f"http://127.0.0.1:{stack.free_port()}", mlflow_server)
    result = cli("seed", "flights_delay", "--start", "2013-05-01", "--end", "2013-05-01", env=env)
    assert result.returncode == 1
    assert "is not reachable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", [["lineage", "flights_delay", "999"], ["data", "checkout", "flights_delay", "0" * 32, "x"]]
)
def test_unknown_records_are_reported_clearly(
    s3_endpoint: str, mlflow_server: str, command: list[str], tmp_path: Path
) -> None:
    make_store(s3_endpoint, "mlops")
    result = cli(*command, env=stack.connection_env(s3_endpoint, mlflow_server), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr


def test_up_serves_until_interrupted_then_stops_every_process(tmp_path: Path) -> None:
    import signal
    import time

    state = tmp_path / "stack"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlops-tasks"),
            "up",
            "--no-airflow",
            "--no-seed",
            "--state-dir",
            str(state),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        text = "".join(lines)
        assert "IN-MEMORY and EPHEMERAL" in text and "MLflow" in text, text
        assert (state / "connections.env").stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) in (0, 130)
        children = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True).stdout.split()
        assert children == [], f"processes left running: {children}"
    finally:  # a failed run leaves no stack behind: on SIGTERM the stack stops every service
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
