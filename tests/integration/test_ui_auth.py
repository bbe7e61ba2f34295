"""The plugin in the real Airflow API server: the "ML models" app is mounted at /mlops behind Airflow's
login (JWT from POST /auth/token), and the view is listed in the UI navigation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from mlops_tasks import stack
from tests.ui_server import api_server_with_lifecycle, get, get_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[stack.LocalStack, dict[str, Any]]]:
    with api_server_with_lifecycle(tmp_path_factory.mktemp("ui-stack")) as running:
        yield running


@pytest.fixture(scope="module")
def token(server: tuple[stack.LocalStack, dict[str, Any]]) -> str:
    return server[0].api_token()


@pytest.mark.parametrize("path", ["/mlops/", "/mlops/api/status", "/mlops/pipelines/flights_delay"])
def test_anonymous_requests_are_refused(server: tuple[stack.LocalStack, dict[str, Any]], path: str) -> None:
    status, body, _ = get(server[0].airflow_url + path)
    assert status in (401, 403)
    assert "champion" not in body


def test_a_forged_token_is_refused(server: tuple[stack.LocalStack, dict[str, Any]]) -> None:
    status, _, _ = get(server[0].airflow_url + "/mlops/", token="eyJhbGciOiJIUzUxMiJ9.e30.forged")
    assert status in (401, 403)


def test_a_logged_in_user_sees_the_pipeline_and_its_champion(
    server: tuple[stack.LocalStack, dict[str, Any]], token: str
) -> None:
    status, page, headers = get(server[0].airflow_url + "/mlops/", token)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'href="/mlops/pipelines/flights_delay"' in page
    assert '<strong class="champion-version">v2</strong>' in page


def test_report_links_resolve_under_the_mount_and_serve_the_report(
    server: tuple[stack.LocalStack, dict[str, Any]], token: str
) -> None:
    local, state = server
    link = f"/mlops/reports?uri={quote(local.store('mlops').uri(state['drift_html']), safe='')}"
    status, page, _ = get(local.airflow_url + "/mlops/", token)
    assert link in page
    status, report, headers = get(local.airflow_url + link, token)
    assert status == 200 and "Evidently drift report" in report
    assert headers["content-security-policy"].startswith("sandbox")


def test_no_credentials_reach_the_page_or_the_json(
    server: tuple[stack.LocalStack, dict[str, Any]], token: str
) -> None:
    local = server[0]
    user, password = local.ui_login
    bodies = [
        get(local.airflow_url + p, token)[1]
        for p in ("/mlops/", "/mlops/api/status", "/mlops/pipelines/flights_delay")
    ]
    for body in bodies:
        for secret in (stack.LOCAL_SECRET_KEY, stack.LOCAL_ACCESS_KEY, password, token):
            assert secret not in body


def test_the_plugin_lists_the_app_and_the_ml_models_view(
    server: tuple[stack.LocalStack, dict[str, Any]], token: str
) -> None:
    plugins = get_json(server[0].airflow_url + "/api/v2/plugins", token)["plugins"]
    plugin = next(p for p in plugins if p["name"] == "mlops_tasks")
    assert [(a["name"], a["url_prefix"]) for a in plugin["fastapi_apps"]] == [("ML models", "/mlops")]
    view = plugin["external_views"][0]
    # relative: resolved against the UI's <base>, the path of [api] base_url (test_ui_browser.py)
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == (
        "ML models",
        "mlops/",
        "nav",
        "ml-models",
    )
