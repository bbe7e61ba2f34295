"""A small client of Airflow 3's REST API (``/api/v2``), for the demo and the scheduler tests.

It talks to a running api-server over HTTP with a bearer token, exactly as an external system would
(e.g. to request retraining by posting an asset event), and imports nothing from Airflow.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

FINISHED = {"success", "failed"}
TRANSIENT_ATTEMPTS = 4
RETRY_SECONDS = 1.0


class AirflowApiError(RuntimeError):
    """The api-server refused a request; the message has the method, path, status and detail."""


class AirflowApi:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    @classmethod
    def login(cls, base_url: str, username: str, password: str) -> AirflowApi:
        request = urllib.request.Request(
            base_url.rstrip("/") + "/auth/token",
            data=json.dumps({"username": username, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=15) as resp:
            return cls(base_url, json.loads(resp.read())["access_token"])

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, **query: Any) -> Any:
        url = f"{self.base_url}/api/v2{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        # Reads and PATCHes may be sent again: a poll that meets an api-server restarting or a dropped
        # connection must not end a long wait (the demo's) with a traceback. A POST is sent once.
        attempts = TRANSIENT_ATTEMPTS if method in ("GET", "PATCH") else 1
        attempt = 1
        while True:
            try:
                with urllib.request.urlopen(request, timeout=30) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code < 500 or attempt == attempts:
                    raise AirflowApiError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out
                if attempt == attempts:
                    reason = getattr(exc, "reason", exc)
                    raise AirflowApiError(
                        f"{method} {path}: the api-server at {self.base_url} did not answer "
                        f"({reason}) through {attempts} attempt(s)"
                    ) from None
            time.sleep(RETRY_SECONDS * attempt)
            attempt += 1

    # -- DAGs and runs ------------------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, logical_date: str, conf: dict[str, Any] | None = None) -> str:
        """Start a run with a logical date (the example's data is from 2013); returns its run id."""
        body = {"logical_date": f"{logical_date}T00:00:00Z", "conf": conf or {}}
        return self.request("POST", f"/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", limit=100, order_by="-run_after")["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return self.request("GET", path, limit=1000)["task_instances"]

    def asset_id(self, uri: str) -> int:
        assets = self.request("GET", "/assets", uri_pattern=uri, limit=10)["assets"]
        for asset in assets:
            if asset["uri"] == uri:
                return asset["id"]
        raise AirflowApiError(f"no asset with uri {uri}")

    def post_asset_event(self, uri: str, extra: dict[str, Any]) -> dict[str, Any]:
        """What an external system does to request retraining (docs/operators.md has the curl)."""
        return self.request("POST", "/assets/events", {"asset_id": self.asset_id(uri), "extra": extra})

    # -- waiting ------------------------------------------------------------------------------------

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float,
        progress: Callable[[str], None] = print,
        poll: float = 2.0,
    ) -> dict[str, Any]:
        """Poll until the run finishes, reporting each change of its task states."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            run = self.run(dag_id, run_id)
            counts: dict[str, int] = {}
            for ti in self.task_instances(dag_id, run_id):
                state = ti["state"] or "scheduled"
                counts[state] = counts.get(state, 0) + 1
            line = f"{dag_id} [{run['state']}] " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            if line != last:
                progress(line)
                last = line
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise AirflowApiError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s ({line})")
            time.sleep(poll)

    def wait_for_new_run(
        self, dag_id: str, known: set[str], *, timeout: float, run_type: str | None = None, poll: float = 2.0
    ) -> dict[str, Any]:
        """The first run of ``dag_id`` not in ``known`` (optionally of one run type)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs(dag_id):
                if run["dag_run_id"] not in known and (run_type is None or run["run_type"] == run_type):
                    return run
            time.sleep(poll)
        raise AirflowApiError(f"no new {run_type or ''} run of {dag_id} within {timeout:.0f}s")
