"""The "ML models" app against a real S3 endpoint and a real MLflow server, through FastAPI's TestClient.

Airflow's ``get_user`` dependency is overridden only for the logged-in client; the anonymous client
goes through the real one. State is one short lifecycle (tests/ui_state.py): v1, v2 promoted (v2 is the
champion), v3 rejected after a drift-triggered retraining, a drift report, predictions, lineage of v2.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from airflow.api_fastapi.app import create_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from mlops_tasks import stack
from mlops_tasks.config import CONFIG_DIR_ENV, PipelineConfig, load_config
from mlops_tasks.status import pipeline_status
from mlops_tasks.storage import ObjectStore, S3Settings
from mlops_tasks.ui.app import REPORT_CSP, Sources, build_app
from tests.conftest import EXAMPLE_CONFIG, make_store
from tests.ui_state import isolated_config, seed_lifecycle, write_drift_report, write_gate_report


@pytest.fixture(scope="module")
def lifecycle(s3_endpoint: str, mlflow_server: str) -> dict[str, Any]:
    store = make_store(s3_endpoint)
    cfg = isolated_config(load_config(EXAMPLE_CONFIG), store.bucket)
    return {"store": store, "cfg": cfg, "mlflow": mlflow_server, **seed_lifecycle(store, cfg, mlflow_server)}


ADMIN = SimpleAuthManagerUser(username="admin", role="admin")


def client_for(sources: Sources, *, user: SimpleAuthManagerUser | None = ADMIN) -> TestClient:
    """A client logged in as ``user`` (None: anonymous), authorized by Airflow's configured auth manager
    (the simple one), as in the API server."""
    create_auth_manager()
    app = build_app(sources)
    if user is not None:
        app.dependency_overrides[get_user] = lambda: user
    return TestClient(app)


def fixed_sources(pipelines: list[tuple[PipelineConfig, ObjectStore]], tracking_uri: str) -> Sources:
    stores = {cfg.name + cfg.prefix: store for cfg, store in pipelines}
    return Sources(
        configs=lambda: [cfg for cfg, _ in pipelines],
        store=lambda cfg: stores[cfg.name + cfg.prefix],
        mlflow=lambda cfg: (tracking_uri, tracking_uri),
    )


@pytest.fixture(scope="module")
def client(lifecycle: dict[str, Any]) -> Iterator[TestClient]:
    with client_for(fixed_sources([(lifecycle["cfg"], lifecycle["store"])], lifecycle["mlflow"])) as c:
        yield c


@pytest.fixture(scope="module")
def anonymous(lifecycle: dict[str, Any]) -> Iterator[TestClient]:
    sources = fixed_sources([(lifecycle["cfg"], lifecycle["store"])], lifecycle["mlflow"])
    with client_for(sources, user=None) as c:
        yield c


def text_of(html: str) -> str:
    """The page's visible text, whitespace-normalised (tags dropped)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def missing_bucket(s3_endpoint: str) -> ObjectStore:
    """A store on a bucket that was never created."""
    return ObjectStore(
        S3Settings(
            bucket="no-such-bucket-ui",
            endpoint_url=s3_endpoint,
            aws_access_key_id=stack.LOCAL_ACCESS_KEY,
            aws_secret_access_key=stack.LOCAL_SECRET_KEY,
            max_attempts=1,
        )
    )


def report_url(uri: str) -> str:
    return f"/reports?uri={quote(uri, safe='')}"


def test_overview_shows_the_champion_version_metric_and_promotion_time(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert '<strong class="champion-version">v2</strong> roc_auc 0.7400' in page.text
    assert re.search(r"promoted \d{4}-\d\d-\d\d \d\d:\d\d UTC", page.text)


def test_overview_shows_the_rejected_last_gate_with_its_reason_and_report_link(
    client: TestClient, lifecycle: dict[str, Any]
) -> None:
    page = client.get("/").text
    assert "rejected" in page and "rejected: roc_auc 0.6900" in page
    assert report_url(lifecycle["store"].uri(lifecycle["gate_html"])) in page.replace("&amp;", "&")


def test_overview_shows_the_last_training_run_and_its_drift_trigger(client: TestClient) -> None:
    assert "finished via drift" in text_of(client.get("/").text)


def test_overview_shows_drift_status_share_and_the_evidently_report_link(
    client: TestClient, lifecycle: dict[str, Any]
) -> None:
    page = client.get("/").text
    assert '<span class="drift-status"><span class="pill bad">drift</span></span> 2013-03-09' in page
    assert "42% of columns drifted" in page
    assert report_url(lifecycle["store"].uri(lifecycle["drift_html"])) in page


def test_overview_shows_the_last_batch_inference_and_the_champion_data_version(
    client: TestClient, lifecycle: dict[str, Any]
) -> None:
    text = text_of(client.get("/").text)
    assert "2013-03-08 1234 rows by v2" in text
    assert lifecycle["versions"][1]["data_version"] in text


def test_api_status_is_the_status_view_model(client: TestClient, lifecycle: dict[str, Any]) -> None:
    expected = pipeline_status(lifecycle["store"], lifecycle["cfg"], tracking_uri=lifecycle["mlflow"])
    assert client.get("/api/status").json() == {"pipelines": [json.loads(json.dumps(expected))]}


def test_drill_down_charts_every_version_and_rings_the_champion(
    client: TestClient, lifecycle: dict[str, Any]
) -> None:
    page = client.get(f"/pipelines/{lifecycle['cfg'].name}")
    assert page.status_code == 200
    svg = page.text[page.text.index("<svg") : page.text.index("</svg>")]
    points = re.findall(r"<title>(v\d+: roc_auc [\d.]+ \(\w+\))</title>", svg)
    assert points == [
        "v1: roc_auc 0.7000 (promote)",
        "v2: roc_auc 0.7400 (promote)",
        "v3: roc_auc 0.6900 (reject)",
    ]
    assert svg.count('r="9"') == 1  # the champion's ring


def test_drill_down_links_to_mlflow_and_the_airflow_dag_runs(
    client: TestClient, lifecycle: dict[str, Any]
) -> None:
    cfg, mlflow = lifecycle["cfg"], lifecycle["mlflow"]
    page = client.get(f"/pipelines/{cfg.name}").text
    for kind in ("training", "batch_inference", "drift_monitor"):
        assert f'href="/dags/{cfg.name}_{kind}" target="_top"' in page
    assert f'href="{mlflow}/#/models/{cfg.registered_model_name}/versions/2"' in page
    assert re.search(
        rf'href="{re.escape(mlflow)}/#/experiments/\d+/runs/{lifecycle["versions"][1]["run_id"]}"', page
    )


def test_mlflow_links_go_to_the_ui_address_of_the_connection_not_the_workers_tracking_uri(
    lifecycle: dict[str, Any],
) -> None:
    """docker-compose: tasks reach MLflow at http://mlflow:5000, browsers at the connection's ui_url."""
    cfg, ui = lifecycle["cfg"], "https://mlflow.example.org"
    sources = fixed_sources([(cfg, lifecycle["store"])], lifecycle["mlflow"])
    with client_for(dataclasses.replace(sources, mlflow=lambda c: (lifecycle["mlflow"], ui))) as client:
        page = client.get(f"/pipelines/{cfg.name}").text
        status = client.get("/api/status").json()["pipelines"][0]
    assert f'href="{ui}/#/models/{cfg.registered_model_name}/versions/2"' in page
    assert re.search(rf'href="{re.escape(ui)}/#/experiments/\d+/runs/', page)
    assert lifecycle["mlflow"] not in page
    assert status["last_training"]["url"].startswith(f"{ui}/#/experiments/")


def test_drill_down_shows_the_champions_lineage_with_report_links(
    client: TestClient, lifecycle: dict[str, Any]
) -> None:
    page = client.get(f"/pipelines/{lifecycle['cfg'].name}").text
    v2 = lifecycle["versions"][1]
    assert f"Lineage of {lifecycle['cfg'].registered_model_name} v2" in page
    assert f"DVC data version          {v2['data_version']}" in page
    assert "validation date=2013-03-01" in page


def test_a_lineage_record_that_cannot_be_read_costs_only_its_own_section(
    client: TestClient, lifecycle: dict[str, Any]
) -> None:
    """A record edited by hand (a field of the wrong type): the page stays, says why, and keeps the
    version history and links (it answered 503 as a whole)."""
    from mlops_tasks.lineage import record_key

    cfg, store = lifecycle["cfg"], lifecycle["store"]
    key = record_key(cfg, cfg.registered_model_name, 2)
    kept = store.get_bytes(key)
    store.put_json(key, {**store.get_json(key), "training_window": ["2013-02-01", "2013-02-28"]})
    try:
        response = client.get(f"/pipelines/{cfg.name}")
    finally:
        store.put_bytes(key, kept)
    assert response.status_code == 200
    assert "The lineage record cannot be shown: lineage record s3://" in response.text
    assert "wrong types [&#x27;training_window (list, expected dict)&#x27;]" in response.text
    assert f'href="/dags/{cfg.name}_training" target="_top"' in response.text


def test_unknown_pipeline_is_not_found(client: TestClient) -> None:
    assert client.get("/pipelines/no_such_pipeline").status_code == 404


def test_drift_html_report_is_served_sandboxed(client: TestClient, lifecycle: dict[str, Any]) -> None:
    response = client.get(report_url(lifecycle["store"].uri(lifecycle["drift_html"])))
    assert response.status_code == 200
    assert "Evidently drift report" in response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == REPORT_CSP


def test_gate_json_report_is_served_as_json(client: TestClient, lifecycle: dict[str, Any]) -> None:
    uri = lifecycle["store"].uri(lifecycle["gate_html"].removesuffix(".html") + ".json")
    response = client.get(report_url(uri))
    assert response.headers["content-type"] == "application/json"
    assert response.json()["reason"] == "rejected: roc_auc 0.6900"


@pytest.mark.parametrize(
    ("uri", "status"),
    [
        ("s3://{bucket}/{prefix}/curated/date=2013-03-01/_SUCCESS", 400),  # not html/json
        ("s3://{bucket}/{prefix}/state/drift.json", 404),  # outside reports/ and lineage/
        ("s3://{bucket}/{prefix}/reports/../state/drift.json", 400),
        ("s3://{bucket}/{prefix}/reports//drift.json", 400),
        ("s3://{bucket}/other_pipeline/reports/drift/date=2013-03-09/drift.json", 404),
        ("s3://another-bucket/{prefix}/reports/drift/date=2013-03-09/drift.json", 404),
        ("https://{bucket}.s3.amazonaws.com/{prefix}/reports/drift/date=2013-03-09/drift.json", 400),
        ("{prefix}/reports/drift/date=2013-03-09/drift.json", 400),
        ("s3://{bucket}/{prefix}/reports/drift/date=2013-03-09/drift.json%00.html", 400),
    ],
)
def test_reports_outside_a_pipelines_report_area_are_refused(
    client: TestClient, lifecycle: dict[str, Any], uri: str, status: int
) -> None:
    target = uri.format(bucket=lifecycle["store"].bucket, prefix=lifecycle["cfg"].prefix)
    assert client.get(report_url(target)).status_code == status


def test_missing_report_is_not_found(client: TestClient, lifecycle: dict[str, Any]) -> None:
    uri = lifecycle["store"].uri(f"{lifecycle['cfg'].prefix}/reports/drift/date=2099-01-01/drift.html")
    assert client.get(report_url(uri)).status_code == 404


@pytest.mark.parametrize(
    "path", ["/", "/api/status", "/pipelines/flights_delay", "/reports?uri=s3%3A%2F%2Fb%2Fk.json"]
)
def test_anonymous_requests_are_unauthorized(anonymous: TestClient, path: str) -> None:
    response = anonymous.get(path)
    assert response.status_code == 401
    assert "champion" not in response.text


@pytest.mark.parametrize(
    "path", ["/", "/api/status", "/pipelines/{name}", "/reports?uri={drift_html}"], ids=lambda p: p[:12]
)
def test_a_logged_in_user_without_dag_read_access_is_forbidden(lifecycle: dict[str, Any], path: str) -> None:
    """Being logged in is not enough: the view shows what the pipelines' DAGs produce, so it takes
    Airflow's permission to read DAGs (a user without a role has none)."""
    sources = fixed_sources([(lifecycle["cfg"], lifecycle["store"])], lifecycle["mlflow"])
    drift_html = quote(lifecycle["store"].uri(lifecycle["drift_html"]), safe="")
    with client_for(sources, user=SimpleAuthManagerUser(username="nobody", role=None)) as client:
        response = client.get(path.format(name=lifecycle["cfg"].name, drift_html=drift_html))
    assert response.status_code == 403
    assert "champion" not in response.text and "Evidently" not in response.text


def test_a_user_sees_only_the_pipelines_whose_dags_the_auth_manager_lets_them_read(
    lifecycle: dict[str, Any], store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An auth manager with per-DAG permissions (FAB roles, Keycloak, multi-team): the rows, pages
    and reports of the other pipelines are absent. The simple auth manager grants all or nothing, so
    its per-DAG check is given a policy here: this user may read the other pipeline's DAGs only."""
    from airflow.api_fastapi.app import get_auth_manager

    other = isolated_config(load_config(EXAMPLE_CONFIG), store.bucket).model_copy(update={"name": "team_b"})
    sources = fixed_sources([(lifecycle["cfg"], lifecycle["store"]), (other, store)], lifecycle["mlflow"])
    drift_html = quote(lifecycle["store"].uri(lifecycle["drift_html"]), safe="")
    with client_for(sources, user=SimpleAuthManagerUser(username="team-b", role="viewer")) as client:
        manager = get_auth_manager()
        allowed = manager.is_authorized_dag

        def per_dag(*, method: str, user: Any, access_entity: Any = None, details: Any = None) -> bool:
            if details is not None and details.id and not details.id.startswith(other.name + "_"):
                return False
            return allowed(method=method, user=user, access_entity=access_entity, details=details)

        monkeypatch.setattr(manager, "is_authorized_dag", per_dag)
        names = [row["pipeline"] for row in client.get("/api/status").json()["pipelines"]]
        assert names == [other.name]
        assert lifecycle["cfg"].name not in client.get("/").text
        assert client.get(f"/pipelines/{lifecycle['cfg'].name}").status_code == 404
        assert client.get(f"/reports?uri={drift_html}").status_code == 404
        assert client.get(f"/pipelines/{other.name}").status_code == 200


def test_in_multi_team_mode_a_user_sees_only_the_pipelines_of_their_team(
    lifecycle: dict[str, Any], store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DAG's team goes with the permission check: the simple auth manager lets a viewer read
    only their team's DAGs, and without the team every DAG looked like no team's."""
    from airflow.models.dag import DagModel

    other = isolated_config(load_config(EXAMPLE_CONFIG), store.bucket).model_copy(update={"name": "team_b"})
    kinds = ("training", "batch_inference", "drift_monitor")
    teams = {
        cfg.dag_id(kind): team
        for cfg, team in ((lifecycle["cfg"], "team_a"), (other, "team_b"))
        for kind in kinds
    }
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    # the metadata database's bundle-to-team table, as the API server reads it
    monkeypatch.setattr(
        DagModel,
        "get_dag_id_to_team_name_mapping",
        staticmethod(lambda dag_ids, **_: {d: teams[d] for d in dag_ids}),
    )
    sources = fixed_sources([(lifecycle["cfg"], lifecycle["store"]), (other, store)], lifecycle["mlflow"])
    alice = SimpleAuthManagerUser(username="alice", role="viewer", teams=["team_a"])
    with client_for(sources, user=alice) as client:
        names = [row["pipeline"] for row in client.get("/api/status").json()["pipelines"]]
        assert names == [lifecycle["cfg"].name]
        assert client.get(f"/pipelines/{other.name}").status_code == 404


def test_a_pipeline_without_models_shows_no_champion_and_an_empty_drill_down(
    store: ObjectStore, mlflow_server: str
) -> None:
    cfg = isolated_config(load_config(EXAMPLE_CONFIG), store.bucket)
    with client_for(fixed_sources([(cfg, store)], mlflow_server)) as client:
        assert "no champion yet" in client.get("/").text
        detail = client.get(f"/pipelines/{cfg.name}")
    assert detail.status_code == 200
    assert "No gate metrics recorded yet." in detail.text and "No lineage record yet." in detail.text


def test_a_pipeline_whose_bucket_is_missing_shows_an_error_row_and_the_others_still_render(
    lifecycle: dict[str, Any], s3_endpoint: str
) -> None:
    missing = missing_bucket(s3_endpoint)
    broken = isolated_config(load_config(EXAMPLE_CONFIG), missing.bucket)
    sources = fixed_sources([(broken, missing), (lifecycle["cfg"], lifecycle["store"])], lifecycle["mlflow"])
    with client_for(sources) as client:
        rows = client.get("/api/status").json()["pipelines"]
        page = client.get("/").text
    assert "no-such-bucket-ui" in rows[0]["error"] and "does not exist" in rows[0]["error"]
    assert rows[1]["champion"]["version"] == "2"
    assert 'class="error"' in page and '<strong class="champion-version">v2</strong>' in page


def test_pages_never_show_connection_credentials(
    lifecycle: dict[str, Any], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real Airflow connections (as in the API server), with MLflow basic-auth credentials
    in the tracking URI: neither the S3 keys nor the MLflow login appear in any response."""
    cfg = lifecycle["cfg"]
    with_login = lifecycle["mlflow"].replace("http://", "http://ui-user:ui-secret-pw@")
    for key, value in stack.connection_env(
        s3_endpoint, with_login, cfg.storage.connection_id, cfg.mlflow.connection_id
    ).items():
        monkeypatch.setenv(key, value)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")  # the hook sets them from the connection; restored after the test
    with client_for(Sources(configs=lambda: [cfg])) as client:
        responses = [
            client.get(path)
            for path in (
                "/",
                "/api/status",
                f"/pipelines/{cfg.name}",
                report_url(lifecycle["store"].uri(lifecycle["drift_html"])),
            )
        ]
    assert [r.status_code for r in responses] == [200, 200, 200, 200]
    assert "v2" in responses[0].text  # the connections really served the data
    for response in responses:
        for secret in (stack.LOCAL_SECRET_KEY, stack.LOCAL_ACCESS_KEY, "ui-secret-pw", "ui-user"):
            assert secret not in response.text


def test_text_from_reports_is_escaped(store: ObjectStore, mlflow_server: str) -> None:
    cfg = isolated_config(load_config(EXAMPLE_CONFIG), store.bucket)
    version = {"run_id": "r1", "decision": {"promote": False, "reason": "<script>alert(1)</script> & more"}}
    write_gate_report(store, cfg, version)
    with client_for(fixed_sources([(cfg, store)], mlflow_server)) as client:
        page = client.get("/")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page.text
    assert "<script" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_drill_down_of_a_pipeline_whose_bucket_is_missing_is_unavailable(
    s3_endpoint: str, mlflow_server: str
) -> None:
    missing = missing_bucket(s3_endpoint)
    cfg = isolated_config(load_config(EXAMPLE_CONFIG), missing.bucket)
    with client_for(fixed_sources([(cfg, missing)], mlflow_server)) as client:
        page = client.get(f"/pipelines/{cfg.name}")
    assert page.status_code == 503
    assert "no-such-bucket-ui" in page.text and "does not exist" in page.text


def test_a_metric_that_is_not_finite_is_no_point_of_the_chart() -> None:
    from mlops_tasks.ui.render import metric_chart
    from mlops_tasks.ui.views import _number

    assert [_number(v) for v in ("nan", "inf", "-inf", "0.7", None, "x")] == [
        None,
        None,
        None,
        0.7,
        None,
        None,
    ]
    history = [
        {"version": "1", "value": float("nan"), "decision": "promote", "aliases": []},
        {"version": "2", "value": 0.5, "decision": "promote", "aliases": []},
        {"version": "3", "value": 0.6, "decision": "promote", "aliases": ["champion"]},
    ]
    svg = metric_chart(history, "roc_auc")
    assert "nan" not in svg and ">v1<" not in svg and ">v2<" in svg and ">v3<" in svg


def test_a_broken_config_file_is_one_error_row_and_the_other_pipelines_still_render(
    lifecycle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flights_delay.yaml").write_text(EXAMPLE_CONFIG.read_text())
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    sources = Sources(store=lambda cfg: lifecycle["store"], mlflow=lambda cfg: (lifecycle["mlflow"],) * 2)
    with client_for(sources) as client:
        rows = client.get("/api/status").json()["pipelines"]
        page = client.get("/")
    assert page.status_code == 200
    assert rows[0]["pipeline"] == "broken" and "broken.yaml" in rows[0]["error"]
    assert rows[1]["pipeline"] == "flights_delay" and "error" not in rows[1]


def _only(allowed: Callable[..., bool], prefix: str, *, details: Any = None, **check: Any) -> bool:
    """An auth manager's per-DAG check, limited to the DAGs whose ids start with ``prefix``."""
    if details is not None and details.id and not details.id.startswith(prefix):
        return False
    return allowed(details=details, **check)


def test_a_broken_config_s_row_shows_only_to_users_who_may_read_its_error_dag(
    lifecycle: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its error quotes the file's values (a bucket name here): with per-DAG permissions, a user of
    another team must not read it where Airflow would not show them the error DAG."""
    from airflow.api_fastapi.app import get_auth_manager

    (tmp_path / "flights_delay.yaml").write_text(EXAMPLE_CONFIG.read_text())
    (tmp_path / "team-b.fraud.yaml").write_text("name: team_b_fraud\nstorage: {bucket: TeamB_Private}\n")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    sources = Sources(store=lambda cfg: lifecycle["store"], mlflow=lambda cfg: (lifecycle["mlflow"],) * 2)
    readers = {"team-a": "flights_delay_", "team-b": "mlops_config_error_team_b_fraud"}
    for user, readable_prefix in readers.items():
        with (
            client_for(sources, user=SimpleAuthManagerUser(username=user, role="viewer")) as client,
            monkeypatch.context() as patch,
        ):
            manager = get_auth_manager()
            patch.setattr(
                manager,
                "is_authorized_dag",
                functools.partial(_only, manager.is_authorized_dag, readable_prefix),
            )
            rows = client.get("/api/status").json()["pipelines"]
            page = client.get("/").text
        if user == "team-a":
            assert [row["pipeline"] for row in rows] == ["flights_delay"]
            assert "TeamB_Private" not in page and "team-b" not in page
        else:
            assert [row["pipeline"] for row in rows] == ["team-b.fraud"]
            assert "TeamB_Private" in rows[0]["error"]


def test_reports_answer_503_when_the_store_is_unavailable(
    lifecycle: dict[str, Any], s3_endpoint: str
) -> None:
    missing = missing_bucket(s3_endpoint)
    with client_for(fixed_sources([(lifecycle["cfg"], missing)], lifecycle["mlflow"])) as client:
        response = client.get(report_url(lifecycle["store"].uri(lifecycle["drift_html"])))
    assert response.status_code == 503
    assert "no-such-bucket-ui" in response.json()["detail"]


def test_api_status_is_strict_json_when_a_report_holds_nan(store: ObjectStore, mlflow_server: str) -> None:
    cfg = isolated_config(load_config(EXAMPLE_CONFIG), store.bucket)
    write_drift_report(store, cfg, "drift", float("nan"))
    with client_for(fixed_sources([(cfg, store)], mlflow_server)) as client:
        response = client.get("/api/status")
    assert response.status_code == 200
    assert response.json()["pipelines"][0]["last_drift"]["share_drifted"] is None


def test_a_missing_config_directory_is_one_error_row_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "no-such-dir"))
    with client_for(Sources()) as client:
        rows = client.get("/api/status").json()["pipelines"]
    assert len(rows) == 1 and "no-such-dir" in rows[0]["error"] and CONFIG_DIR_ENV in rows[0]["error"]
