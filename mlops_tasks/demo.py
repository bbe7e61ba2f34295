"""``make demo``: the whole lifecycle on the embedded stack, driven through the real Airflow scheduler.

1. start S3 + MLflow + Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor);
2. land the example's raw files (flights + weather CSV per day);
3. ``flights_delay_training`` for the winter window -> champion v1;
4. ``flights_delay_batch_inference`` on winter days -> predictions asset -> the drift monitor runs
   by itself and finds nothing;
5. batch inference on summer days -> the drift monitor detects drift -> retrain asset event ->
   ``flights_delay_training`` runs by itself (nobody triggers it) -> the gate decides;
6. batch inference with the new champion; a summary of everything, then every process is stopped.

Exit code 0 only if every step of the lifecycle happened.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import shutil
import time
from pathlib import Path
from typing import IO, Any

from mlops_tasks.airflow_client import AirflowApi
from mlops_tasks.config import load_pipeline

PIPELINE = "flights_delay"
WINTER_TRAINING_RUN = "2013-03-01"  # window: the config's window_days up to 2013-02-28
WINTER_DAYS = ["2013-03-01", "2013-03-02"]
SUMMER_DAYS = ["2013-07-01", "2013-07-02"]
AFTER_RETRAINING_DAY = "2013-07-03"
SEED_RANGE = (dt.date(2013, 1, 1), dt.date(2013, 7, 31))
RUN_TIMEOUT = 900


class DemoFailed(RuntimeError):
    """A step of the lifecycle did not happen; the message says which."""


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Demo:
    def __init__(self, api: AirflowApi, stack: Any) -> None:
        self.api = api
        self.stack = stack
        self.cfg = load_pipeline(PIPELINE)
        self.runs: list[dict[str, Any]] = []

    def dag(self, kind: str) -> str:
        return self.cfg.dag_id(kind)  # type: ignore[arg-type]

    def run(self, kind: str, logical_date: str) -> dict[str, Any]:
        dag_id = self.dag(kind)
        _say(f"trigger {dag_id} for {logical_date}")
        run_id = self.api.trigger(dag_id, logical_date)
        return self._finish(dag_id, run_id, f"manual {logical_date}")

    def _finish(self, dag_id: str, run_id: str, label: str) -> dict[str, Any]:
        run = self.api.wait_for_run(
            dag_id, run_id, timeout=RUN_TIMEOUT, progress=lambda line: _say("  " + line)
        )
        self.runs.append({"dag_id": dag_id, "run": label, "state": run["state"], "run_id": run_id})
        if run["state"] != "success":
            raise DemoFailed(f"{dag_id} ({label}) ended {run['state']}; see the Airflow UI for its task logs")
        return run

    def wait_drift_runs(self, known: set[str], expected_days: list[str]) -> list[dict[str, Any]]:
        """Drift monitor runs started by the predictions asset (nobody triggers them)."""
        from mlops_tasks.status import last_drift

        dag_id = self.dag("drift_monitor")
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            new = [r for r in self.api.runs(dag_id) if r["dag_run_id"] not in known]
            if new and all(r["state"] in ("success", "failed") for r in new):
                drift = last_drift(self.stack.store(self.cfg.storage.bucket), self.cfg)
                if drift and drift["day"] >= expected_days[-1]:
                    for r in new:
                        self.runs.append(
                            {
                                "dag_id": dag_id,
                                "run": "asset-triggered",
                                "state": r["state"],
                                "run_id": r["dag_run_id"],
                            }
                        )
                        if r["state"] != "success":
                            raise DemoFailed(f"{dag_id} run {r['dag_run_id']} failed")
                    return new
            time.sleep(2)
        raise DemoFailed(f"the drift monitor did not check {expected_days[-1]} within {RUN_TIMEOUT}s")

    def lifecycle(self) -> None:
        for kind in ("training", "batch_inference", "drift_monitor"):
            self.api.unpause(self.dag(kind))
        self.run("training", WINTER_TRAINING_RUN)
        drift_known = {r["dag_run_id"] for r in self.api.runs(self.dag("drift_monitor"))}
        for day in WINTER_DAYS:
            self.run("batch_inference", day)
        self.wait_drift_runs(drift_known, WINTER_DAYS)
        training_known = {r["dag_run_id"] for r in self.api.runs(self.dag("training"))}
        drift_known = {r["dag_run_id"] for r in self.api.runs(self.dag("drift_monitor"))}
        for day in SUMMER_DAYS:
            self.run("batch_inference", day)
        self.wait_drift_runs(drift_known, SUMMER_DAYS)
        _say("waiting for the drift-triggered retraining (nobody triggers it)")
        retrain = self.api.wait_for_new_run(
            self.dag("training"), training_known, timeout=RUN_TIMEOUT, run_type="asset_triggered"
        )
        self._finish(self.dag("training"), retrain["dag_run_id"], "asset-triggered (drift)")
        self.run("batch_inference", AFTER_RETRAINING_DAY)


def summary(demo: Demo, seconds: float) -> str:
    from mlops_tasks import tracking
    from mlops_tasks.status import pipeline_status

    cfg, stack = demo.cfg, demo.stack
    store = stack.store(cfg.storage.bucket)
    client = tracking.client(stack.mlflow_url)
    versions = sorted(
        client.search_model_versions(f"name={tracking.quoted(cfg.registered_model_name)}"),
        key=lambda v: int(v.version),
    )
    # Registry searches do not return aliases: ask for each alias.
    from mlops_tasks.registry import alias_info

    aliases: dict[str, list[str]] = {}
    for alias in ("champion", "previous_champion", "challenger"):
        info = alias_info(cfg, alias, tracking_uri=stack.mlflow_url)
        if info:
            aliases.setdefault(str(info["version"]), []).append(alias)
    metric = cfg.gate.primary_metric
    lines = [
        "",
        "=" * 100,
        f"mlops_tasks demo: the {cfg.name} lifecycle in {seconds / 60:.1f} min",
        "",
        "DAG runs:",
    ]
    lines += [f"  {r['dag_id']:<34} {r['run']:<28} {r['state']}" for r in demo.runs]
    lines += ["", "Model versions:"]
    for v in versions:
        tags = v.tags or {}
        lines.append(
            f"  v{v.version:<3} aliases={','.join(aliases.get(str(v.version), [])) or '-':<28} "
            f"gate={tags.get('gate_decision', '?'):<9} {metric}={float(tags.get('gate_' + metric, 'nan')):.4f}  "
            f"data={tags.get('data_version', '?')[:12]}"
        )
    lines += ["", "Predictions published:"]
    for day in store.list_partition_dates(f"{cfg.prefix}/predictions/"):
        manifest = store.read_manifest(f"{cfg.prefix}/predictions/date={day}/") or {}
        lines.append(f"  {day}: {manifest.get('rows', 0):>6} rows by v{manifest.get('model_version', '?')}")
    lines += ["", "Drift checks:"]
    for day in store.list_partition_dates(f"{cfg.prefix}/reports/drift/"):
        report = store.get_json(f"{cfg.prefix}/reports/drift/date={day}/drift.json")["decision"]
        share = "-" if report["share_drifted"] is None else f"{report['share_drifted']:.0%}"
        lines.append(f"  {day}: {report['status']:<18} drifted share {share}  retrain={report['retrain']}")
    status = pipeline_status(store, cfg, tracking_uri=stack.mlflow_url)
    user, password = stack.ui_login
    lines += [
        "",
        "Reports (open them through the 'ML models' view, or read them in the bucket):",
        f"  validation  s3://{cfg.storage.bucket}/{cfg.prefix}/reports/validation/date=.../validation.html",
        f"  gate        {status['last_gate']['report_html_uri'] if status['last_gate'] else '-'}",
        f"  drift       {status['last_drift']['report_html_uri'] if status['last_drift'] else '-'}",
        f"  lineage     s3://{cfg.storage.bucket}/{cfg.prefix}/lineage/   (mlops-tasks lineage {cfg.name})",
        "",
        f"Airflow UI  {stack.airflow_url}   login {user} / {password}   ('ML models' in the menu)",
        f"MLflow UI   {stack.mlflow_url}",
        "=" * 100,
    ]
    return "\n".join(lines)


def fresh_state(state_dir: Path) -> IO[str]:
    """Empty ``state_dir`` for a new demo and return the lock that keeps it the demo's until closed.

    Every demo starts from nothing: a second run met the first's Airflow database (its manual runs
    of the same dates: HTTP 409) and registry. A demo still running there (``--keep-running`` in
    another terminal) holds the lock: its state is left alone and this demo fails saying so."""
    lock = open(state_dir.with_name(state_dir.name + ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DemoFailed(
            f"another demo is running on {state_dir} (mlops-tasks demo --keep-running?): stop it first"
        ) from None
    shutil.rmtree(state_dir, ignore_errors=True)
    return lock


def run_demo(state_dir: Path, keep_running: bool = False) -> int:

    lock = fresh_state(state_dir)
    try:
        return _run_demo(state_dir, keep_running)
    finally:
        lock.close()


def _run_demo(state_dir: Path, keep_running: bool) -> int:
    from mlops_tasks.example import seed_landing
    from mlops_tasks.stack import LocalStack

    started = time.monotonic()
    _say("starting the embedded stack (S3, MLflow, Airflow 3) ...")
    from mlops_tasks.cli import stack_connections

    with (
        LocalStack(state_dir=state_dir, airflow=True) as stack,
        stack_connections(stack.airflow_env(), state_dir),
    ):
        _say(
            f"stack up in {time.monotonic() - started:.0f}s: Airflow {stack.airflow_url}, MLflow {stack.mlflow_url}"
        )
        cfg = load_pipeline(PIPELINE)
        seeded = seed_landing(stack.store(cfg.storage.bucket), cfg, *SEED_RANGE)
        _say(f"landed {seeded['rows']} flights over {seeded['days']} days ({seeded['objects']} objects)")
        pending = stack.wait_dags_parsed()
        if pending:
            raise DemoFailed(f"Airflow did not parse {pending}")
        demo = Demo(AirflowApi(stack.airflow_url, stack.api_token()), stack)
        lifecycle_started = time.monotonic()
        try:
            demo.lifecycle()
        finally:
            print(summary(demo, time.monotonic() - lifecycle_started), flush=True)
        champions = [r for r in demo.runs if r["dag_id"] == demo.dag("training") and r["state"] == "success"]
        if len(champions) < 2:
            raise DemoFailed("the drift-triggered retraining did not run")
        if keep_running:
            _say("--keep-running: the stack stays up; Ctrl-C stops it")
            stack.wait()
    return 0
