"""docker-compose.yaml is checked statically (Docker cannot run here): health, executor wiring, and
that it names exactly the connections and bucket the package and the example config use."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_tasks.config import PipelineConfig
from mlops_tasks.stack import connection_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def one_shot(compose: dict[str, Any]) -> set[str]:
    """Services others wait for to *finish* (init containers): they need no healthcheck."""
    return {
        name
        for service in compose["services"].values()
        for name, dep in (service.get("depends_on") or {}).items()
        if dep["condition"] == "service_completed_successfully"
    }


def airflow_env(compose: dict[str, Any]) -> dict[str, str]:
    return compose["services"]["airflow-scheduler"]["environment"]


def fill(template: str) -> str:
    """Replace ${VAR} with a placeholder so JSON connection values can be parsed."""
    return re.sub(r"\$\{[A-Z0-9_]+(:[-?][^}]*)?\}", "x", template)


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    missing = [
        name
        for name, service in compose["services"].items()
        if name not in one_shot(compose) and "test" not in (service.get("healthcheck") or {})
    ]
    assert missing == []


def test_init_services_run_once(compose: dict[str, Any]) -> None:
    assert one_shot(compose) == {"minio-init", "airflow-init"}
    assert all(compose["services"][name]["restart"] == "no" for name in one_shot(compose))


def test_every_dependency_waits_for_health_or_completion(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dep, spec in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dep in one_shot(compose) else "service_healthy"
            assert spec == {"condition": expected}, f"{name} -> {dep}"


def test_airflow_runs_celery_with_redis_broker_and_postgres_backends(compose: dict[str, Any]) -> None:
    env = airflow_env(compose)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        and "@redis:6379/" in env["AIRFLOW__CELERY__BROKER_URL"]
    )
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert compose["services"]["airflow-worker"]["deploy"]["replicas"] == 2


def test_all_airflow_components_share_one_environment(compose: dict[str, Any]) -> None:
    components = ["airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
    envs = [compose["services"][name]["environment"] for name in [*components, "airflow-worker"]]
    assert all(env.items() >= envs[0].items() for env in envs)


def test_connections_are_exactly_those_the_pipeline_config_names(
    compose: dict[str, Any], example_config: PipelineConfig
) -> None:
    expected = connection_env(
        "http://minio:9000",
        "http://mlflow:5000",
        example_config.storage.connection_id,
        example_config.mlflow.connection_id,
    )
    declared = {k: v for k, v in airflow_env(compose).items() if k.startswith("AIRFLOW_CONN_")}
    assert declared.keys() == expected.keys()
    for name, value in declared.items():
        conn, local = json.loads(fill(value)), json.loads(expected[name])
        assert conn.keys() == local.keys() and conn["conn_type"] == local["conn_type"], name
        assert conn.get("extra", {}).keys() == local.get("extra", {}).keys(), name


def test_s3_connection_points_at_minio_and_mlflow_connection_at_the_server(
    compose: dict[str, Any], example_config: PipelineConfig
) -> None:
    env = airflow_env(compose)
    s3 = json.loads(fill(env[f"AIRFLOW_CONN_{example_config.storage.connection_id.upper()}"]))
    mlflow = json.loads(fill(env[f"AIRFLOW_CONN_{example_config.mlflow.connection_id.upper()}"]))
    assert s3["extra"]["endpoint_url"] == "http://minio:9000"
    assert mlflow["host"] == "http://mlflow:5000"


def test_minio_bucket_and_mlflow_artifacts_use_the_configured_bucket(
    compose: dict[str, Any], example_config: PipelineConfig
) -> None:
    services = compose["services"]
    assert services["minio-init"]["environment"]["MLOPS_BUCKET"] == example_config.storage.bucket
    assert (
        f"--artifacts-destination=s3://{example_config.storage.bucket}/mlflow"
        in services["mlflow"]["command"]
    )


def test_airflow_reads_mounted_configs_dags_and_plugins(compose: dict[str, Any]) -> None:
    scheduler = compose["services"]["airflow-scheduler"]
    mounts = {volume.split(":")[1] for volume in scheduler["volumes"]}
    env = airflow_env(compose)
    assert {
        env["MLOPS_TASKS_CONFIG_DIR"],
        env["AIRFLOW__CORE__DAGS_FOLDER"],
        env["AIRFLOW__CORE__PLUGINS_FOLDER"],
    } <= mounts


def test_secrets_come_from_the_env_file_and_every_variable_is_documented(compose: dict[str, Any]) -> None:
    text = (REPO / "docker-compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(?::[-?][^}]*)?\}", text))  # $${X} is escaped
    example = {
        line.split("=", 1)[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used <= example
    assert not re.search(r"(PASSWORD|SECRET)[A-Z_]*: [\"']?[A-Za-z0-9]", text)  # no literal secrets


def test_secrets_must_be_set_and_unauthenticated_services_listen_on_this_host_only(
    compose: dict[str, Any],
) -> None:
    """An unset secret stops `docker compose up` (Airflow would otherwise store connections
    unencrypted, or each container sign its own JWTs); MLflow and Prometheus have no login."""
    text = (REPO / "docker-compose.yaml").read_text()
    example = (REPO / ".env.example").read_text()
    secrets = re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE)
    assert {"AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "POSTGRES_PASSWORD"} <= set(secrets)
    unguarded = sorted({v for v in re.findall(r"\$\{([A-Z0-9_]+)\}", text) if v in secrets})
    assert unguarded == []
    for name in ("mlflow", "prometheus"):
        assert all(p.startswith("127.0.0.1:") for p in compose["services"][name]["ports"]), name
    assert "POSTGRES_PASSWORD" not in " ".join(compose["services"]["mlflow"]["command"])
    init = " ".join(compose["services"]["minio-init"]["command"])
    assert "policy attach local readwrite" not in init and "arn:aws:s3:::$$MLOPS_BUCKET/*" in init


def env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_env_example_ships_no_secret_and_compose_refuses_to_start_without_each() -> None:
    """A secret in .env.example passes the `${VAR:?}` check and is public: `cp .env.example .env`
    would start a stack whose JWT key, passwords and root accounts everyone knows."""
    example = env_example()
    secrets = {k for k in example if re.search(r"PASSWORD|SECRET|FERNET", k)}
    assert {
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "MLOPS_S3_SECRET_KEY",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_API_SECRET_KEY",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_ADMIN_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
    } <= secrets
    assert {k: v for k, v in example.items() if k in secrets and v} == {}
    assert "change-me" not in (REPO / ".env.example").read_text()
    # each one with a command that generates it, on the line above
    lines = (REPO / ".env.example").read_text().splitlines()
    for name in secrets:
        above = lines[lines.index(f"{name}=") - 1]
        assert above.startswith("# secret: python -c"), name
    # every reference fails on empty as on unset (`:?`; `?` alone accepts an empty value)
    text = (REPO / "docker-compose.yaml").read_text()
    refs = re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)([^}]*)\}", text)
    assert {name for name, _ in refs} >= secrets
    assert [(n, rest) for n, rest in refs if n in secrets and not rest.startswith(":?")] == []
    # settings that are not secrets keep working defaults
    assert all(v for k, v in example.items() if k not in secrets)


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in compose["services"].items() if "image" in s}
    loose = {n: i for n, i in images.items() if ":" not in i or i.endswith(":latest")}
    assert loose == {}
    assert images["minio"].startswith("minio/minio:RELEASE.")
    assert images["minio-init"].startswith("minio/mc:RELEASE.")


def test_the_env_file_never_enters_the_build_context() -> None:
    assert ".env" in (REPO / ".dockerignore").read_text().splitlines()


def test_the_env_file_is_never_committed_but_its_template_is() -> None:
    """docs/deployment.md: the secrets live in .env only, which must never be committed."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = [".env", ".env.local", ".env.production", ".env.example"]
    # --no-index: the rules alone, whether or not a file is tracked or exists
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *names], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.stdout.split() == [".env", ".env.local", ".env.production"], result.stderr
