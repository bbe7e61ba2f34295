"""``mlops-tasks``: the command line of the package.

Every command resolves pipelines from ``configs/`` (or ``$MLOPS_TASKS_CONFIG_DIR``) and connections
the way Airflow tasks do (``AIRFLOW_CONN_*`` or the secrets backend). While ``mlops-tasks up`` runs,
it writes the local stack's connections to ``.stack/connections.env``; other commands read that file
when the variables are not set, so they work from a second terminal without copying secrets around.
Errors print one clear line to stderr and exit 1; no traceback wall.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlops_tasks.config import (
    ConfigError,
    PipelineConfig,
    config_paths,
    load_config,
    load_each,
    load_pipeline,
    render_reference,
)

STACK_DIR = Path(os.environ.get("MLOPS_TASKS_STACK_DIR", ".stack"))
CONNECTIONS_FILE = "connections.env"
# botocore attempts per S3 request of a command: a blip is retried, an outage told in seconds
CLI_S3_ATTEMPTS = 3


FLIGHTS_DAYS = (dt.date(2013, 1, 1), dt.date(2013, 12, 31))  # what the flights example covers
SKLEARN_DAYS = 30  # a scikit-learn data set spread over a pipeline without end_date


class CliError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 1. Commands raise it for errors of the
    libraries underneath (Airflow connections, MLflow) that would otherwise end in a traceback."""


def load_stack_connections(stack_dir: Path = STACK_DIR) -> None:
    """Fill missing ``AIRFLOW_CONN_*`` variables from a running local stack's connections file.

    The file is found relative to the current directory, so one that came with a checkout or an
    archive could send this user's ambient AWS credentials (boto3's fallback for a connection
    without keys) to someone else's endpoint. Only the file ``mlops-tasks up`` writes is read: this
    user's, owner-only, every endpoint on the loopback interface; any other is ignored, with a line
    on stderr saying why."""
    path = stack_dir / CONNECTIONS_FILE
    if not path.exists():
        return
    found = dict(
        line.partition("=")[::2]
        for line in path.read_text().splitlines()
        if line.startswith("AIRFLOW_CONN_") and "=" in line
    )
    problem = _untrusted_stack_file(path, found)
    if problem:
        print(f"mlops-tasks: ignoring {path.resolve()}: {problem}", file=sys.stderr)
        return
    for key, value in found.items():
        os.environ.setdefault(key, value)


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _untrusted_stack_file(path: Path, connections: dict[str, str]) -> str | None:
    """Why ``path`` is not a connections file of a local stack this user started, or None."""
    from urllib.parse import urlsplit

    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return "it is not an owner-only file of this user, as `mlops-tasks up` writes it"
    for key, value in connections.items():
        try:
            conn = json.loads(value)
            urls = [conn.get("host") or "", *((conn.get("extra") or {}).values())]
        except (ValueError, AttributeError):
            return f"{key} is not a connection as `mlops-tasks up` writes it"
        for url in (u for u in urls if isinstance(u, str) and "://" in u):
            if urlsplit(url).hostname not in _LOOPBACK_HOSTS:
                return f"{key} points at {urlsplit(url).hostname}, not at a local stack on this machine"
    return None


@contextmanager
def stack_connections(env: dict[str, str], stack_dir: Path = STACK_DIR) -> Iterator[Path]:
    """The running stack's connections file, removed when the stack stops: left behind, it would
    point later commands at ports nothing listens on ("not reachable", after MLflow's retries)
    instead of saying that no connection is defined."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    path = stack_dir / CONNECTIONS_FILE
    path.touch(mode=0o600)
    path.chmod(0o600)  # before the secrets go in
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items() if k.startswith("AIRFLOW_CONN_")))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def _connection(cfg: PipelineConfig, field: str, conn_id: str) -> Iterator[None]:
    """An undefined Airflow connection as a CliError saying how to define it."""
    from airflow.sdk.exceptions import AirflowNotFoundException  # loaded by the hooks anyway

    try:
        yield
    except AirflowNotFoundException:
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        if os.environ.get(variable):  # Airflow reads a value it cannot parse as no connection
            raise CliError(
                f"pipeline '{cfg.name}': {variable} is set, but Airflow cannot read it as the connection "
                f"'{conn_id}' ({field} of its config): give it as a URI (e.g. aws://?endpoint_url=...) "
                'or as JSON ({"conn_type": ..., "extra": {...}})'
            ) from None
        raise CliError(
            f"pipeline '{cfg.name}': the Airflow connection '{conn_id}' ({field} of its config) is not "
            f"defined: set AIRFLOW_CONN_{conn_id.upper()}, or start the local stack with `mlops-tasks up` "
            f"(its connections are read from {STACK_DIR / CONNECTIONS_FILE})"
        ) from None


def _store(cfg: PipelineConfig) -> Any:
    """The pipeline's object store, retrying less than a task does: someone waits at the terminal, and
    a task's 8 attempts take about a minute of backoff to say that the endpoint is down."""
    from mlops_tasks.airflow.hooks import ObjectStoreHook
    from mlops_tasks.storage import ObjectStore

    load_stack_connections()
    with _connection(cfg, "storage.connection_id", cfg.storage.connection_id):
        settings = ObjectStoreHook(cfg.storage.connection_id, cfg.storage.bucket).get_settings()
    return ObjectStore(dataclasses.replace(settings, max_attempts=CLI_S3_ATTEMPTS))


def _tracking_uri(cfg: PipelineConfig) -> str:
    from mlops_tasks.airflow.hooks import MlflowHook

    load_stack_connections()
    with _connection(cfg, "mlflow.connection_id", cfg.mlflow.connection_id):
        return MlflowHook(cfg.mlflow.connection_id).get_tracking_uri()


@contextmanager
def _mlflow(cfg: PipelineConfig, tracking_uri: str) -> Iterator[None]:
    """An MLflow server that answers with an error (wrong URL, credentials, permissions) as a
    CliError naming the server and the connection to fix. Unreachable servers already raise a
    clear RuntimeError (mlops_tasks.tracking)."""
    from mlflow.exceptions import MlflowException, RestException  # the command loads MLflow anyway

    from mlops_tasks.status import redacted, without_credentials

    try:
        yield
    except MlflowException as exc:
        # First line, without the response body (an HTML error page says nothing more), and without
        # the credentials MLflow quotes in the URL it called.
        message = (str(exc).splitlines() or [type(exc).__name__])[0].split(". Response body:")[0]
        message = redacted(message, tracking_uri)
        code = re.search(r"failed with error code (\d+)", message)
        status = int(code.group(1)) if code else None
        if status is None and isinstance(exc, RestException):  # an MLflow error answer (JSON)
            status = exc.get_http_status_code()
        fix = {
            401: "check the login and password of the connection",
            403: "the connection's user lacks a permission this needs; check its login or the server's "
            "permissions",
            404: "the server has no MLflow API at this URL; check that the connection's host is the MLflow "
            "tracking server's URL",
        }.get(status, "check the connection and the server's logs")
        raise CliError(
            f"pipeline '{cfg.name}': the MLflow server {without_credentials(tracking_uri)} (Airflow connection "
            f"'{cfg.mlflow.connection_id}') {f'answered HTTP {status}' if status else 'failed'}: {fix} "
            f"({message[:200]})"
        ) from None


def _print(obj: Any, as_json: bool) -> None:
    """JSON strict (no NaN) and text with control characters escaped: what is printed comes from
    the bucket and the registry, and must not drive the terminal (see status.printable)."""
    from mlops_tasks.status import json_safe, printable

    print(
        json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False) if as_json else printable(str(obj))
    )


# -- commands -----------------------------------------------------------------------------------------


def cmd_config_validate(args: argparse.Namespace) -> int:
    """Every config's verdict, one line each (ok on stdout, errors on stderr); 1 if any failed."""
    # Named files are checked one by one (e.g. an edited copy next to its original); the config
    # directory as the set the DAG factory loads: names and storage locations unique.
    files = [Path(p) for p in args.files]
    checked = [(p, _loaded(p)) for p in files] if files else list(load_each(config_paths()))
    failed = 0
    for path, loaded in checked:
        problem = loaded if isinstance(loaded, ConfigError) else _expectations_problem(path, loaded)
        if problem is not None:
            failed += 1
            _print_error(problem)
            continue
        dags = ", ".join(loaded.dag_id(k) for k in ("training", "batch_inference", "drift_monitor"))
        print(f"ok: {loaded.name} ({dags})")
    return 1 if failed else 0


def _loaded(path: Path) -> PipelineConfig | ConfigError:
    try:
        return load_config(path)
    except ConfigError as exc:
        return exc


def _expectations_problem(path: Path, cfg: PipelineConfig) -> ConfigError | None:
    """The Great Expectations rules are built by the validate task; a typo'd expectation type or bad
    kwargs must show here, not on the first run."""
    from mlops_tasks.validation import build_rules

    try:
        build_rules(cfg)
    except ValueError as exc:  # GX's own messages span lines: one line here
        return ConfigError(f"{path}: " + " ".join(str(exc).split()))
    return None


def cmd_config_reference(args: argparse.Namespace) -> int:
    text = render_reference()
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)  # the same bytes as --output writes (the text ends with its newline)
    return 0


def _iso_date(option: str) -> Callable[[str], dt.date]:
    """An argparse type: an ISO date, else a usage error naming the option and the value."""

    def parse(text: str) -> dt.date:
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option}: {text!r} is not a YYYY-MM-DD date") from None

    return parse


def cmd_seed(args: argparse.Namespace) -> int:
    cfg = load_pipeline(args.pipeline)
    if args.sklearn_dataset:  # the pipeline's own dates: a data set without dates lands where it runs
        start = args.start or cfg.start_date
        end = args.end or cfg.end_date or start + dt.timedelta(days=SKLEARN_DAYS - 1)
    else:
        start, end = args.start or FLIGHTS_DAYS[0], args.end or FLIGHTS_DAYS[1]
    if start > end:  # before the connection is looked up and the bucket created
        first = "--start" if args.start else "the pipeline's start_date"
        last = (
            "--end"
            if args.end
            else ("the pipeline's end_date" if args.sklearn_dataset else "the default --end")
        )
        raise ConfigError(f"seed: {first} {start} is after {last} {end}: nothing to land")
    store = _store(cfg)
    store.ensure_bucket()
    if args.sklearn_dataset:
        from mlops_tasks.datasets import seed_sklearn_landing

        result = seed_sklearn_landing(store, cfg, args.sklearn_dataset, start, (end - start).days + 1)
    else:
        from mlops_tasks.example import seed_landing

        result = seed_landing(store, cfg, start, end)
    print(
        f"seeded {result['days']} day(s), {result['rows']} rows in {result['objects']} object(s) under "
        f"s3://{cfg.storage.bucket}/{cfg.prefix}/landing/"
    )
    return 0


def cmd_data_checkout(args: argparse.Namespace) -> int:
    from mlops_tasks.versioning import CHECKOUT_MARKER, checkout_data_version, resolve_version

    cfg = load_pipeline(args.pipeline)
    store = _store(cfg)
    version = resolve_version(store, cfg, args.version)
    target = checkout_data_version(store, cfg, version, Path(args.target_dir))
    files = [p for p in Path(target).rglob("*") if p.is_file() and p.name != CHECKOUT_MARKER]
    print(f"restored data version {version}: {len(files)} file(s) in {target}")
    return 0


def cmd_model_rollback(args: argparse.Namespace) -> int:
    from mlops_tasks.registry import rollback

    cfg = load_pipeline(args.pipeline)
    tracking_uri = _tracking_uri(cfg)
    with _mlflow(cfg, tracking_uri):
        result = rollback(cfg, tracking_uri=tracking_uri)
    print(f"{cfg.registered_model_name}: champion is now version {result['champion_version']} ({result})")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from mlops_tasks.lineage import format_record, read_record

    cfg = load_pipeline(args.pipeline)
    record = read_record(_store(cfg), cfg, version=args.version)
    _print(record if args.json else format_record(record), args.json)
    return 0


def _model_version(text: str) -> str:
    """A registered model version as the registry numbers it: "v3" (as lineage prints it) and "03"
    are 3."""
    digits = text.strip().removeprefix("v").removeprefix("V")
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a model version number (e.g. 3 or v3)")
    return str(int(digits))


def cmd_status(args: argparse.Namespace) -> int:
    from mlops_tasks.status import format_status, pipeline_status

    if args.pipeline:
        loaded: list[PipelineConfig | ConfigError] = [load_pipeline(args.pipeline)]
    else:
        loaded = [cfg for _, cfg in load_each(config_paths())]
    # As in Airflow (an error DAG, the other pipelines scheduled): an invalid config is reported and
    # left out, the others' status is still shown; the exit code says one was left out.
    invalid = [error for error in loaded if isinstance(error, ConfigError)]
    for error in invalid:
        print(f"error: {error} (left out of the status)", file=sys.stderr)
    rows = []
    for cfg in loaded:
        if isinstance(cfg, PipelineConfig):
            store, tracking_uri = _store(cfg), _tracking_uri(cfg)
            with _mlflow(cfg, tracking_uri):
                rows.append(pipeline_status(store, cfg, tracking_uri=tracking_uri))
    if rows or not invalid:
        _print(rows if args.json else format_status(rows), args.json)
    return 1 if invalid else 0


def cmd_up(args: argparse.Namespace) -> int:
    from mlops_tasks.stack import LocalStack

    # Ctrl-C (SIGINT) stops the stack even when a script started it in the background: such jobs
    # inherit SIGINT ignored, and Python would keep it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with (
        LocalStack(state_dir=Path(args.state_dir), airflow=not args.no_airflow) as local,
        stack_connections(local.airflow_env(), Path(args.state_dir)),
    ):
        if not args.no_seed:
            from mlops_tasks.example import seed_landing

            # the configs the stack serves: an invalid one was skipped with a warning, as in Airflow
            for cfg in local.pipelines:
                if cfg.name == "flights_delay":
                    seed_landing(
                        local.store(cfg.storage.bucket), cfg, dt.date(2013, 1, 1), dt.date(2013, 12, 31)
                    )
        print(local.describe(), flush=True)
        print("Press Ctrl-C to stop every service.", flush=True)
        local.wait()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mlops_tasks.demo import PIPELINE, run_demo

    load_pipeline(PIPELINE)  # the demo drives this pipeline: refuse its invalid config before starting
    return run_demo(state_dir=Path(args.state_dir), keep_running=args.keep_running)


# -- wiring -------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops-tasks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str, parent: Any = sub) -> Any:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "Start the embedded local stack (S3, MLflow, Airflow) until Ctrl-C.")
    p.add_argument("--state-dir", default=str(STACK_DIR))
    p.add_argument("--no-airflow", action="store_true", help="Only S3 and MLflow.")
    p.add_argument("--no-seed", action="store_true", help="Do not land the example data.")

    p = add("demo", cmd_demo, "Run the whole ML lifecycle on the embedded stack and print a summary.")
    p.add_argument("--state-dir", default=".demo")
    p.add_argument("--keep-running", action="store_true", help="Leave the stack up at the end.")

    p = add(
        "seed",
        cmd_seed,
        "Land example raw files under the pipeline's landing area: the nycflights13 example (one flights + "
        "one weather CSV per day, for flights_delay's schema, whatever the pipeline), or --sklearn-dataset.",
    )
    p.add_argument("pipeline", nargs="?", default="flights_delay")
    p.add_argument(
        "--start",
        type=_iso_date("--start"),
        help=f"First day (default: {FLIGHTS_DAYS[0]}; with --sklearn-dataset the pipeline's start_date).",
    )
    p.add_argument(
        "--end",
        type=_iso_date("--end"),
        help=f"Last day (default: {FLIGHTS_DAYS[1]}; with --sklearn-dataset the pipeline's end_date, or "
        f"{SKLEARN_DAYS} days from the first).",
    )
    p.add_argument(
        "--sklearn-dataset",
        help="Land a scikit-learn bundled data set (wine, iris, diabetes, ...) spread over --start..--end "
        "instead of the flights example (docs/new-pipeline.md).",
    )

    data = sub.add_parser("data", help="Data versions.").add_subparsers(dest="data_command", required=True)
    p = add("checkout", cmd_data_checkout, "Restore the exact bytes of a DVC data version.", data)
    p.add_argument("pipeline")
    p.add_argument("version", help="The data version (as lineage prints it), or its first characters.")
    p.add_argument("target_dir")

    model = sub.add_parser("model", help="Registered models.").add_subparsers(
        dest="model_command", required=True
    )
    p = add("rollback", cmd_model_rollback, "Move 'champion' back to 'previous_champion'.", model)
    p.add_argument("pipeline")

    p = add("lineage", cmd_lineage, "Print a model version's lineage (latest by default).")
    p.add_argument("pipeline")
    p.add_argument("version", nargs="?", type=_model_version, help="e.g. 3 or v3 (default: the latest)")
    p.add_argument("--json", action="store_true")

    p = add("status", cmd_status, "Champion, last gate, drift and inference per pipeline.")
    p.add_argument("pipeline", nargs="?")
    p.add_argument("--json", action="store_true")

    config = sub.add_parser("config", help="Pipeline configs.").add_subparsers(
        dest="config_command", required=True
    )
    p = add("validate", cmd_config_validate, "Validate pipeline configs (default: every config).", config)
    p.add_argument("files", nargs="*")
    p = add("config-reference", cmd_config_reference, "Render docs/configuration.md from the config models.")
    p.add_argument("--output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, CliError, OSError, ValueError, RuntimeError) as exc:
        _print_error(exc)
        return 1


def _print_error(exc: Exception) -> None:
    """``error: <message>`` on stderr, one line, without credentials or control characters."""
    from mlops_tasks.status import printable, redacted

    print(f"error: {printable(redacted(str(exc)))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
