"""The Airflow layer's contracts with Airflow itself: data errors fail a task without retries, runs
without a logical date still find their window, scoring runs once a day is complete, a broken config
leaves the other pipelines scheduled, connections do not leak credentials between pipelines."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_data_error_fails_the_task_at_once_and_other_errors_stay_retryable() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks.airflow.operators import PipelineOperator
    from mlops_tasks.training import TrainingDataError

    class Raises(PipelineOperator):
        def __init__(self, *, error: Exception, **kwargs: object) -> None:
            super().__init__(**kwargs)
            self.error = error

        def execute(self, context: object) -> None:
            raise self.error

    bad_data = Raises(task_id="bad", pipeline="flights_delay", error=TrainingDataError("only one class"))
    with pytest.raises(AirflowFailException, match="TrainingDataError: only one class"):
        bad_data.execute({})
    outage = Raises(task_id="outage", pipeline="flights_delay", error=ConnectionError("endpoint down"))
    with pytest.raises(ConnectionError):
        outage.execute({})
    # the registry's contract errors (a run without its ONNX file) too; contention is retried
    from mlops_tasks.registry import RegistryContention, RegistryError

    no_model = Raises(task_id="no_model", pipeline="flights_delay", error=RegistryError("has no model.onnx"))
    with pytest.raises(AirflowFailException, match="RegistryError: has no model.onnx"):
        no_model.execute({})
    busy = Raises(task_id="busy", pipeline="flights_delay", error=RegistryContention("did not settle"))
    with pytest.raises(RegistryContention):
        busy.execute({})


def test_a_retrain_event_without_window_end_trains_up_to_the_day_before_the_run() -> None:
    from mlops_tasks.airflow.operators import retrain_window_end

    event = SimpleNamespace(extra={"reason": "external request"})
    context = {
        "triggering_asset_events": {"retrain": [event]},
        # an asset-triggered run: no logical date, no data interval
        "dag_run": SimpleNamespace(
            run_after=dt.datetime(2013, 7, 2, 9, tzinfo=dt.UTC), run_type="asset_triggered"
        ),
    }
    assert retrain_window_end(context) == (dt.date(2013, 7, 1), "asset_triggered")


@pytest.mark.parametrize("window_end", ["2026-12-03", "2026-12-03T09:00:00+00:00", "2099-01-01"])
def test_a_retrain_event_asking_for_a_day_not_over_is_refused(window_end: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks.airflow.operators import retrain_window_end

    context = {
        "triggering_asset_events": {"retrain": [SimpleNamespace(extra={"window_end": window_end})]},
        "dag_run": SimpleNamespace(
            run_after=dt.datetime(2026, 12, 3, 10, tzinfo=dt.UTC), run_type="asset_triggered"
        ),
    }
    with pytest.raises(
        AirflowFailException,
        match=r"had not ended when the run was created \(2026-12-03\).*e\.g\. 2026-12-02",
    ):
        retrain_window_end(context)
    finished = {
        **context,
        "triggering_asset_events": {"retrain": [SimpleNamespace(extra={"window_end": "2026-12-02"})]},
    }
    assert retrain_window_end(finished)[0] == dt.date(2026, 12, 2)


@pytest.fixture(scope="module")
def dags():
    from mlops_tasks.airflow.dag_factory import build_all_dags

    return build_all_dags(REPO / "configs")


def test_scheduled_batch_inference_scores_a_day_once_it_is_over(dags) -> None:
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import DataInterval, TimeRestriction

    # the timetable as the scheduler sees it (the serialized DAG's)
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dags["flights_delay_batch_inference"]))
    june_1 = DataInterval(dt.datetime(2013, 6, 1, tzinfo=dt.UTC), dt.datetime(2013, 6, 2, tzinfo=dt.UTC))
    after = scheduled.timetable.next_dagrun_info(
        last_automated_data_interval=june_1, restriction=TimeRestriction(None, None, catchup=True)
    )
    # the run whose logical date (the day it scores) is 2013-06-02 starts when that day is over
    assert after.data_interval.start == dt.datetime(2013, 6, 2, tzinfo=dt.UTC)
    assert after.run_after == dt.datetime(2013, 6, 3, tzinfo=dt.UTC)


def test_missed_days_are_scored_when_the_scheduler_is_back_only_if_the_config_asks(dags) -> None:
    from airflow.serialization.serialized_objects import DagSerialization

    from mlops_tasks.airflow.dag_factory import build_batch_inference_dag
    from mlops_tasks.config import load_pipeline

    assert not dags["flights_delay_batch_inference"].catchup  # the example starts in 2013
    cfg = load_pipeline("flights_delay")
    cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"catchup": True})})
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(build_batch_inference_dag(cfg)))
    assert scheduled.catchup and scheduled.max_active_runs == 4
    assert not dags["flights_delay_training"].catchup and not dags["flights_delay_drift_monitor"].catchup


@pytest.mark.parametrize("cron", ["@daily", "0 3 * * *"])
def test_every_day_up_to_end_date_is_scored_whatever_hour_the_cron_fires(cron: str) -> None:
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    from mlops_tasks.airflow.dag_factory import build_batch_inference_dag
    from mlops_tasks.config import load_pipeline

    cfg = load_pipeline("flights_delay")
    cfg = cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"schedule": cron})})
    dag = DagSerialization.from_dict(DagSerialization.to_dict(build_batch_inference_dag(cfg)))
    restriction = TimeRestriction(dag.start_date, dag.end_date, catchup=True)
    days, interval = [], None
    while info := dag.timetable.next_dagrun_info(
        last_automated_data_interval=interval, restriction=restriction
    ):
        days.append(info.logical_date.date())
        interval = info.data_interval
    assert (days[0], days[-1], len(days)) == (cfg.start_date, cfg.end_date, 365)


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Berlin", "Asia/Tokyo"])
def test_a_pipeline_in_another_time_zone_scores_each_local_day_once_it_is_over_there(zone: str) -> None:
    """Partitions of local days (the flights of a New York day): with UTC days a daily run scored
    the day at 19:00 New York time, its evening's flights still to come; east of UTC the logical
    date's UTC day was the day before."""
    from zoneinfo import ZoneInfo

    from airflow.sdk.exceptions import AirflowFailException
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    from mlops_tasks.airflow.dag_factory import build_dags
    from mlops_tasks.airflow.operators import retrain_window_end, run_day
    from mlops_tasks.config import load_pipeline

    cfg = load_pipeline("flights_delay").model_copy(update={"timezone": zone})
    local = ZoneInfo(zone)
    built = build_dags(cfg)
    scoring = DagSerialization.from_dict(DagSerialization.to_dict(built["flights_delay_batch_inference"]))
    restriction = TimeRestriction(scoring.start_date, scoring.end_date, catchup=True)
    first = scoring.timetable.next_dagrun_info(last_automated_data_interval=None, restriction=restriction)
    assert first.logical_date == dt.datetime(2013, 1, 1, tzinfo=local)
    assert first.run_after == dt.datetime(2013, 1, 2, tzinfo=local)  # the local day is over
    run = SimpleNamespace(run_after=first.run_after, run_type="scheduled")
    context = {"logical_date": first.logical_date, "dag_run": run, "data_interval_end": first.run_after}
    assert run_day(None, context, cfg.zone) == dt.date(2013, 1, 1)
    assert retrain_window_end(context, cfg.zone)[0] == dt.date(2013, 1, 1)
    # a manual run created late on a local day may not score that day
    late = dt.datetime(2013, 1, 1, 23, 30, tzinfo=local)
    manual = {"logical_date": late, "dag_run": SimpleNamespace(run_after=late, run_type="manual")}
    with pytest.raises(
        AirflowFailException, match=f"a day that had not ended .* e\\.g\\. 2012-12-31T00:00:00 in {zone}"
    ):
        run_day(None, manual, cfg.zone)
    training = DagSerialization.from_dict(DagSerialization.to_dict(built["flights_delay_training"]))
    monthly = training.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(training.start_date, training.end_date, catchup=True),
    )
    assert monthly.run_after == dt.datetime(2013, 1, 1, tzinfo=local)


def test_a_time_zone_outside_the_iana_database_is_refused_naming_it(tmp_path: Path) -> None:
    from mlops_tasks.config import ConfigError, load_config

    config = tmp_path / "zoned.yaml"
    text = (REPO / "configs" / "flights_delay.yaml").read_text()
    config.write_text(text.replace("name: flights_delay", "name: flights_delay\ntimezone: New_York", 1))
    with pytest.raises(
        ConfigError, match="timezone.*'New_York' is not a time zone name of the IANA database"
    ):
        load_config(config)


@pytest.mark.parametrize("cron", ["@monthly", "0 6 * * 1"])
def test_the_last_scheduled_training_trains_on_the_days_up_to_end_date(cron: str) -> None:
    """Training trains on the days before its fire time: ending the DAG with end_date's day left the
    last days (December for the example) to no scheduled run."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    from mlops_tasks.airflow.dag_factory import build_training_dag
    from mlops_tasks.airflow.operators import retrain_window_end
    from mlops_tasks.config import load_pipeline

    cfg = load_pipeline("flights_delay")
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"schedule": cron})})
    dag = DagSerialization.from_dict(DagSerialization.to_dict(build_training_dag(cfg)))
    restriction = TimeRestriction(dag.start_date, dag.end_date, catchup=True)
    last, interval = None, None
    while info := dag.timetable.next_dagrun_info(
        last_automated_data_interval=interval, restriction=restriction
    ):
        last, interval = info, info.data_interval
    run = SimpleNamespace(run_after=last.run_after, run_type="scheduled")
    context = {"logical_date": last.logical_date, "data_interval_end": last.data_interval.end, "dag_run": run}
    window_end = retrain_window_end(context)[0]
    assert cfg.end_date <= window_end < cfg.end_date + dt.timedelta(days=7)


def test_a_run_is_refused_a_day_that_had_not_ended_when_it_was_created() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks.airflow.operators import run_day

    def context(logical: dt.datetime, run_after: dt.datetime) -> dict:
        return {"logical_date": logical, "dag_run": SimpleNamespace(run_after=run_after)}

    june_1, june_2 = dt.datetime(2013, 6, 1, tzinfo=dt.UTC), dt.datetime(2013, 6, 2, tzinfo=dt.UTC)
    assert run_day(None, context(june_1, june_2)) == dt.date(2013, 6, 1)  # scheduled: after the day
    assert run_day(None, context(june_1, dt.datetime(2026, 12, 4, tzinfo=dt.UTC))) == dt.date(2013, 6, 1)
    # the trigger form's default: the current time as the logical date
    now = dt.datetime(2026, 12, 4, 5, 40, tzinfo=dt.UTC)
    with pytest.raises(
        AirflowFailException, match=r"2026-12-04, a day that had not ended .* e\.g\. 2026-12-03"
    ):
        run_day(None, context(now, now))
    assert run_day("2026-12-04", context(now, now)) == dt.date(2026, 12, 4)  # an explicit day is the user's


def test_the_trigger_forms_day_and_window_end_choose_what_a_run_works_on() -> None:
    """Each DAG has a form field (DAG params): empty, runs go by their dates and events; given, it
    wins over the logical date but not over an asset event's window, and a day not over is refused."""
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks.airflow.dag_factory import build_dags
    from mlops_tasks.airflow.operators import retrain_window_end, run_day
    from mlops_tasks.config import load_config

    dags = build_dags(load_config(REPO / "configs" / "flights_delay.yaml"))
    assert {dag_id: dict(dag.params) for dag_id, dag in dags.items()} == {
        "flights_delay_training": {"window_end": None},
        "flights_delay_batch_inference": {"day": None},
        "flights_delay_drift_monitor": {"day": None},
    }
    now = dt.datetime(2026, 12, 4, 5, 40, tzinfo=dt.UTC)
    run = SimpleNamespace(run_after=now, run_type="manual")

    def context(**params: str | None) -> dict:
        return {"logical_date": now, "dag_run": run, "params": params, "data_interval_end": now}

    assert run_day(None, context(day="2013-06-01")) == dt.date(2013, 6, 1)
    assert run_day("2013-07-01", context(day="2013-06-01")) == dt.date(2013, 7, 1)  # the task's own day
    with pytest.raises(AirflowFailException, match="day parameter is 2026-12-04, a day that had not ended"):
        run_day(None, context(day="2026-12-04"))
    assert retrain_window_end(context(window_end="2013-06-30")) == (
        dt.date(2013, 6, 30),
        "manual: window_end parameter",
    )
    assert retrain_window_end(context(window_end=None)) == (dt.date(2026, 12, 3), "manual")
    event = SimpleNamespace(extra={"window_end": "2013-03-31", "source": "drift_monitor"})
    asked = context(window_end="2013-06-30") | {"triggering_asset_events": {"retrain": [event]}}
    assert retrain_window_end(asked)[0] == dt.date(2013, 3, 31)
    with pytest.raises(AirflowFailException, match="window_end parameter is 2026-12-05"):
        retrain_window_end(context(window_end="2026-12-05"))


def test_the_shadow_report_waits_for_both_published_days(dags) -> None:
    report = dags["flights_delay_batch_inference"].get_task("shadow_report")
    assert {"publish", "publish_shadow"} <= report.upstream_task_ids


def test_the_shadow_branch_hangs_off_the_challenger_check(dags) -> None:
    dag = dags["flights_delay_batch_inference"]
    check = dag.get_task("has_challenger")
    assert check.upstream_task_ids == {"resolve_champion"}
    assert check.downstream_task_ids == {"shadow_score"}
    # everything the check skips is shadow work: the published predictions never wait on it
    assert check.get_flat_relative_ids(upstream=False) == {
        "shadow_score",
        "publish_shadow",
        "shadow_report",
        "shadow_settled",
    }


def test_the_run_state_follows_publishing_not_the_shadow_branch(dags) -> None:
    """Airflow fails a run when a leaf task failed: the leaves are a plain task after publish and
    one after the shadow report that runs whatever the branch's outcome (e2e: a failing challenger)."""
    dag = dags["flights_delay_batch_inference"]
    assert {t.task_id for t in dag.leaves} == {"served", "shadow_settled"}
    served, settled = dag.get_task("served"), dag.get_task("shadow_settled")
    assert (served.upstream_task_ids, served.trigger_rule) == ({"publish"}, "all_success")
    assert (settled.upstream_task_ids, settled.trigger_rule) == ({"shadow_report"}, "all_done")


def test_one_drift_run_at_a_time_as_runs_share_the_retrain_cooldown(dags) -> None:
    dag = dags["flights_delay_drift_monitor"]
    assert dag.max_active_runs == 1
    assert dag.get_task("drift_check").max_active_tis_per_dag == 1  # backfill runs too


def test_a_broken_config_becomes_an_error_dag_and_the_others_still_load(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowFailException

    shutil.copy(REPO / "configs" / "flights_delay.yaml", tmp_path / "flights_delay.yaml")
    broken = (
        (REPO / "configs" / "flights_delay.yaml").read_text().replace("name: flights_delay", "name: other")
    )
    (tmp_path / "other.yaml").write_text(broken.replace("inference:", "inference:\n  schedul: daily", 1))
    (tmp_path / "other.yml").write_text("name: [not, a, name]\n")  # the error DAG id of "other" is taken
    # same storage prefix as flights_delay under another name: would delete each other's parts
    twin = (
        (REPO / "configs" / "flights_delay.yaml")
        .read_text()
        .replace("name: flights_delay", "name: twin")
        .replace("registered_model: flights_delay", "registered_model: twin")
    )
    (tmp_path / "same_prefix.yaml").write_text(
        twin.replace("storage:", "storage:\n  prefix: flights_delay", 1)
    )
    dags_dir = tmp_path / "dags"
    dags_dir.mkdir()
    shutil.copy(REPO / "dags" / "mlops_pipelines.py", dags_dir)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLOPS_TASKS_CONFIG_DIR", str(tmp_path))
        bag = DagBag(dag_folder=str(dags_dir))
    assert bag.import_errors == {}
    assert {"flights_delay_training", "flights_delay_batch_inference", "flights_delay_drift_monitor"} <= set(
        bag.dag_ids
    )
    assert not any(d.startswith(("other_", "twin_")) for d in bag.dag_ids), bag.dag_ids
    error = bag.dags["mlops_config_error_other"]
    assert "other.yml" in bag.dags["mlops_config_error_other_2"].get_task("config_error").reason
    assert error.schedule is None or error.timetable.summary in ("None", "")
    task = error.get_task("config_error")
    assert "schedul" in task.reason and "other.yaml" in task.reason
    with pytest.raises(AirflowFailException, match="schedul"):
        task.execute({})
    assert (
        "flights_delay.yaml; pipelines would overwrite"
        in bag.dags["mlops_config_error_same_prefix"].get_task("config_error").reason
    )


def test_an_error_dag_names_its_config_by_full_path_in_the_validate_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The description's `mlops-tasks config validate <file>` named the bare file name, which fails
    from any directory but the config directory (the DAG processor's may even be relative)."""
    import shlex

    from mlops_tasks.airflow.dag_factory import build_all_dags

    configs = tmp_path / "my configs"
    configs.mkdir()
    (configs / "broken.yaml").write_text("name: [broken\n")
    monkeypatch.chdir(tmp_path)
    dag = build_all_dags(Path("my configs"))["mlops_config_error_broken"]
    command = dag.description.split("(", 1)[1].removesuffix(")")
    assert shlex.split(command) == ["mlops-tasks", "config", "validate", str(configs / "broken.yaml")]


def test_an_mlflow_connection_without_login_clears_the_previous_ones_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlops_tasks.airflow.hooks import MlflowHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_A",
        json.dumps(
            {
                "conn_type": "mlflow",
                "host": "https://mlflow-a.example",
                "login": "alice",
                "password": "s3cret",
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_B", json.dumps({"conn_type": "mlflow", "host": "https://mlflow-b.example"})
    )
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    from mlflow.utils.credentials import get_default_host_creds

    assert MlflowHook("mlflow_a").get_tracking_uri() == "https://mlflow-a.example"
    assert get_default_host_creds("https://mlflow-a.example").password == "s3cret"
    uri = MlflowHook("mlflow_b").get_tracking_uri()
    creds = get_default_host_creds(uri)
    assert (creds.username, creds.password) == (None, None)


def test_credentials_in_an_mlflow_host_url_leave_the_tracking_uri_and_are_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow prints the tracking URI with each run's link into the task log; Airflow masks only
    the connection's password field, not a password inside its host."""
    from airflow.sdk._shared.secrets_masker.secrets_masker import redact
    from mlflow.utils.credentials import get_default_host_creds

    from mlops_tasks.airflow.hooks import MlflowHook

    host = "http://ml-user:S3cr%40tPw@mlflow.example:5000"
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_URL", json.dumps({"conn_type": "mlflow", "host": host}))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)

    uri = MlflowHook("mlflow_url").get_tracking_uri()

    assert uri == "http://mlflow.example:5000"
    creds = get_default_host_creds(uri)
    assert (creds.username, creds.password) == ("ml-user", "S3cr@tPw")
    assert "S3cr@tPw" not in redact("View run at http://ml-user:S3cr@tPw@mlflow.example:5000")


@pytest.mark.parametrize(
    ("connection", "tracking_uri"),
    [
        ("https://bob:s3cret@mlflow.example.org", "https://mlflow.example.org"),
        ("https://tools.example.org/mlflow", "https://tools.example.org/mlflow"),
        ("http://mlflow:5000?ui_url=http%3A%2F%2Flocalhost%3A5000", "http://mlflow:5000"),
    ],
    ids=["https-with-login", "https-with-path", "http-with-extra"],
)
def test_an_mlflow_connection_in_uri_form_keeps_its_scheme_and_path(
    monkeypatch: pytest.MonkeyPatch, connection: str, tracking_uri: str
) -> None:
    """Airflow keeps a URI's scheme as the connection type and its path in schema: https must not
    become http (basic-auth credentials in clear text), nor a path a scheme."""
    from mlops_tasks.airflow.hooks import MlflowHook

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_URI", connection)
    assert MlflowHook("mlflow_uri").get_tracking_uri() == tracking_uri


@pytest.mark.parametrize(
    "host", ["sqlite:////var/mlflow.db", "postgresql://mlflow@db/mlflow", "file:///mlruns"]
)
def test_an_mlflow_connection_to_a_store_instead_of_a_server_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    from mlops_tasks.airflow.hooks import MlflowHook
    from mlops_tasks.errors import DataError  # a task fails at once: retrying cannot fix it

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DB", json.dumps({"conn_type": "mlflow", "host": host}))
    scheme = host.split(":")[0]
    with pytest.raises(
        DataError, match=f"'mlflow_db': tracking URI scheme '{scheme}' is not served over HTTP"
    ):
        MlflowHook("mlflow_db").get_tracking_uri()


def test_mlflow_links_use_the_connections_ui_url_else_the_tracking_uri_without_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlops_tasks.airflow.hooks import MlflowHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_UI",
        json.dumps(
            {
                "conn_type": "mlflow",
                "host": "http://mlflow:5000",
                "extra": {"ui_url": "http://localhost:5000/"},
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_UI_WITH_LOGIN",
        json.dumps(
            {
                "conn_type": "mlflow",
                "host": "http://mlflow:5000",
                "extra": {"ui_url": "https://al:pw@ml.example/"},
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_PLAIN",
        json.dumps({"conn_type": "mlflow", "host": "https://bob:pw@mlflow.example"}),
    )
    assert MlflowHook("mlflow_ui").get_ui_url() == "http://localhost:5000"
    assert MlflowHook("mlflow_ui").get_tracking_uri() == "http://mlflow:5000"
    assert MlflowHook("mlflow_plain").get_ui_url() == "https://mlflow.example"
    assert MlflowHook("mlflow_ui_with_login").get_ui_url() == "https://ml.example"


def test_report_links_follow_the_api_servers_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlops_tasks.airflow.links import report_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://localhost:8080")
    assert report_url("s3://b/r.html") == "/mlops/reports?uri=s3%3A%2F%2Fb%2Fr.html"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://tools.example/airflow/")  # behind a proxy
    assert report_url("s3://b/r.html") == "/airflow/mlops/reports?uri=s3%3A%2F%2Fb%2Fr.html"
    assert report_url(None) is None


def test_more_mapped_tasks_than_airflow_allows_fail_with_the_limit_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlops_tasks.airflow.operators import mappable
    from mlops_tasks.errors import DataError

    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")
    assert mappable([1, 2, 3], "work units of 2013-06-01", "raise inference.part_rows") == [1, 2, 3]
    with pytest.raises(
        DataError, match=r"4 work units of 2013-06-01 are more .* max_map_length = 3\): raise"
    ):
        mappable([1, 2, 3, 4], "work units of 2013-06-01", "raise inference.part_rows")


def test_every_task_has_the_pipelines_timeout_and_retries() -> None:
    from mlops_tasks.airflow.dag_factory import build_dags
    from mlops_tasks.config import load_config

    cfg = load_config(REPO / "configs" / "flights_delay.yaml").model_copy(
        update={"task_timeout_minutes": 17, "retries": 5}
    )
    for dag in build_dags(cfg).values():
        for task in dag.tasks:
            assert task.execution_timeout == dt.timedelta(minutes=17), task.task_id
            assert (task.retries, bool(task.retry_exponential_backoff)) == (5, True), task.task_id


def test_an_unreachable_mlflow_server_is_named_without_its_credentials() -> None:
    """Task errors reach logs and the alert webhook, where Airflow masks no URL userinfo."""
    from mlops_tasks import stack, tracking

    uri = f"http://bob:TopSecret@127.0.0.1:{stack.free_port()}"
    with pytest.raises(tracking.TrackingUnavailable) as err, tracking.reachable(uri, "read the registry"):
        tracking.client(uri).search_registered_models()
    message = str(err.value)
    assert "TopSecret" not in message and "bob" not in message
    assert f"server http://127.0.0.1:{uri.rsplit(':', 1)[1]} is not reachable" in message


@pytest.mark.parametrize("text", ["None", "2013-13-01", "yesterday", "2013-01-0512", "2013-01-05garbage"])
def test_text_that_is_no_date_fails_the_task_at_once_naming_it(text: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks.airflow.operators import as_date

    with pytest.raises(AirflowFailException, match=rf"'{text}' is not a date \(YYYY-MM-DD\)"):
        as_date(text)
    assert as_date("2013-06-01T00:00:00+00:00") == dt.date(2013, 6, 1)
    assert as_date("2013-06-01") == as_date(dt.date(2013, 6, 1)) == dt.date(2013, 6, 1)
    # An offset is taken in UTC, as Airflow's logical dates are.
    assert as_date("2013-06-01T23:30:00-05:00") == dt.date(2013, 6, 2)
    assert as_date(dt.datetime(2013, 6, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))) == dt.date(
        2013, 6, 2
    )


def test_the_model_version_link_quotes_the_model_name() -> None:
    from mlops_tasks.airflow.links import model_version_url

    url = model_version_url("http://mlflow:5000", {"model_name": "churn#2 ?a%", "version": 3})
    assert url == "http://mlflow:5000/#/models/churn%232%20%3Fa%25/versions/3"


def test_drift_checks_of_two_dags_with_the_same_run_id_are_different_runs() -> None:
    """Scheduled run ids repeat across DAGs (``scheduled__<date>``): a DAG of your own checking the
    pipeline on the generated DAG's cron must find its retrain already requested, not pass for a
    retry of the run that requested it (a second retrain, or its no-drift check withdrawing the
    first one's trigger)."""
    import datetime as dt
    from types import SimpleNamespace

    from mlops_tasks import drift
    from mlops_tasks.airflow.operators import _check_identity
    from mlops_tasks.config import load_pipeline

    run, day = "scheduled__2013-07-14T00:00:00+00:00", dt.date(2013, 7, 14)
    generated = _check_identity({"ti": SimpleNamespace(dag_id="flights_delay_drift_monitor"), "run_id": run})
    yours = _check_identity({"ti": SimpleNamespace(dag_id="flights_delay_drift_hourly"), "run_id": run})
    assert generated == f"flights_delay_drift_monitor/{run}" and yours != generated

    cfg = load_pipeline("flights_delay")
    drifted = {
        "rows": {"reference": 5000, "current": 5000},
        "share_drifted": 1.0,
        "drifted_columns": ["temp"],
        "drifted_critical": [],
        "prediction_drift": None,
        "columns": {},
    }
    first = drift.decide(cfg, drifted, day=day, state=None, check_run_id=generated)
    state = drift.next_state(None, first, day, check_run_id=generated)
    second = drift.decide(cfg, drifted, day=day, state=state, check_run_id=yours)
    assert (first["retrain"], second["status"], second["requested_by"]) == (
        True,
        "already_requested",
        generated,
    )


def test_a_check_deferring_to_a_retrain_whose_event_never_went_out_says_where_to_look() -> None:
    """The trigger of a run whose retrain task never succeeded holds the cooldown: the check that
    defers to it must name that run, and stay quiet once its event exists."""
    from mlops_tasks.airflow.dag_factory import retrain_asset
    from mlops_tasks.airflow.operators import DriftCheckOperator, _unsent_request
    from mlops_tasks.config import load_pipeline

    asset = retrain_asset(load_pipeline("flights_delay"))
    check = DriftCheckOperator(task_id="drift_check", pipeline="flights_delay", inlets=[asset])
    requester = "flights_delay_drift_monitor/scheduled__2013-07-14T00:00:00+00:00"
    deferring = {"status": "cooldown", "retrain": False, "requested_by": requester}
    sent = SimpleNamespace(
        source_dag_id="flights_delay_drift_monitor", source_run_id="scheduled__2013-07-14T00:00:00+00:00"
    )
    other = SimpleNamespace(source_dag_id="flights_delay_drift_monitor", source_run_id="manual__x")

    message = _unsent_request(check, {"inlet_events": {asset: [other]}}, deferring)

    assert message is not None and requester in message and "clear its retrain task" in message
    assert _unsent_request(check, {"inlet_events": {asset: [other, sent]}}, deferring) is None
    unknown = {**deferring, "requested_by": None}  # a state written before run ids were recorded
    assert _unsent_request(check, {"inlet_events": {asset: []}}, unknown) is None
    # and before DAG ids were: the run id alone, which the run's event matches
    legacy = {**deferring, "requested_by": "scheduled__2013-07-14T00:00:00+00:00"}
    assert _unsent_request(check, {"inlet_events": {asset: [other, sent]}}, legacy) is None
    assert _unsent_request(check, {"inlet_events": {asset: [other]}}, legacy) is not None


def test_a_retrain_request_without_an_outlet_to_emit_on_fails_instead_of_announcing_nothing() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from mlops_tasks.airflow.operators import TriggerRetrainingOperator

    request = TriggerRetrainingOperator(
        task_id="request_retraining",
        pipeline="flights_delay",
        decision={"retrain": True, "day": "2013-07-14"},
    )
    with pytest.raises(AirflowFailException, match=r"no outlet asset .* \(mlops://flights_delay/retrain\)"):
        request.execute({"run_id": "manual__1", "ti": SimpleNamespace(dag_id="mine")})


def test_a_link_with_nothing_to_open_is_stored_empty_so_the_ui_finds_it() -> None:
    """Without an XCom for the link, every view of the task logged "XCom not found" at error level."""
    from types import SimpleNamespace

    from mlops_tasks.airflow.links import DriftReportLink

    pushed: dict[str, str] = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))
    DriftReportLink.persist({"ti": ti}, None)
    assert pushed == {DriftReportLink().xcom_key: ""}


def test_every_extra_link_starts_empty_so_a_task_that_skips_or_fails_early_has_one() -> None:
    """A validate of a day without data skips, a train may fail before its run exists: neither
    reaches the code that stores its link, and the UI then logged "XCom not found" for each view."""
    from types import SimpleNamespace

    from mlops_tasks.airflow.dag_factory import build_dags
    from mlops_tasks.airflow.links import StoredLink
    from mlops_tasks.config import load_config

    cfg = load_config(REPO / "configs" / "flights_delay.yaml")
    linked = [t for dag in build_dags(cfg).values() for t in dag.tasks if t.operator_extra_links]
    assert {t.task_id for t in linked} >= {"validate", "train", "evaluate_gate", "register", "drift_check"}
    for task in linked:
        pushed: dict[str, str] = {}
        ti = SimpleNamespace(xcom_push=lambda key, value, pushed=pushed: pushed.__setitem__(key, value))
        if hasattr(task, "expand_input"):  # a mapped task: the operator one map index runs
            task = task.unmap(dict.fromkeys(task.expand_input.value))
        task.pre_execute({"ti": ti})
        assert pushed == {
            link.xcom_key: "" for link in task.operator_extra_links if isinstance(link, StoredLink)
        }
        assert pushed, task.task_id


def test_serving_comes_first_when_tasks_of_several_dags_queue_together() -> None:
    """Absolute weights: by default a training run's mapped ingest/validate (many tasks downstream)
    outranked the day's scoring and publishing."""
    from mlops_tasks.airflow.dag_factory import build_dags
    from mlops_tasks.config import load_config

    dags = build_dags(load_config(REPO / "configs" / "flights_delay.yaml"))
    weights = {
        kind: {(str(task.weight_rule), task.priority_weight) for task in dags[f"flights_delay_{kind}"].tasks}
        for kind in ("batch_inference", "drift_monitor", "training")
    }
    assert weights == {
        "batch_inference": {("absolute", 3), ("absolute", 2)},
        "drift_monitor": {("absolute", 2)},
        "training": {("absolute", 1)},
    }
    shadow = {"has_challenger", "shadow_score", "publish_shadow", "shadow_report", "shadow_settled"}
    assert {
        task.task_id for task in dags["flights_delay_batch_inference"].tasks if task.priority_weight == 2
    } == shadow  # the challenger's units queue after the champion's


def test_the_mlflow_connection_test_button_asks_the_server(mlflow_server: str, monkeypatch) -> None:
    from mlops_tasks import stack
    from mlops_tasks.airflow.hooks import MlflowHook

    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_UP", json.dumps({"conn_type": "mlflow", "host": mlflow_server}))
    dead = f"http://127.0.0.1:{stack.free_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DOWN", json.dumps({"conn_type": "mlflow", "host": dead}))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert MlflowHook("mlflow_up").test_connection() == (
        True,
        f"MLflow tracking server at {mlflow_server} answered",
    )
    ok, message = MlflowHook("mlflow_down").test_connection()
    assert not ok and "127.0.0.1" in message
