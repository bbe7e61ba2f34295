"""One stage of the pipeline as a separate process, so a test can ``kill -9`` it mid-write.

``python -m tests.integration.faults.stage_runner <step> <endpoint> <bucket> [<json arguments>]`` runs
what the DAG's task(s) for ``step`` do (the same :func:`run_stage` also runs in the test process for
clean runs and retries). :class:`HoldingProxy` stalls the stage at a chosen request, so the kill lands
at a known point of its work; :func:`kill_when` is the kill.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mlops_tasks import stack
from mlops_tasks.config import PipelineConfig, load_config
from mlops_tasks.storage import ObjectStore, S3Settings, partition_prefix

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_CONFIG = REPO / "configs" / "flights_delay.yaml"

DAY = dt.date(2013, 3, 1)
AIRFLOW_RUN_ID = "scheduled__2013-03-01T00:00:00+00:00"
IDENTITY = {"model_name": "flights_delay", "model_version": "1", "run_id": AIRFLOW_RUN_ID}
OUTPUT_AREA = {"ingest": "staging", "score": "predictions"}
VALIDATION_AREAS = ("curated", "quarantine", "reports/validation")


def config() -> PipelineConfig:
    cfg = load_config(EXAMPLE_CONFIG)
    small = cfg.inference.model_copy(update={"part_rows": 200, "batch_rows": 128, "intra_op_threads": 1})
    return cfg.model_copy(update={"inference": small})


def model_config(name: str) -> PipelineConfig:
    """The example with a small network (4 epochs), 2 evaluation days, and experiment and registered
    model ``name`` (one per test: the MLflow server outlives the tests)."""
    from tests.model_frames import small_config

    cfg = config()
    training = cfg.training.model_copy(update={"window_days": 6, "evaluation_days": 2})
    return small_config(cfg, name, training=training)


def store_for(endpoint: str, bucket: str, max_attempts: int = 8) -> ObjectStore:
    return ObjectStore(
        S3Settings(
            bucket=bucket,
            endpoint_url=endpoint,
            aws_access_key_id=stack.LOCAL_ACCESS_KEY,
            aws_secret_access_key=stack.LOCAL_SECRET_KEY,
            max_attempts=max_attempts,
        )
    )


def output_partition(step: str, area: str | None = None) -> str:
    return partition_prefix(config().prefix, area or OUTPUT_AREA[step], DAY)


def run_stage(step: str, store: ObjectStore, model_path: str | None = None, **args: Any) -> Any:
    """What the DAG's task(s) for ``step`` do.

    - ``ingest``, ``validate``: the day DAY;
    - ``score``: plan + score + publish DAY with ``model_path`` to ``output_area`` (``predictions``,
      or ``predictions_shadow`` as a challenger's shadow scoring);
    - ``shadow``: the ShadowReportOperator of DAY (both sides scored by the same model);
    - ``version``: the DataVersionOperator on ``days`` (ISO dates);
    - ``lineage``: the LineageOperator with the ``upstream`` results;
    - ``drift``: the drift check of a July week of the example against its winter (it drifts), by
      the DAG run ``check_run_id``;
    - ``train``, ``export``, ``gate``: the Train/Export/EvaluateGate operator on ``data_version``
      (export, gate: of ``run_id``);
    - ``register``: the RegisterModelOperator for ``run_id`` with the gate's ``decision``.

    The model steps (train .. register) take ``tracking_uri`` and the ``name`` of :func:`model_config`.
    """
    if step == "ingest":
        from mlops_tasks.ingestion import ingest_day

        return ingest_day(store, config(), DAY)
    if step == "validate":
        from mlops_tasks.validation import validate_day

        return validate_day(store, config(), DAY)
    if step == "score":
        from mlops_tasks import inference

        cfg, area = config(), args.get("output_area", "predictions")
        results = [
            inference.score_part(store, cfg, unit, model_path=model_path, output_area=area, **IDENTITY)
            for unit in inference.plan_parts(store, cfg, DAY)
        ]
        return inference.publish_predictions(store, cfg, DAY, results, output_area=area, **IDENTITY)
    if step == "shadow":
        from mlops_tasks.inference import shadow_report

        model = {"model_name": IDENTITY["model_name"], "model_version": IDENTITY["model_version"]}
        return shadow_report(store, config(), DAY, champion=model, challenger=model)
    if step == "version":
        from mlops_tasks.versioning import create_data_version

        return create_data_version(store, config(), [dt.date.fromisoformat(d) for d in args["days"]])
    if step == "lineage":
        from mlops_tasks.lineage import assemble_record, write_record

        record = assemble_record(store, config(), airflow_run_id=AIRFLOW_RUN_ID, **args["upstream"])
        return write_record(store, config(), record)
    if step == "drift":
        return _drift_check(store, args["check_run_id"])
    return _model_step(step, store, model_config(args["name"]), **args)


DRIFT_DAY = dt.date(2013, 7, 14)


def _drift_check(store: ObjectStore, check_run_id: str) -> dict[str, Any]:
    """What the drift monitor's check does once it has its reference and window rows: the example's
    January-February rows against the week to DRIFT_DAY, 3,000 rows of each (the Evidently report
    takes seconds, not a minute)."""
    import pandas as pd

    from mlops_tasks import drift, example
    from mlops_tasks.monitoring import state_key

    cfg = config()
    cfg = cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"sample_rows": 3000})})
    weather = example.weather().drop(columns=["year", "month", "day", "hour"])
    rows = example.flights().merge(weather, on=["origin", "time_hour"], how="left")
    day = pd.to_datetime(rows[["year", "month", "day"]]).dt.date
    return drift.run_check(
        store,
        cfg,
        DRIFT_DAY,
        reference=rows[day <= dt.date(2013, 2, 28)],
        current=rows[(day > DRIFT_DAY - dt.timedelta(days=7)) & (day <= DRIFT_DAY)],
        state_key=state_key(cfg),
        check_run_id=check_run_id,
    )


def _model_step(
    step: str,
    store: ObjectStore,
    cfg: PipelineConfig,
    *,
    tracking_uri: str,
    data_version: str,
    run_id: str | None = None,
    decision: dict[str, Any] | None = None,
    **_: Any,
) -> dict[str, Any]:
    if step == "register":
        from mlops_tasks.registry import register

        assert run_id is not None and decision is not None
        return register(cfg, run_id, tracking_uri=tracking_uri, decision=decision, data_version=data_version)
    from mlops_tasks.training import split_window, train
    from mlops_tasks.versioning import load_data_version

    train_frame, eval_frame = split_window(load_data_version(store, cfg, data_version), cfg)
    if step == "train":
        return train(
            cfg,
            train_frame,
            tracking_uri=tracking_uri,
            data_version=data_version,
            trigger="schedule",
            run_name=f"{cfg.name}-{AIRFLOW_RUN_ID}",
            tags={"airflow_dag_id": cfg.dag_id("training"), "airflow_run_id": AIRFLOW_RUN_ID},
        )
    assert run_id is not None
    if step == "export":
        from mlops_tasks.export import export_run

        return export_run(cfg, run_id, tracking_uri=tracking_uri, sample_frame=eval_frame)
    if step == "gate":
        from mlops_tasks.evaluation import evaluate_and_gate

        return evaluate_and_gate(cfg, run_id, eval_frame, tracking_uri=tracking_uri, store=store, day=DAY)
    raise ValueError(f"unknown step '{step}'")


def start_stage(step: str, endpoint: str, bucket: str, **args: Any) -> subprocess.Popen:
    """The stage as a child process (its stderr is kept for the failure message)."""
    argv = [sys.executable, "-m", "tests.integration.faults.stage_runner", step, endpoint, bucket]
    return subprocess.Popen(
        [*argv, json.dumps(args)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> None:
    """``kill -9`` the stage as soon as ``ready()``; fails if the stage ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise AssertionError(f"the stage finished before the kill point:\n{stderr[-3000:]}")
        assert time.monotonic() < deadline, "kill point not reached in time"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(10) == -signal.SIGKILL
    if process.stderr:
        process.stderr.close()


def kill_behind_proxy(server_url: str, hold: Hold, start: Callable[[str], subprocess.Popen]) -> Request:
    """``start(proxy_url)`` the stage with its requests to ``server_url`` (S3 or MLflow) going through
    a :class:`HoldingProxy`; ``kill -9`` it once ``hold`` stalled a request. Returns that request."""
    proxy = HoldingProxy(server_url, hold)
    try:
        kill_when(start(proxy.url), proxy.held.is_set)
    finally:
        proxy.close()
    assert proxy.held_request is not None
    return proxy.held_request


# -- stalling a stage at a chosen request ------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One HTTP request as the proxy saw it; ``body`` is None when it was streamed (Expect: 100-continue)."""

    method: str
    target: str
    body: bytes | None

    @property
    def path(self) -> str:
        """The target without its query, percent-decoded (boto3 quotes the ``=`` of ``date=``)."""
        return urllib.parse.unquote(self.target.partition("?")[0])

    def json(self) -> dict[str, Any]:
        return json.loads(self.body or b"{}")


# Decides per request: None = forward it; n = stall it after its head and the first n body bytes
# (0: the server sees nothing of it).
Hold = Callable[[Request], int | None]


def holds_nth_put(n: int, path_matches: Callable[[str], bool]) -> Hold:
    """The ``n``-th PUT whose path ``path_matches``: the uploads before it went through."""
    seen: list[str] = []

    def hold(request: Request) -> int | None:
        if request.method == "PUT" and path_matches(request.path):
            seen.append(request.path)
            return 0 if len(seen) == n else None
        return None

    return hold


class HoldingProxy:
    """HTTP/1.1 proxy in front of a server (the S3 endpoint, MLflow) that forwards every request until
    ``hold`` picks one. That request is stalled (never answered) and :attr:`held` is set, so a test can
    ``kill -9`` the client at a point it chose by what the client was sending, without any hook in the
    product code. When the killed client's connection closes, the proxy closes the server side too, as
    the kernel of a killed client would: a partly sent body ends early."""

    def __init__(self, server_url: str, hold: Hold) -> None:
        self.server = ("127.0.0.1", int(server_url.rsplit(":", 1)[1]))
        self.hold = hold
        self.held = threading.Event()
        self.held_request: Request | None = None
        self._decide = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.server)
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=pump, args=(server, client), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while head := _read_head(reader):
                method, target, length, streamed = _parse_head(head)
                body = None if streamed else reader.read(length)
                request = Request(method, target, body)
                with self._decide:  # one hold per proxy: the first request it picks
                    cut = None if self.held.is_set() else self.hold(request)
                    if cut is not None:
                        self.held_request = request
                if cut is not None:
                    if cut > 0:
                        server.sendall(head + (body or b"")[:cut])
                    self.held.set()
                    reader.read()  # until the client is gone
                    return
                server.sendall(head + (body or b""))
                if streamed:
                    server.sendall(reader.read(length))
        except OSError:
            pass
        finally:
            _close(client, server)


def _read_head(reader: BinaryIO) -> bytes:
    lines = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        lines.append(line)
    return b"".join(lines) + b"\r\n" if lines and line else b""


def _parse_head(head: bytes) -> tuple[str, str, int, bool]:
    """(method, target, body length, body streamed after an Expect: 100-continue)."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError(f"{method} {target}: chunked request bodies are not supported")
    return method, target, int(headers.get("content-length", 0)), headers.get("expect") == "100-continue"


def pump(src: socket.socket, dst: socket.socket, *, close: bool = True) -> None:
    """Copy ``src`` to ``dst`` until either side goes away, then shut both down (and close them)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _close(src, dst, close=close)


def _close(*sockets: socket.socket, close: bool = True) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if close:
            sock.close()


def exported_run(tracking_uri: str, tmp_path: Path) -> str:
    """An MLflow run holding a model/model.onnx artifact (the registry checks only its presence)."""
    from mlops_tasks import tracking  # MLflow: not for the stage processes that import this module

    client = tracking.client(tracking_uri)
    experiment = client.get_experiment_by_name("faults") or client.get_experiment(
        client.create_experiment("faults")
    )
    run = client.create_run(experiment.experiment_id)
    model = tmp_path / run.info.run_id / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx bytes of " + run.info.run_id.encode())
    client.log_artifact(run.info.run_id, str(model), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def alias(cfg: PipelineConfig, name: str, tracking_uri: str) -> str | None:
    """The version holding the alias ``name``, or None."""
    from mlops_tasks import registry  # MLflow: not for the stage processes that import this module

    info = registry.alias_info(cfg, name, tracking_uri=tracking_uri)
    return info["version"] if info else None


def decision(auc: float, champion_version: str | None = None, promote: bool = True) -> dict:
    """A gate decision as evaluation makes it: ``champion_version`` is the champion the gate compared with."""
    return {
        "promote": promote,
        "reason": f"gate {'passed' if promote else 'failed'} with roc_auc {auc}",
        "primary_metric": "roc_auc",
        "challenger": {"metrics": {"roc_auc": auc}},
        "champion_version": champion_version,
        "floor_failed": False,
    }


if __name__ == "__main__":
    step, endpoint, bucket, *rest = sys.argv[1:]
    run_stage(step, store_for(endpoint, bucket), **(json.loads(rest[0]) if rest else {}))
