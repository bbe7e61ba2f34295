"""The embedded local stack: real services as child processes on loopback, no Docker needed.

* S3: moto's server mode (a real HTTP S3 endpoint). It keeps objects in memory: the stack is
  ephemeral by design, and ``mlops-tasks up`` says so. Use MinIO (docker-compose.yaml) to keep data.
* MLflow: ``mlflow server`` with a SQLite backend store and artifacts proxied into the S3 bucket.
* Airflow 3 (optional): api-server, scheduler, dag-processor and triggerer as separate processes,
  each with its own log, so one can be restarted alone (:class:`LocalStack`).

The same launchers serve the test suite, so tests run against exactly what users run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_tasks.config import config_dir as _config_dir
from mlops_tasks.storage import ObjectStore, S3Settings

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig

log = logging.getLogger(__name__)

LOCAL_ACCESS_KEY = "mlops-local"
LOCAL_SECRET_KEY = "mlops-local-secret"  # the throwaway local stack's own credential


class StackError(RuntimeError):
    """A local service failed to start; the message names it and points at its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Service:
    """A child process serving on a loopback port, with its log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    signalled: bool = field(default=False, init=False)  # by terminate(): stop() then clears its group

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """Ask the whole process group to exit (SIGTERM) without waiting."""
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.signalled = True
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; then SIGKILL what is left of the group.

        A process of the group can outlive the main one: SIGTERM also ends the scheduler's forkserver,
        after which the scheduler takes every executor worker for dead and exits without stopping the
        one that was forwarding the signal to its task; that worker would then wait for work forever.
        A service that died by other hands is left as it is (its group too): stop() is then a no-op.
        """
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        if self.signalled:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_process(
    name: str,
    argv: list[str],
    url: str,
    log_dir: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> Service:
    """Start ``argv`` in its own process group and wait until ``ready()``; fail with its log tail."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {**os.environ, **(env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    service = Service(name, url, process, log_path, env or {})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise StackError(
                f"{name} exited with code {process.returncode}; log {log_path}:\n{service.log_tail()}"
            )
        if ready():
            return service
        time.sleep(0.25)
    service.stop()
    raise StackError(
        f"{name} did not become ready within {timeout:.0f}s; log {log_path}:\n{service.log_tail()}"
    )


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    return check


def s3_env(endpoint_url: str) -> dict[str, str]:
    """Environment that points boto3/s3fs clients (MLflow server, DVC) at the local endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint_url,
        "MLFLOW_S3_ENDPOINT_URL": endpoint_url,
    }


def start_s3(log_dir: Path, port: int | None = None) -> Service:
    """moto's S3 server on 127.0.0.1 (in-memory)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return start_process("s3", argv, url, log_dir, http_ok(url + "/moto-api/"), timeout=60)


def start_mlflow(
    log_dir: Path, s3_endpoint: str, bucket: str, backend_uri: str | None = None, port: int | None = None
) -> Service:
    """``mlflow server`` on 127.0.0.1: SQLite (or the given) backend store, artifacts in ``s3://bucket/mlflow``."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    backend_uri = backend_uri or f"sqlite:///{(log_dir / 'mlflow.db').resolve()}"
    argv = [
        _bin("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        f"s3://{bucket}/mlflow",
        "--workers",
        "1",
    ]
    env = {**s3_env(s3_endpoint), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return start_process("mlflow", argv, url, log_dir, http_ok(url + "/health"), env=env, timeout=120)


def connection_env(
    s3_endpoint: str, mlflow_url: str, s3_conn_id: str = "mlops_s3", mlflow_conn_id: str = "mlops_mlflow"
) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` variables for the local stack (the only place its credentials appear)."""
    s3 = {
        "conn_type": "aws",
        "login": LOCAL_ACCESS_KEY,
        "password": LOCAL_SECRET_KEY,
        "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    mlflow = {"conn_type": "mlflow", "host": mlflow_url, "extra": {"ui_url": mlflow_url}}
    return {
        f"AIRFLOW_CONN_{s3_conn_id.upper()}": json.dumps(s3),
        f"AIRFLOW_CONN_{mlflow_conn_id.upper()}": json.dumps(mlflow),
    }


# The LocalExecutor's workers fork from a server process that imported the stage libraries once,
# so each task starts at its work instead of importing pandas, GX, torch, ... (airflow/preload.py).
PRELOAD_SETTINGS = {
    "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
    "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": "mlops_tasks.airflow.preload",
}
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".stack"
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
UI_USER = "admin"


def _local_secret(path: Path, nbytes: int = 24) -> str:
    """A random secret generated once per state dir (owner-only file), so restarts keep logins and tokens."""
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` owner-only from the start (no moment when others may read it) and write ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _get_json(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.loads(resp.read())


def airflow_health(base_url: str) -> dict[str, str]:
    """Component -> status from the api-server's ``/api/v2/monitor/health`` ({} while it is not up)."""
    try:
        body = _get_json(base_url + "/api/v2/monitor/health")
    except (OSError, ValueError):
        return {}
    return {name: (info or {}).get("status") or "unknown" for name, info in body.items()}


class LocalStack:
    """S3 endpoint + MLflow server (+ optionally the four Airflow 3 components), as child processes.

    Use it as a context manager, or call :meth:`start` / :meth:`stop`; every process it started is
    stopped on exit, on exceptions, and on SIGINT/SIGTERM (the handlers are installed by
    :meth:`start` when called from the main thread). Ports default to free ones; the CLI passes fixed
    ports. S3 is moto's in-memory server, so each start begins with empty buckets; the MLflow store
    points into it and is therefore reset at each start too. Airflow's SQLite database is kept.

    Airflow runs with LocalExecutor on SQLite (what ``airflow standalone`` uses; Airflow 3 accepts it)
    and SimpleAuthManager, one ``admin`` user whose password is generated once per state dir.
    ``airflow_overrides`` replaces any of those Airflow settings (e.g. CeleryExecutor on PostgreSQL),
    ``mlflow_backend_uri`` the MLflow store (default: SQLite, reset at each start).
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        airflow: bool = False,
        config_dir: Path | str | None = None,
        dags_dir: Path | str | None = None,
        plugins_dir: Path | str | None = None,
        s3_port: int | None = None,
        mlflow_port: int | None = None,
        airflow_port: int | None = None,
        timeout: float = 180,
        airflow_overrides: dict[str, str] | None = None,
        mlflow_backend_uri: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR).resolve()
        self.log_dir = self.state_dir / "logs"
        self.airflow_home = self.state_dir / "airflow"
        self.with_airflow = airflow
        # $MLOPS_TASKS_CONFIG_DIR as every other command reads it; the stack hands this to Airflow.
        self.config_dir = Path(config_dir or _config_dir()).resolve()
        self.dags_dir = Path(dags_dir or REPO_ROOT / "dags").resolve()
        self.plugins_dir = Path(plugins_dir or REPO_ROOT / "plugins").resolve()
        self.timeout = timeout
        self.airflow_overrides = dict(airflow_overrides or {})
        self.mlflow_backend_uri = mlflow_backend_uri
        self._ports = {"s3": s3_port, "mlflow": mlflow_port, "airflow": airflow_port or free_port()}
        self.services: dict[str, Service] = {}
        self.buckets: list[str] = []
        self.pipelines: list[PipelineConfig] = []  # the configs served, set by start()
        self._previous_handlers: dict[int, Any] = {}

    # -- addresses and settings ---------------------------------------------------------------------

    @property
    def s3_url(self) -> str:
        return self.services["s3"].url

    @property
    def mlflow_url(self) -> str:
        return self.services["mlflow"].url

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['airflow']}"

    @property
    def airflow_base_url(self) -> str:
        """Where Airflow's UI and API answer: ``[api] base_url``, which may add a path (a proxy's)."""
        return self.airflow_overrides.get("AIRFLOW__API__BASE_URL", self.airflow_url).rstrip("/")

    @property
    def ui_login(self) -> tuple[str, str]:
        """(user, password) of the Airflow UI admin."""
        return UI_USER, json.loads(self._passwords_file.read_text())[UI_USER]

    @property
    def _passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json"

    def _configs(self, warn: bool = False) -> list[PipelineConfig]:
        """The pipelines the stack serves: the configs that become DAGs (:func:`config.load_each`).
        One that cannot (invalid, or clashing with another) is skipped, as the DAG folder makes it an
        error DAG and runs the others; a :class:`ConfigError` when no config is valid. None (default
        connection ids and bucket) without a config directory, e.g. an install without the repo's
        configs/. ``warn``: log a warning naming each skipped file and why."""
        from mlops_tasks.config import ConfigError, config_paths, load_each

        try:
            paths = config_paths(self.config_dir)
        except ConfigError:
            return []
        configs: list[PipelineConfig] = []
        errors: list[ConfigError] = []
        for _, loaded in load_each(paths):
            if isinstance(loaded, ConfigError):
                errors.append(loaded)
            else:
                configs.append(loaded)
        if errors and not configs:
            raise ConfigError(
                f"no pipeline config in {self.config_dir} can run: " + "; ".join(str(e) for e in errors)
            )
        if warn:
            for error in errors:
                log.warning(
                    "Skipping a pipeline config, the other pipelines run (in Airflow it is an "
                    "mlops_config_error_* DAG saying why): %s",
                    error,
                )
        return configs

    def connection_env(self) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` for every connection id the pipeline configs name."""
        env: dict[str, str] = {}
        for cfg in self._configs():
            env |= connection_env(
                self.s3_url, self.mlflow_url, cfg.storage.connection_id, cfg.mlflow.connection_id
            )
        return env or connection_env(self.s3_url, self.mlflow_url)

    def store(self, bucket: str = "mlops") -> ObjectStore:
        """An :class:`ObjectStore` on one of the stack's buckets (e.g. to seed the landing area)."""
        return ObjectStore(
            S3Settings(
                bucket=bucket,
                endpoint_url=self.s3_url,
                aws_access_key_id=LOCAL_ACCESS_KEY,
                aws_secret_access_key=LOCAL_SECRET_KEY,
            )
        )

    def airflow_env(self) -> dict[str, str]:
        """Environment for Airflow processes and ``airflow`` CLI calls against this stack.

        Tasks reach S3 and MLflow only through the connections, exactly as under docker-compose
        (no AWS_* variables), so a task that bypasses its hook fails here and not first in production.
        """
        return {**self.connection_env(), **self._airflow_settings()}

    def _airflow_settings(self) -> dict[str, str]:
        home = self.airflow_home
        secrets_dir = home / "secrets"
        return {
            "AIRFLOW_HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLOPS_TASKS_CONFIG_DIR": str(self.config_dir),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "MALLOC_ARENA_MAX": "2",  # as the image sets it (Dockerfile: bounded memory of scoring)
            # Tasks spend much of their time waiting on S3, MLflow and the Airflow API, not on the CPU:
            # four at a time keep two cores busy (make demo).
            "AIRFLOW__CORE__PARALLELISM": "4",
            **PRELOAD_SETTINGS,
            # A task's supervisor can notice the task's exit up to this interval late (it sleeps in
            # select() once the task has closed its sockets): one task in six kept its worker 5 s
            # longer. 1 s instead of 5 costs one heartbeat per second per running task.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_dir),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_dir),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self._passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.airflow_url,
            "AIRFLOW__API__SECRET_KEY": _local_secret(secrets_dir / "api_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _local_secret(secrets_dir / "jwt_secret"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # Waiting OpenMP threads sleep instead of spinning: on a busy 2-core worker spinning made a
            # torch training step ~75x slower (~1.5 s instead of ~20 ms, docs/benchmarks.md).
            "OMP_WAIT_POLICY": "PASSIVE",
            **self.airflow_overrides,
        }

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        """Start every service and wait until each answers; on any failure stop what was started.

        ``airflow db migrate`` runs while the MLflow server starts: the two are independent and
        each takes seconds of CPU, so overlapping them shortens ``up``.
        """
        self._install_signal_handlers()
        try:
            self.pipelines = configs = self._configs(warn=True)
            self.services["s3"] = start_s3(self.log_dir, self._ports["s3"])
            self.buckets = sorted({"mlops", *(cfg.storage.bucket for cfg in configs)})
            for bucket in self.buckets:
                self.store(bucket).ensure_bucket()
            migrate = self._begin_airflow_migrate() if self.with_airflow else None
            mlflow_db = self.state_dir / "mlflow.db"
            mlflow_db.unlink(missing_ok=True)  # its artifacts lived in the previous, in-memory S3
            self.services["mlflow"] = start_mlflow(
                self.log_dir,
                self.s3_url,
                configs[0].storage.bucket if configs else "mlops",
                backend_uri=self.mlflow_backend_uri or f"sqlite:///{mlflow_db}",
                port=self._ports["mlflow"],
            )
            if migrate is not None:
                self._finish_airflow_migrate(migrate)
                env = self.airflow_env()
                for component in AIRFLOW_COMPONENTS:
                    self._start_airflow_component(component, env)
                self.wait_airflow_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _begin_airflow_migrate(self) -> Service:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        if not self._passwords_file.exists():
            _write_private(self._passwords_file, json.dumps({UI_USER: secrets.token_urlsafe(12)}))
        argv = [_bin("airflow"), "db", "migrate"]
        migrate = start_process(
            "airflow-db-migrate", argv, "", self.log_dir, lambda: True, env=self._airflow_settings()
        )
        self.services[migrate.name] = migrate  # so that stop() ends it if a later step fails
        return migrate

    def _finish_airflow_migrate(self, migrate: Service) -> None:
        try:
            code = migrate.process.wait(self.timeout)
        except subprocess.TimeoutExpired:
            code = None
        del self.services[migrate.name]
        if code != 0:
            migrate.stop()
            raise StackError(
                f"airflow db migrate failed (exit {code}); log {migrate.log_path}:\n{migrate.log_tail()}"
            )

    def _start_airflow_component(self, component: str, env: dict[str, str]) -> None:
        argv = [_bin("airflow"), component]
        if component == "api-server":
            argv += ["--host", "127.0.0.1", "--port", str(self._ports["airflow"]), "--workers", "1"]
        # Started without waiting: the four import Airflow in parallel; wait_airflow_healthy() checks them.
        self.services[component] = start_process(
            f"airflow-{component}", argv, self.airflow_url, self.log_dir, lambda: True, env=env
        )

    def wait_airflow_healthy(self) -> None:
        """Block until the api-server reports its database, scheduler, triggerer and dag-processor
        healthy; fail naming the component that is not, with its log tail."""
        expected = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        deadline = time.monotonic() + self.timeout
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            for component in AIRFLOW_COMPONENTS:
                service = self.services[component]
                if not service.alive():
                    raise StackError(
                        f"airflow {component} exited with code {service.process.returncode}; "
                        f"log {service.log_path}:\n{service.log_tail()}"
                    )
            health = airflow_health(self.airflow_url)
            if health and all(health.get(name) == "healthy" for name in expected):
                return
            time.sleep(0.5)
        unhealthy = [name for name in expected if health.get(name) != "healthy"] or ["api-server"]
        raise StackError(
            f"Airflow did not become healthy within {self.timeout:.0f}s (not healthy: "
            f"{', '.join(unhealthy)}; last health {health}); logs in {self.log_dir}"
        )

    def api_token(self) -> str:
        """A bearer token of the UI admin for the Airflow REST API (``/api/v2``)."""
        user, password = self.ui_login
        request = urllib.request.Request(
            self.airflow_base_url + "/auth/token",
            data=json.dumps({"username": user, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())["access_token"]

    def wait_dags_parsed(self, timeout: float = 90) -> list[str]:
        """Wait until the dag-processor has recorded a DAG or an import error for every file of the
        DAGs folder that may define DAGs (Airflow's heuristic: mentions both "airflow" and "dag"),
        so the UI and ``airflow dags list-import-errors`` reflect the folder. Returns the files still
        unaccounted for at the timeout (e.g. a file that defines no DAG), [] when all were parsed."""
        candidates = {
            str(path.relative_to(self.dags_dir))
            for path in self.dags_dir.rglob("*.py")
            if all(word in path.read_bytes().lower() for word in (b"airflow", b"dag"))
        }
        token = self.api_token()
        deadline = time.monotonic() + timeout
        while True:
            dags = _get_json(self.airflow_url + "/api/v2/dags?limit=1000", token)["dags"]
            errors = _get_json(self.airflow_url + "/api/v2/importErrors?limit=1000", token)
            seen = {d["relative_fileloc"] for d in dags} | {e["filename"] for e in errors["import_errors"]}
            pending = sorted(candidates - seen)
            if not pending or time.monotonic() > deadline:
                return pending
            time.sleep(1)

    def restart(self, component: str) -> None:
        """Stop one Airflow component if it runs (e.g. the dag-processor after changing plugins), and
        start it."""
        if component not in AIRFLOW_COMPONENTS or not self.with_airflow:
            raise ValueError(f"no Airflow component '{component}' in this stack; known: {AIRFLOW_COMPONENTS}")
        if component in self.services:
            self.services.pop(component).stop()
        self._start_airflow_component(component, self.airflow_env())
        self.wait_airflow_healthy()

    def wait(self, poll: float = 1.0) -> None:
        """Block while every service runs (``mlops-tasks up``); raise when one of them dies."""
        while True:
            for service in self.services.values():
                if not service.alive():
                    raise StackError(
                        f"{service.name} exited with code {service.process.returncode}; "
                        f"log {service.log_path}:\n{service.log_tail()}"
                    )
            time.sleep(poll)

    def stop(self) -> None:
        """Stop every process this stack started; safe to call twice. Airflow's components are
        signalled together (each takes seconds to shut down), then MLflow, then S3 last."""
        airflow = [self.services.pop(n) for n in list(self.services) if n not in ("s3", "mlflow")]
        for service in airflow:
            service.terminate()
        for service in [*airflow, *(self.services.pop(n) for n in ("mlflow", "s3") if n in self.services)]:
            service.stop()
        self._restore_signal_handlers()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.stop()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def terminate(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)  # unwinds through __exit__ / start()'s cleanup

        self._previous_handlers = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM,)}

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    # -- reporting ----------------------------------------------------------------------------------

    def describe(self) -> str:
        """What runs where, how to log in, where the logs are (printed by ``mlops-tasks up``)."""
        lines = [
            "mlops-tasks local stack",
            f"  S3 endpoint    {self.s3_url}  (buckets: {', '.join(self.buckets)}; "
            f"access key {LOCAL_ACCESS_KEY})",
            "                 IN-MEMORY and EPHEMERAL by design: everything in it is gone when the stack",
            "                 stops. Use docker-compose.yaml (MinIO) to keep data.",
            f"  MLflow         {self.mlflow_url}  (store reset at each start; artifacts in the S3 endpoint)",
        ]
        if "api-server" in self.services:
            user, password = self.ui_login
            lines += [
                f"  Airflow UI     {self.airflow_url}  login {user} / {password}",
                f"  Airflow home   {self.airflow_home}  (LocalExecutor, SQLite; dags {self.dags_dir})",
            ]
        lines.append(f"  Logs           {self.log_dir}/<service>.log")
        return "\n".join(lines)
