"""Airflow discovers the package as a provider (its connection type and extra links are listed) and
loads its "ML models" plugin from the package's entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_dag_parse_cost import HEAVY  # what DAG parsing must not import: plugins load there too

REPO = Path(__file__).resolve().parents[2]


def test_airflow_lists_the_mlflow_connection_type_and_the_extra_links() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "mlops-tasks" in manager.providers
    # hooks as the task runtime (task SDK) resolves them; ProvidersManager.hooks is deprecated
    assert (
        ProvidersManagerTaskRuntime().hooks["mlflow"].hook_class_name
        == "mlops_tasks.airflow.hooks.MlflowHook"
    )
    assert "mlops_tasks.airflow.links.GateReportLink" in manager.extra_links_class_names


def test_the_ml_models_plugin_ships_with_the_package_as_an_entry_point() -> None:
    """Airflow loads the plugin from the ``airflow.plugins`` entry point: an image with the package
    and a git-synced dags/ folder (no plugins/ folder) still serves the "ML models" view."""
    from importlib.metadata import entry_points

    (entry,) = [e for e in entry_points(group="airflow.plugins") if e.name == "mlops_tasks"]
    assert entry.value == "mlops_tasks.airflow.plugin:MlopsPlugin"


PLUGINS_PROBE = """
import json, sys
from airflow import plugins_manager
plugins, errors = plugins_manager._get_plugins()
print(json.dumps({"names": [p.name for p in plugins], "sources": [str(p.source) for p in plugins],
                  "errors": errors}))
"""


@pytest.mark.parametrize("folder", ["repo", "empty"])
def test_airflow_loads_the_plugin_exactly_once_with_or_without_the_plugins_folder(
    folder: str, tmp_path: Path
) -> None:
    """plugins/mlops_plugin.py only re-exports lazily: a class in its namespace would be registered
    from the folder, and the entry point's then reported as a plugin import error."""
    plugins = REPO / "plugins" if folder == "repo" else tmp_path
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins), "AIRFLOW_HOME": str(tmp_path)}
    # As a deployment sees the package: installed only. With the checkout on sys.path (its
    # mlops_tasks.egg-info, written by `pip install -e`), Airflow would see the distribution twice.
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", PLUGINS_PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["names"].count("mlops_tasks") == 1
    (source,) = [s for n, s in zip(result["names"], result["sources"], strict=True) if n == "mlops_tasks"]
    assert "mlops_tasks.airflow.plugin:MlopsPlugin" in source
    assert result["errors"] == {}


def test_the_plugins_folder_shim_still_imports_and_the_plugin_module_is_cheap() -> None:
    probe = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from mlops_plugin import MlopsPlugin, UI_PREFIX; "
        "from mlops_tasks.airflow.plugin import MlopsPlugin as P; assert MlopsPlugin is P; "
        "print(json.dumps([m for m in json.loads(sys.argv[2]) if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(REPO / "plugins"), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_temporary_credentials_reach_the_store_client_with_their_session_token(monkeypatch) -> None:
    """STS credentials without their token are rejected by S3 ("credentials rejected")."""
    import json

    from mlops_tasks.airflow.hooks import ObjectStoreHook

    connection = {
        "conn_type": "aws",
        "login": "ASIAEXAMPLE",
        "password": "secret",
        "extra": {"region_name": "eu-west-1", "aws_session_token": "token-of-the-session"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_STS_S3", json.dumps(connection))
    store = ObjectStoreHook("sts_s3", bucket="b").get_store()
    credentials = store.client._request_signer._credentials
    assert (credentials.access_key, credentials.token) == ("ASIAEXAMPLE", "token-of-the-session")
    assert "token-of-the-session" not in repr(store.settings)


@pytest.mark.parametrize(
    ("verify", "expected"),
    [(None, True), (False, False), ("false", False), ("/etc/ssl/company-ca.pem", "/etc/ssl/company-ca.pem")],
)
def test_the_connections_verify_extra_reaches_the_store_client_and_dvc(monkeypatch, verify, expected) -> None:
    """MinIO behind a certificate of a private CA: its bundle, as Airflow's Amazon connection names it."""
    import json

    from mlops_tasks.airflow.hooks import ObjectStoreHook
    from mlops_tasks.versioning import DVC_REMOTE, dvc_repo

    extra = {"endpoint_url": "https://minio.internal:9000"} | ({} if verify is None else {"verify": verify})
    monkeypatch.setenv(
        "AIRFLOW_CONN_TLS_S3", json.dumps({"conn_type": "aws", "login": "k", "password": "s", "extra": extra})
    )
    store = ObjectStoreHook("tls_s3", bucket="b").get_store()
    assert store.settings.verify == expected
    assert store.client._endpoint.http_session._verify == expected
    with dvc_repo(store) as (_, repo):
        assert repo.config["remote"][DVC_REMOTE].get("ssl_verify", True) == expected


@pytest.mark.parametrize("extra", ["role_arn", "profile_name"])
def test_amazon_connection_extras_that_choose_another_identity_are_refused_naming_them(
    monkeypatch, extra
) -> None:
    """Ignored, they would run the tasks as the worker's own identity instead of the one they name."""
    import json

    from mlops_tasks.airflow.hooks import ConnectionSetupError, ObjectStoreHook

    connection = {"conn_type": "aws", "extra": {extra: "arn:aws:iam::1:role/x", "region_name": "eu-west-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_ROLE_S3", json.dumps(connection))
    with pytest.raises(ConnectionSetupError, match=f"extra '{extra}' is not supported .* Leave login empty"):
        ObjectStoreHook("role_s3", bucket="b").get_store()
