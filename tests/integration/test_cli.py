"""The ``mlops-tasks`` command: clear one-line errors and non-zero exits, real S3 endpoint."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

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


def test_config_validate_gives_every_file_its_verdict_and_fails_if_any_failed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE_CONFIG.read_text().replace("epochs: 8", "epochs: zero"))
    good = tmp_path / "other.yaml"
    good.write_text(EXAMPLE_CONFIG.read_text().replace("name: flights_delay", "name: other_flights", 1))
    assert "name: other_flights" in good.read_text()

    named = cli("config", "validate", str(bad), str(good))
    directory = cli("config", "validate", env={"MLOPS_TASKS_CONFIG_DIR": str(tmp_path)})

    for result in (named, directory):
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "ok: other_flights (other_flights_training, other_flights_batch_inference, "
            "other_flights_drift_monitor)"
        ]
        [error] = result.stderr.splitlines()
        assert error.startswith("error: ") and "bad.yaml" in error and "model.epochs" in error


@pytest.mark.parametrize(
    ("expectation", "says"),
    [
        (
            {"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "dest"}},
            "Great Expectations has no expectation of that type",
        ),
        (
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "dest", "regexx": "^A"}},
            "invalid kwargs",
        ),
    ],
    ids=["typo-in-type", "unknown-kwarg"],
)
def test_config_validate_builds_the_expectations_and_names_the_file(
    tmp_path: Path, expectation: dict, says: str
) -> None:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw["validation"]["expectations"].append(expectation)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = cli("config", "validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {bad}: ")
    assert "validation.expectations[1]" in result.stderr and says in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["lineage", "flights_delay"],
        ["model", "rollback", "flights_delay"],
        ["seed", "flights_delay"],
        ["data", "checkout", "flights_delay", "0" * 32, "restored"],
    ],
    ids=lambda c: c[0] if c[0] not in ("model", "data") else "-".join(c[:2]),
)
def test_an_undefined_connection_is_one_line_saying_how_to_define_it(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)
    result = cli(*command, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: pipeline 'flights_delay': the Airflow connection 'mlops_")
    assert "is not defined: set AIRFLOW_CONN_MLOPS_" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_a_connection_variable_airflow_cannot_parse_is_named_as_set_not_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_S3", '{"conn_type": "aws", "extra": ')  # cut short
    result = cli("status", "flights_delay", cwd=tmp_path)
    assert result.returncode == 1
    assert "AIRFLOW_CONN_MLOPS_S3 is set, but Airflow cannot read it as the connection 'mlops_s3'" in (
        result.stderr
    )
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.fixture(params=[401, 403, 404])
def refusing_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """An HTTP server that answers every request with one error status and an HTML page, as a
    proxy or another service at a wrong MLflow URL does."""
    status = request.param

    class Refuse(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = b"<html><body><h1>Nope</h1>\n<p>not here</p></body></html>"
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


def test_model_rollback_against_a_server_answering_an_error_is_one_line(
    refusing_server: tuple[str, int],
) -> None:
    url, status = refusing_server
    env = stack.connection_env(f"http://127.0.0.1:{stack.free_port()}", url)
    result = cli("model", "rollback", "flights_delay", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: pipeline 'flights_delay': the MLflow server {url} (Airflow connection 'mlops_mlflow') "
        f"answered HTTP {status}: "
    )
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_status_against_an_mlflow_server_answering_an_error_is_one_line(
    s3_endpoint: str, refusing_server: tuple[str, int]
) -> None:
    """With basic-auth credentials in the tracking URI, as MLflow quotes it in its errors: the error
    names the server without them."""
    make_store(s3_endpoint, "mlops")
    url, status = refusing_server
    with_login = url.replace("http://", "http://cli-user:cli-secret-pw@")
    result = cli("status", "flights_delay", env=stack.connection_env(s3_endpoint, with_login))
    assert result.returncode == 1
    assert (
        f"the MLflow server {url} (Airflow connection 'mlops_mlflow') answered HTTP {status}" in result.stderr
    )
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "cli-secret-pw" not in result.stderr and "cli-user" not in result.stderr


def test_seed_lands_example_days_through_the_connection(s3_endpoint: str, mlflow_server: str) -> None:
    make_store(s3_endpoint, "mlops")
    env = stack.connection_env(s3_endpoint, mlflow_server)
    result = cli("seed", "flights_delay", "--start", "2013-05-01", "--end", "2013-05-02", env=env)
    assert result.returncode == 0, result.stderr
    assert "seeded 2 day(s)" in result.stdout
    store = make_store(s3_endpoint, "mlops")
    assert store.exists("flights_delay/landing/date=2013-05-02/flights.csv")


def test_seed_lands_a_sklearn_data_set_on_the_pipelines_days_and_refuses_it_the_flights_example(
    s3_endpoint: str, mlflow_server: str, tmp_path: Path
) -> None:
    """The walkthrough's pipeline: seeded without dates, its rows land on its start_date..end_date
    (they landed over 2013 before); the flights example, whose columns it lacks, is refused."""
    import shutil

    shutil.copy(REPO / "configs" / "examples" / "wine_cultivar.yaml", tmp_path)
    bucket = make_store(s3_endpoint).settings.bucket
    config = tmp_path / "wine_cultivar.yaml"
    config.write_text(config.read_text().replace("bucket: mlops ", f"bucket: {bucket} ", 1))
    env = {**stack.connection_env(s3_endpoint, mlflow_server), "MLOPS_TASKS_CONFIG_DIR": str(tmp_path)}

    landed = cli("seed", "wine_cultivar", "--sklearn-dataset", "wine", env=env)
    flights = cli("seed", "wine_cultivar", env=env)

    assert landed.returncode == 0, landed.stderr
    assert landed.stdout.startswith("seeded 30 day(s), 178 rows")
    days = make_store(s3_endpoint, bucket).list_partition_dates("wine_cultivar/landing/")
    assert (days[0].isoformat(), days[-1].isoformat(), len(days)) == ("2024-01-01", "2024-01-30", 30)
    assert flights.returncode == 1
    assert (
        "cannot seed 'wine_cultivar' with the flights example: its key column(s) ['row_id']" in flights.stderr
    )


def test_data_checkout_takes_a_version_as_the_demo_prints_it(
    s3_endpoint: str, mlflow_server: str, tmp_path: Path
) -> None:
    import datetime as dt

    import pandas as pd

    from mlops_tasks.config import load_config
    from mlops_tasks.ingestion import to_parquet_bytes
    from mlops_tasks.storage import partition_prefix, publish_manifest, write_part
    from mlops_tasks.versioning import create_data_version

    store, cfg, day = make_store(s3_endpoint, "mlops"), load_config(EXAMPLE_CONFIG), dt.date(2013, 11, 30)
    partition = partition_prefix(cfg.prefix, "curated", day)
    frame = pd.DataFrame({"dep_delay": [1.0, 2.0], "_day": day.isoformat()})
    part = write_part(store, partition, "data.parquet", to_parquet_bytes(frame), rows=2)
    publish_manifest(store, partition, [part], day=day.isoformat())
    version = create_data_version(store, cfg, [day])["data_version"]
    env = stack.connection_env(s3_endpoint, mlflow_server)
    result = cli("data", "checkout", "flights_delay", version[:12], "restored", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"restored data version {version}: 1 file(s)" in result.stdout
    restored = tmp_path / "restored" / "date=2013-11-30" / part["key"].rsplit("/", 1)[-1]
    assert restored.read_bytes() == store.get_bytes(part["key"])


@pytest.mark.parametrize(
    ("mode", "endpoint", "why"),
    [
        (0o644, "http://127.0.0.1:{port}", "it is not an owner-only file of this user"),
        (0o600, "https://s3.attacker.example", "AIRFLOW_CONN_MLOPS_S3 points at s3.attacker.example"),
    ],
    ids=["came-with-a-checkout", "remote-endpoint"],
)
def test_a_connections_file_the_local_stack_did_not_write_is_ignored(
    mode: int, endpoint: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A .stack/connections.env that came with a checkout or an archive would otherwise send the
    user's ambient AWS credentials to its endpoint (boto3's fallback for a connection without keys)."""
    for name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)
    state = tmp_path / ".stack"
    state.mkdir()
    env = stack.connection_env(
        endpoint.format(port=stack.free_port()), f"http://127.0.0.1:{stack.free_port()}"
    )
    (state / "connections.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (state / "connections.env").chmod(mode)

    result = cli("lineage", "flights_delay", env={"MLOPS_TASKS_STACK_DIR": str(state)}, cwd=tmp_path)
    assert result.returncode == 1
    ignored, error = result.stderr.splitlines()
    assert ignored.startswith(f"mlops-tasks: ignoring {state / 'connections.env'}: {why}"), ignored
    assert "is not defined: set AIRFLOW_CONN_MLOPS_" in error


def test_the_local_stack_s_own_connections_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)
    state = tmp_path / ".stack"
    env = stack.connection_env(
        f"http://127.0.0.1:{stack.free_port()}", f"http://localhost:{stack.free_port()}"
    )
    from mlops_tasks.cli import stack_connections

    with stack_connections(env, state):
        result = cli("lineage", "flights_delay", env={"MLOPS_TASKS_STACK_DIR": str(state)}, cwd=tmp_path)
    assert result.returncode == 1
    assert "ignoring" not in result.stderr
    assert "is not reachable" in result.stderr, result.stderr


def test_unreachable_object_store_is_a_clear_error_not_a_traceback(mlflow_server: str) -> None:
    env = stack.connection_env(f"http://127.0.0.1:{stack.free_port()}", mlflow_server)
    started = time.monotonic()
    result = cli("seed", "flights_delay", "--start", "2013-05-01", "--end", "2013-05-01", env=env)
    # told within seconds of starting (a task's 8 attempts back off for about a minute first)
    assert time.monotonic() - started < 30
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


def test_a_model_version_that_is_not_a_number_is_named_before_anything_is_read() -> None:
    result = cli("lineage", "flights_delay", "latest")
    assert result.returncode == 2
    assert "'latest' is not a model version number (e.g. 3 or v3)" in result.stderr


@contextmanager
def serving_up(state: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlops-tasks up --state-dir state *options` until it serves; yields its output up to then
    (stderr included), and stops it with Ctrl-C (SIGINT) asserting that no process is left."""
    import signal

    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlops-tasks"), "up", *options, "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        yield "".join(lines)
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


def test_up_serves_until_interrupted_then_stops_every_process(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    with serving_up(state, "--no-airflow", "--no-seed") as text:
        assert "IN-MEMORY and EPHEMERAL" in text and "MLflow" in text, text
        assert (state / "connections.env").stat().st_mode & 0o777 == 0o600
    # Left behind, it pointed later commands at dead ports ("not reachable") instead of "not defined".
    assert not (state / "connections.env").exists()


def config_dir_with(tmp_path: Path, **files: str) -> Path:
    """A config directory holding ``files`` (name -> YAML text)."""
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, text in files.items():
        (configs / name).write_text(text)
    return configs


BROKEN = (
    EXAMPLE_CONFIG.read_text()
    .replace("name: flights_delay", "name: other")
    .replace("epochs: 8", "epochs: -1")
)


def test_up_skips_an_invalid_config_with_a_warning_and_serves_the_others(tmp_path: Path) -> None:
    """As in Airflow (an error DAG for it, the others scheduled), one invalid config must not stop the
    stack: `up` used to fail on it before serving, or seeding, any pipeline."""
    configs = config_dir_with(
        tmp_path, **{"flights_delay.yaml": EXAMPLE_CONFIG.read_text(), "other.yaml": BROKEN}
    )
    with serving_up(tmp_path / "stack", "--no-airflow", env={"MLOPS_TASKS_CONFIG_DIR": str(configs)}) as text:
        assert "Press Ctrl-C" in text, text  # served, after seeding flights_delay
        warning = next(line for line in text.splitlines() if "Skipping a pipeline config" in line)
        assert f"{configs / 'other.yaml'}: invalid pipeline config: field 'model.epochs'" in warning


def test_status_of_every_pipeline_reports_an_invalid_config_and_shows_the_others(
    s3_endpoint: str, mlflow_server: str, tmp_path: Path
) -> None:
    """One broken config made `status` fail before showing any pipeline."""
    make_store(s3_endpoint, "mlops")
    configs = config_dir_with(
        tmp_path, **{"flights_delay.yaml": EXAMPLE_CONFIG.read_text(), "other.yaml": BROKEN}
    )
    env = {**stack.connection_env(s3_endpoint, mlflow_server), "MLOPS_TASKS_CONFIG_DIR": str(configs)}
    result = cli("status", "--json", env=env)
    assert result.returncode == 1
    assert [row["pipeline"] for row in json.loads(result.stdout)] == ["flights_delay"]
    assert result.stderr.startswith(f"error: {configs / 'other.yaml'}: invalid pipeline config: field ")
    assert result.stderr.rstrip().endswith("(left out of the status)")


def test_up_refuses_when_no_config_is_valid_before_starting_anything(tmp_path: Path) -> None:
    configs = config_dir_with(tmp_path, **{"other.yaml": BROKEN})
    state = tmp_path / "stack"
    result = cli(
        "up", "--no-airflow", "--state-dir", str(state), env={"MLOPS_TASKS_CONFIG_DIR": str(configs)}
    )
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: no pipeline config in {configs} can run: {configs / 'other.yaml'}"
    )
    assert not (state / "logs").exists()  # no service was started


def test_demo_refuses_an_invalid_flights_delay_config_before_starting_the_stack(tmp_path: Path) -> None:
    broken = EXAMPLE_CONFIG.read_text().replace("epochs: 8", "epochs: -1")
    configs = config_dir_with(tmp_path, **{"flights_delay.yaml": broken})
    state = tmp_path / "demo"
    result = cli("demo", "--state-dir", str(state), env={"MLOPS_TASKS_CONFIG_DIR": str(configs)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {configs / 'flights_delay.yaml'}: invalid pipeline config")
    assert not state.exists()


@pytest.mark.parametrize(
    ("dates", "says"),
    [
        (["--start", "2013-13-01"], "argument --start: --start: '2013-13-01' is not a YYYY-MM-DD date"),
        (
            ["--start", "2013-05-03", "--end", "2013-05-01"],
            "seed: --start 2013-05-03 is after --end 2013-05-01",
        ),
    ],
    ids=["not-a-date", "start-after-end"],
)
def test_seed_names_a_bad_date_option_before_touching_the_store(
    dates: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(name)  # no connection: the dates are checked first
    result = cli("seed", "flights_delay", *dates, cwd=tmp_path)
    assert result.returncode != 0 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "connection" not in result.stderr


def test_a_missing_config_directory_is_named_not_an_empty_status(tmp_path: Path) -> None:
    result = cli("status", env={"MLOPS_TASKS_CONFIG_DIR": str(tmp_path / "typo")})
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'typo'}: pipeline config directory does not exist")
    assert "MLOPS_TASKS_CONFIG_DIR" in result.stderr and "Traceback" not in result.stderr
