"""A logged-in user opens the "ML models" view in headless Chromium, in the real Airflow API server.

Chromium is driven over the DevTools protocol (``websockets``, installed with Airflow): the login is
the ``_token`` cookie the Airflow UI sets, put in place with ``Network.setCookie``. Screenshots go to
tests/output/ (git-ignored). Needs /usr/bin/chromium (Debian package ``chromium``): skipped without it
on a laptop, a failure when CI=true.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from mlops_tasks import stack
from tests.ui_server import api_server_with_lifecycle

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parent.parent / "output"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


class Browser:
    """One Chromium tab over the DevTools protocol: navigate, evaluate JavaScript, screenshot."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll a JavaScript expression until it is truthy; fail naming it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {expression!r} on {self.evaluate('location.href')}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


def require_chromium() -> None:
    if not CHROMIUM.exists():
        message = (
            f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI requires it")
        pytest.skip(message)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[stack.LocalStack, dict[str, Any]]]:
    require_chromium()
    with api_server_with_lifecycle(tmp_path_factory.mktemp("ui-browser-stack")) as running:
        yield running


@pytest.fixture
def browser(server: tuple[stack.LocalStack, dict[str, Any]]) -> Iterator[Browser]:
    with logged_in_browser(server[0]) as tab:
        yield tab


@contextmanager
def logged_in_browser(local: stack.LocalStack) -> Iterator[Browser]:
    """A fresh headless Chromium whose ``_token`` cookie is the admin's Airflow login."""
    # Chromium's helper processes may still touch the profile while it is removed.
    with tempfile.TemporaryDirectory(prefix="mlops-chromium-", ignore_cleanup_errors=True) as profile:
        argv = [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1400,900",
            "about:blank",
        ]
        process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                assert process.poll() is None and time.monotonic() < deadline, "Chromium did not start"
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
                page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                tab = Browser(ws)
                tab.call("Network.enable")
                tab.call(
                    "Network.setCookie",
                    name="_token",
                    value=local.api_token(),
                    url=local.airflow_url + "/",
                    httpOnly=True,
                    sameSite="Lax",
                )
                yield tab
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # the browser and its helper processes
            process.wait(15)


def test_the_view_shows_the_champion_and_drift_status_and_serves_the_drift_report(
    server: tuple[stack.LocalStack, dict[str, Any]], browser: Browser
) -> None:
    local = server[0]
    browser.open(local.airflow_url + "/mlops/")
    assert browser.evaluate("document.querySelector('.champion-version').textContent") == "v2"
    assert browser.evaluate("document.querySelector('.drift-status').textContent") == "drift"
    browser.screenshot(OUTPUT / "ml_models_view.png")

    report = browser.evaluate("[...document.links].find(a => a.textContent === 'Evidently report').href")
    browser.open(report)
    assert browser.evaluate("document.querySelector('h1').textContent") == "Evidently drift report"
    browser.screenshot(OUTPUT / "ml_models_drift_report.png")


def test_the_drill_down_draws_the_metric_history(
    server: tuple[stack.LocalStack, dict[str, Any]], browser: Browser
) -> None:
    browser.open(server[0].airflow_url + "/mlops/pipelines/flights_delay")
    assert browser.evaluate("document.querySelectorAll('svg circle[r=\"5\"]').length") == 3
    assert browser.evaluate("document.querySelector('svg').getBoundingClientRect().width") > 0
    browser.screenshot(OUTPUT / "ml_models_drill_down.png")


def test_the_airflow_ui_embeds_the_view_under_its_nav_route(
    server: tuple[stack.LocalStack, dict[str, Any]], browser: Browser
) -> None:
    browser.open(server[0].airflow_url + "/plugin/ml-models")
    src = browser.wait_for("document.querySelector('iframe') && document.querySelector('iframe').src", 90)
    assert src.endswith("/mlops/")
    browser.wait_for(
        "(() => { const d = document.querySelector('iframe').contentDocument;"
        " return d && d.querySelector('.champion-version') && d.querySelector('.champion-version').textContent; })()",
        60,
    )
    browser.screenshot(OUTPUT / "airflow_ui_ml_models.png")


def test_behind_a_proxy_sub_path_the_nav_view_and_its_report_links_stay_under_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``[api] base_url`` with a path (Airflow behind a proxy at /airflow): the nav route embeds the
    view from /airflow/mlops/, not from the host's root, and the view's report links keep the path."""
    require_chromium()
    with (
        api_server_with_lifecycle(tmp_path_factory.mktemp("ui-subpath-stack"), "/airflow") as (local, _),
        logged_in_browser(local) as browser,
    ):
        base = local.airflow_base_url
        assert base == local.airflow_url + "/airflow"
        browser.open(base + "/plugin/ml-models")
        src = browser.wait_for("document.querySelector('iframe') && document.querySelector('iframe').src", 90)
        assert src == base + "/mlops/"
        view = "document.querySelector('iframe').contentDocument"
        assert (
            browser.wait_for(f"{view} && {view}.querySelector('.champion-version')?.textContent", 60) == "v2"
        )
        report = browser.evaluate(f"[...{view}.links].find(a => a.textContent === 'Evidently report').href")
        assert report.startswith(base + "/mlops/reports?")
        browser.screenshot(OUTPUT / "airflow_ui_ml_models_sub_path.png")
        # the drill-down's links leave the view for Airflow's DAG pages, under the sub-path too
        browser.open(base + "/mlops/pipelines/flights_delay")
        dag_links = browser.evaluate("[...document.links].filter(a => a.target === '_top').map(a => a.href)")
        assert dag_links and all(link.startswith(base + "/dags/flights_delay_") for link in dag_links)
