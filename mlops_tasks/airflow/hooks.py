"""Hooks own connections: they turn an Airflow connection into the settings the stage modules use.

Secrets stay in the connection (``AIRFLOW_CONN_*`` or a secrets backend): they are passed to
clients in memory, never logged, never put in XCom.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from mlops_tasks.errors import DataError

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from mlops_tasks.storage import ObjectStore, S3Settings


HTTP_SCHEMES = ("http", "https")


class ConnectionSetupError(DataError):
    """A connection that names no usable service: retrying the task cannot fix it, so it fails at
    once (see :class:`mlops_tasks.airflow.operators.PipelineOperator`), not after a minute of retries."""


def connection_url(conn: Connection, bare_scheme: str) -> str:
    """The URL an HTTP-ish connection names, in any of the forms Airflow stores: host = the whole
    URL; the URI form ``AIRFLOW_CONN_X=https://host/path`` (Airflow keeps the scheme as the
    connection type and the path in ``schema``); or host, port and schema (``http``/``https``) as
    HttpHook reads them. A bare host gets ``bare_scheme``. Credentials stay in the connection."""
    host = (conn.host or "").strip()
    if "://" in host:
        return host
    schema = (conn.schema or "").strip()
    if schema in HTTP_SCHEMES:
        scheme, path = schema, ""
    elif schema:  # the URI form keeps its path in schema, its scheme as the connection type
        scheme, path = conn.conn_type if conn.conn_type in HTTP_SCHEMES else bare_scheme, schema.lstrip("/")
    else:  # "http" is also the type of a connection made in the UI: only "https" says which
        scheme, path = "https" if conn.conn_type == "https" else bare_scheme, ""
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{host}{port}/{path}" if path else f"{scheme}://{host}{port}"


# Extras of Airflow's Amazon connection that choose another identity or client setup.
_UNSUPPORTED_AWS_EXTRAS = {
    "role_arn",
    "assume_role_method",
    "assume_role_kwargs",
    "profile_name",
    "config_kwargs",
    "service_config",
}


def _verify(value: Any, conn_id: str) -> bool | str:
    """The connection's ``verify`` extra as boto3 takes it: a boolean (JSON or text), or a CA bundle path."""
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if not text:
        raise ConnectionSetupError(f"Airflow connection '{conn_id}': extra 'verify' is empty")
    return text


class ObjectStoreHook(BaseHook):
    """S3-compatible object store from an ``aws`` connection.

    login / password: access key id / secret key (empty: boto3's default chain, e.g. an IAM role);
    extra ``endpoint_url`` for MinIO or the local stack, ``region_name`` (default us-east-1),
    ``aws_session_token`` with temporary (STS) credentials, ``verify``: false, or the path of the CA
    bundle of an endpoint with a private certificate authority.

    :param conn_id: Airflow connection id (``storage.connection_id`` of the pipeline config).
    :param bucket: bucket to work in.
    """

    conn_name_attr = "conn_id"
    default_conn_name = "mlops_s3"
    conn_type = "aws"
    hook_name = "mlops_tasks object store"

    def __init__(self, conn_id: str = default_conn_name, bucket: str = "mlops") -> None:
        super().__init__()
        self.conn_id = conn_id
        self.bucket = bucket

    def get_settings(self) -> S3Settings:
        from mlops_tasks.storage import S3Settings

        conn = self.get_connection(self.conn_id)
        extra: dict[str, Any] = conn.extra_dejson or {}
        unsupported = sorted(set(extra) & _UNSUPPORTED_AWS_EXTRAS)
        if unsupported:
            # Ignored, they would run the tasks as the worker's own identity, not the one they name.
            raise ConnectionSetupError(
                f"Airflow connection '{self.conn_id}': extra {', '.join(map(repr, unsupported))} is not "
                "supported by the mlops_tasks object store, which reads login/password, "
                "aws_session_token, endpoint_url, region_name and verify. Leave login empty to use the "
                "worker's AWS identity (instance or pod role, web identity, AWS_PROFILE, AWS_* variables), "
                "which boto3 and DVC resolve as usual."
            )
        return S3Settings(
            bucket=self.bucket,
            endpoint_url=extra.get("endpoint_url") or extra.get("host") or None,
            region_name=extra.get("region_name", "us-east-1"),
            aws_access_key_id=conn.login or extra.get("aws_access_key_id"),
            aws_secret_access_key=conn.password or extra.get("aws_secret_access_key"),
            aws_session_token=extra.get("aws_session_token") or None,
            verify=_verify(extra.get("verify", True), self.conn_id),
        )

    def get_store(self) -> ObjectStore:
        from mlops_tasks.storage import ObjectStore

        return ObjectStore(self.get_settings())


class MlflowHook(BaseHook):
    """MLflow tracking server from an ``mlflow`` connection.

    host: the tracking URI (``http://mlflow:5000``), or host + port (+ schema ``https``);
    login / password: basic-auth credentials of the tracking server, if it uses them;
    extra ``ui_url``: where browsers reach the MLflow UI, when workers reach the server by a name
    browsers cannot resolve (``http://mlflow:5000`` in docker-compose, a Kubernetes Service).

    :param conn_id: Airflow connection id (``mlflow.connection_id`` of the pipeline config).
    """

    conn_name_attr = "conn_id"
    default_conn_name = "mlops_mlflow"
    conn_type = "mlflow"
    hook_name = "MLflow tracking server"

    def __init__(self, conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.conn_id = conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "relabeling": {"host": "Tracking URI or host", "schema": "Scheme (http/https)"},
            "placeholders": {
                "host": "http://mlflow:5000",
                "extra": '{"ui_url": "https://mlflow.example.org"}',
            },
        }

    def get_tracking_uri(self) -> str:
        return self._tracking_uri(self.get_connection(self.conn_id))

    def _tracking_uri(self, conn: Connection) -> str:
        if not (conn.host or "").strip():
            raise ConnectionSetupError(
                f"Airflow connection '{self.conn_id}' has no host (the MLflow tracking URI)"
            )
        host = connection_url(conn, "http").rstrip("/")
        scheme = host.split("://", 1)[0].lower()
        if scheme not in HTTP_SCHEMES:
            # A database or file store is one worker's (sqlite, file:) or hands model versions back
            # as numbers where the server's REST API gives text, which the registry's tags compare.
            raise ConnectionSetupError(
                f"Airflow connection '{self.conn_id}': tracking URI scheme '{scheme}' is not served "
                "over HTTP; point host at an MLflow tracking server (`mlflow server --backend-store-uri "
                f"{scheme}://...`), e.g. http://mlflow:5000, which every worker and the UI reach alike"
            )
        # Credentials written into the URI (http://user:password@host) leave it: MLflow prints the
        # tracking URI with every run's link into the task log, and Airflow masks only the
        # connection's password field.
        parts = urlsplit(host)
        login, password = conn.login, conn.password
        if "@" in parts.netloc:
            login = login or unquote(parts.username or "")
            password = password or unquote(parts.password or "")
            host = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        # MLflow's client reads basic-auth credentials from the environment only. Set or cleared
        # for every connection resolved: a process that serves several pipelines (the UI in the API
        # server) must not send one server's credentials to a server that has none.
        if login:
            if password:
                mask_secret(password)
            os.environ["MLFLOW_TRACKING_USERNAME"] = login
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
        else:
            os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
            os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
        return host

    def test_connection(self) -> tuple[bool, str]:
        """The "Test" button of the connection form: the tracking server answers with these
        credentials (one experiment search)."""
        from mlflow.exceptions import MlflowException

        from mlops_tasks import tracking

        try:
            uri = self.get_tracking_uri()
            tracking.client(uri).search_experiments(max_results=1)
        except (ConnectionSetupError, MlflowException) as exc:
            return False, str(exc).splitlines()[0][:500]
        return True, f"MLflow tracking server at {uri} answered"

    def get_ui_url(self) -> str:
        """The MLflow UI's address for links in Airflow: extra ``ui_url``, else the tracking URI
        (without credentials)."""
        return self.get_addresses()[1]

    def get_addresses(self) -> tuple[str, str]:
        """(tracking URI, UI address) from one lookup of the connection (each lookup is a metadata
        DB or secrets backend call)."""
        from mlops_tasks.status import without_credentials

        conn = self.get_connection(self.conn_id)
        tracking_uri = self._tracking_uri(conn)
        ui_url = (conn.extra_dejson or {}).get("ui_url")
        # Links are XCom and page HTML: no credentials, whichever address they come from.
        return tracking_uri, without_credentials(ui_url.rstrip("/") if ui_url else tracking_uri)
