"""Object store: one thin, safe layer over an S3-compatible endpoint (AWS S3, MinIO, the local stack).

Why our own layer instead of calling boto3 everywhere:

* **Atomic publication.** A single S3 PUT is atomic, a directory of parts is not. Multi-part outputs
  are uploaded with :func:`write_part` (content-addressed names, from any number of tasks) and
  published with :func:`publish_manifest`: one ``_SUCCESS`` manifest (part keys, row counts, sha256)
  is written last and is the only switch readers honour, and then the parts it replaced are deleted.
  A rerun with the same input produces the same part names and the same manifest bytes, so reruns
  are byte-identical and never duplicate rows; a killed attempt leaves only unlisted parts behind.
  Two runs publishing the same partition at once (a scheduled and a manual run of one day) write
  the manifest with conditional PUTs, so neither overwrites a manifest it did not read; S3 has no
  conditional delete, so one narrow window remains in which a manifest can list a part the other
  run deletes (:func:`publish_manifest` says which).
* **Bounded memory where it matters.** Batch inference reads parquet by ranged GETs of the row
  groups and columns it needs (:meth:`ObjectStore.open_ranged`), never a whole day.
* **Clear errors.** Endpoint unreachable, bucket missing, credentials rejected: one sentence
  naming the endpoint, bucket and key, instead of a botocore traceback.
* **Small shared state without a lock.** :meth:`ObjectStore.update_json` is a read-modify-write of
  one JSON object with S3 conditional writes, for state that concurrent tasks update (e.g. the drift
  monitor's retrain cooldown).

Nothing here imports Airflow; :mod:`mlops_tasks.airflow.hooks` builds :class:`S3Settings` from an
Airflow connection.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from mlops_tasks.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST_NAME = "_SUCCESS"
# Files up to 64 MiB (parts, models, reports) go up in one streamed PUT: boto3's upload_file would
# cut anything over 8 MiB into a multipart upload holding up to 10 chunks of 8 MiB in memory at once
# (a task's peak memory then grew with what it wrote), and its transfer manager costs a task's first
# upload some 20 ms to start. Bigger files go multipart, 4 chunks of 16 MiB at a time.
SINGLE_PUT_BYTES = 64 * 2**20
# Compression of every parquet file the stages write (staging, curated, quarantine, predictions).
# Snappy, parquet's usual default: curated data is written once and read by every training, drift
# and inference run, and pyarrow decodes snappy in 0.6x the CPU of zstd (it builds a new zstd
# context for every page it decompresses, and another for every page it compresses), for files
# about a quarter bigger (the example's curated rows in 64Ki-row groups: 7.3 vs 5.8 MB). Files written with zstd by earlier
# releases read as before: the codec is recorded per column chunk.
PARQUET_COMPRESSION = "snappy"
# Rows per row group of curated parquet. The row group is what batch inference plans, fetches and
# decodes by: a mapped unit is a run of whole row groups fetched by ranged GETs, and a row group
# larger than a unit is fetched and decoded by every unit that takes a slice of it. pyarrow's
# default (1Mi rows, a whole day of the example in one group) made the 4 units of a 1M-row day
# each GET the day's 20 MB and decode up to all of it: 1.17x the wall time and 1.2x the CPU of
# 64Ki-row groups (docs/benchmarks.md). 64Ki rows of the example are about 1.4 MB of snappy parquet,
# large enough for efficient scans, small enough for other readers to prune by row group statistics.
CURATED_ROW_GROUP_ROWS = 65_536
# Rows per curated file: a big day is several objects (about 44 MB each for the example), each
# built from its own buffer (validation holds one file's bytes, not the whole day's twice),
# uploaded and retried on its own, and read by inference through a footer of 31 row groups, not of
# hundreds. The default ``inference.part_rows``, so that by default one file is one mapped unit.
# (One object of 10M rows scored 1.6x slower end to end against moto, which reads the whole object
# for every ranged GET; S3 and MinIO serve a range alike whatever the object's size.)
CURATED_FILE_ROWS = 2_000_000
_MULTIPART = TransferConfig(
    multipart_threshold=SINGLE_PUT_BYTES, multipart_chunksize=16 * 2**20, max_concurrency=4
)

# Areas of a pipeline's key space (docs/operators.md, "Object layout").
AREAS = (
    "landing",
    "staging",
    "curated",
    "quarantine",
    "predictions",
    "predictions_shadow",
    "reports/validation",
    "reports/drift",
    "reports/gate",
    "reports/shadow",
    "lineage",
    "state",
    "data_versions",
)


class StorageError(RuntimeError):
    """The object store could not do what was asked; the message says where and why."""


class ObjectNotFoundError(FileNotFoundError):
    """The object ``key`` does not exist (anymore)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


class CorruptObjectError(DataError):
    """An object the package wrote is not what it wrote (not JSON, or not the expected shape); the
    message names its URI. Rewriting it (re-running the task that writes it) is the fix."""


class WriteConflictError(StorageError):
    """A conditional PUT lost: another writer changed (or created) the object since it was read."""


# S3 answers a failed If-Match/If-None-Match with 412 PreconditionFailed, and may answer 409
# ConditionalRequestConflict while another conditional write of the key is in flight.
_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412")
# Per-key codes of a DeleteObjects answer worth sending the key again for.
_RETRYABLE_DELETE_CODES = ("SlowDown", "InternalError", "ServiceUnavailable", "503", "500")


@dataclass(frozen=True)
class S3Settings:
    """How to reach the store. Credentials come from an Airflow connection or the environment."""

    bucket: str
    endpoint_url: str | None = None
    region_name: str = "us-east-1"
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)  # temporary (STS) credentials
    # TLS certificate check: True, False (a test endpoint only), or the path of a CA bundle (an
    # endpoint with a private CA, e.g. MinIO behind a company certificate)
    verify: bool | str = True
    max_attempts: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    def where(self) -> str:
        return f"bucket '{self.bucket}' at {self.endpoint_url or 'AWS S3'}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: dt.datetime | None = None


def partition_prefix(pipeline_prefix: str, area: str, day: dt.date) -> str:
    """``<prefix>/<area>/date=YYYY-MM-DD/`` (always with a trailing slash)."""
    if area not in AREAS:
        raise ValueError(f"unknown storage area '{area}'; known: {', '.join(AREAS)}")
    return f"{pipeline_prefix}/{area}/date={day.isoformat()}/"


def parse_partition_date(key: str) -> dt.date | None:
    """The date of a ``.../date=YYYY-MM-DD/...`` key, or None. Only that spelling: Python also reads
    ``20130105`` and ``2013-W01-6`` as dates, and a folder so named would be listed as a day whose
    partition (``date=2013-01-05/``) then holds nothing."""
    for segment in key.split("/"):
        if segment.startswith("date="):
            try:
                day = dt.date.fromisoformat(segment[5:])
            except ValueError:
                return None
            return day if day.isoformat() == segment[5:] else None
    return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ObjectStore:
    """Keys in one bucket. Every method maps botocore failures to :class:`StorageError`."""

    def __init__(self, settings: S3Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client(
                "s3",
                endpoint_url=self.settings.endpoint_url,
                region_name=self.settings.region_name,
                aws_access_key_id=self.settings.aws_access_key_id,
                aws_secret_access_key=self.settings.aws_secret_access_key,
                aws_session_token=self.settings.aws_session_token,
                verify=self.settings.verify,
                config=Config(
                    retries={"max_attempts": self.settings.max_attempts, "mode": "standard"},
                    connect_timeout=self.settings.connect_timeout,
                    read_timeout=self.settings.read_timeout,
                    s3={"addressing_style": "path"},
                ),
            )
        return self._client

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri_or_key: str) -> str:
        """Accept ``s3://bucket/key`` or a bare key; refuse URIs of another bucket."""
        if uri_or_key.startswith("s3://"):
            bucket, _, key = uri_or_key[5:].partition("/")
            if bucket != self.bucket:
                raise StorageError(f"{uri_or_key} is not in {self.settings.where()}")
            return key
        return uri_or_key

    # -- errors ---------------------------------------------------------------------------------

    @contextmanager
    def _explain(self, action: str, key: str = "", conditional: bool = False) -> Iterator[None]:
        target = f"s3://{self.bucket}/{key}" if key else self.settings.where()
        try:
            yield
        except S3UploadFailedError as exc:
            # upload_file (multipart) wraps the endpoint's ClientError in one of its own: explain that
            cause = exc.__context__
            if isinstance(cause, (ClientError, BotoCoreError)):
                self._raise_explained(action, target, key, cause)
            raise StorageError(
                f"Cannot {action} {target} ({self.settings.where()}): the multipart upload failed: {exc}"
            ) from None
        except (ClientError, BotoCoreError) as exc:
            self._raise_explained(action, target, key, exc, conditional)

    def _raise_explained(
        self, action: str, target: str, key: str, exc: Exception, conditional: bool = False
    ) -> None:
        """Raise ``exc`` (a botocore failure) again as one :class:`StorageError` sentence."""
        where = self.settings.where()
        if isinstance(exc, EndpointConnectionError):
            raise StorageError(
                f"Cannot {action} {target}: the S3 endpoint {self.settings.endpoint_url or 'AWS'} is not "
                "reachable. Check the endpoint_url in the connection extra and that the service is up."
            ) from None
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            # HEAD answers without a body: a missing bucket is a bare 404 there, like a missing key
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and action == "reach"):
                raise StorageError(
                    f"Cannot {action} {target}: {where} does not exist. Create it (mlops-tasks up does) "
                    "or fix storage.bucket in the pipeline config."
                ) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise StorageError(
                    f"Cannot {action} {target}: the credentials were rejected ({code}). Check the "
                    "login/password of the Airflow connection for the object store."
                ) from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(f"{target} does not exist", key) from None
            if code in _CONFLICT_CODES:
                raise WriteConflictError(
                    f"Cannot {action} {target}: another writer changed it since it was read ({code})"
                ) from None
            if code == "NotImplemented":
                endpoint = self.settings.endpoint_url or "AWS"
                raise StorageError(
                    f"Cannot {action} {target}: the S3 endpoint {endpoint} does not implement conditional "
                    "writes (If-Match / If-None-Match), with which manifests and the drift state are "
                    "published so that concurrent runs never overwrite each other. Use a store that "
                    "does (AWS S3, MinIO, moto)."
                    if conditional
                    else f"Cannot {action} {target}: the S3 endpoint {endpoint} does not implement a "
                    "header of the request (NotImplemented). Stores that reject the checksum headers "
                    "of recent boto3 releases need AWS_REQUEST_CHECKSUM_CALCULATION=when_required in "
                    "the workers' environment."
                ) from None
            # botocore has retried these already: say it is the endpoint, not the data, and what to do
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "SlowDown" or status in (500, 502, 503, 504):
                raise StorageError(
                    f"Cannot {action} {target}: the S3 endpoint {self.settings.endpoint_url or 'AWS'} "
                    f"kept answering HTTP {status}{'' if code == str(status) else ' ' + code} through "
                    f"{self.settings.max_attempts} attempts: it is throttling requests or failing. "
                    "Nothing is wrong with the data; run the task again once the endpoint has recovered."
                ) from None
            raise StorageError(f"Cannot {action} {target}: {code or exc}") from None
        raise StorageError(f"Cannot {action} {target}: {exc}") from None

    # -- bucket ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Fail with a clear message unless the endpoint answers and the bucket exists."""
        with self._explain("reach"):
            self.client.head_bucket(Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        with self._explain("create"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                # S3 refuses a bucket without a location constraint outside us-east-1
                # (IllegalLocationConstraintException), and one naming us-east-1 in it
                region = self.client.meta.region_name or "us-east-1"
                location = (
                    {}
                    if region == "us-east-1"
                    else {"CreateBucketConfiguration": {"LocationConstraint": region}}
                )
                self.client.create_bucket(Bucket=self.bucket, **location)

    # -- objects --------------------------------------------------------------------------------

    def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        with self._explain("list", prefix):
            for page in self._listing_pages(Prefix=prefix):
                for obj in page.get("Contents", []):
                    etag = obj.get("ETag", "").strip('"')
                    out.append(ObjectInfo(obj["Key"], int(obj["Size"]), etag, obj.get("LastModified")))
        return sorted(out, key=lambda o: o.key)

    def list_partition_dates(self, prefix: str) -> list[dt.date]:
        """Dates of the ``date=YYYY-MM-DD/`` folders directly under ``prefix``."""
        dates: set[dt.date] = set()
        with self._explain("list", prefix):
            for page in self._listing_pages(Prefix=prefix, Delimiter="/"):
                for cp in page.get("CommonPrefixes", []):
                    day = parse_partition_date(cp["Prefix"])
                    if day:
                        dates.add(day)
        return sorted(dates)

    def _listing_pages(self, **params: str) -> Iterator[dict[str, Any]]:
        """ListObjectsV2 pages, following continuation tokens. Not botocore's paginator: a process's
        first one loads botocore's pagination models (15-20 ms; a publish task lists once)."""
        token: dict[str, str] = {}
        while True:
            page = self.client.list_objects_v2(Bucket=self.bucket, **params, **token)
            yield page
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists; a missing bucket is an error, not a missing key (a misnamed bucket
        must not make a task skip as if there were no data: HEAD says 404 for it too)."""
        return self.metadata(key) is not None

    def get_bytes(self, key: str) -> bytes:
        return self._get(key)["Body"]

    def get_tail(self, key: str, nbytes: int, size: int | None = None) -> bytes:
        """The last ``nbytes`` of an object (one ranged GET), e.g. a parquet footer. Given ``size``
        (what a manifest recorded), an object of another size is a :class:`CorruptObjectError`: its
        tail is not the tail of the bytes the manifest describes."""
        response = self._get(key, Range=f"bytes=-{nbytes}")
        total = str(response.get("ContentRange") or "").rpartition("/")[2]
        if size is not None and total.isdigit() and int(total) != size:
            raise CorruptObjectError(
                f"{self.uri(key)} is {int(total)} bytes, but its partition's manifest recorded {size}: "
                "the object was replaced after it was published (published parts are never written "
                "again under the same key). Publish the partition again."
            )
        return response["Body"]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (one ranged GET; none for no bytes: S3 answers the range
        ``bytes=5-4`` with the whole object)."""
        if length <= 0:
            return b""
        return self._get(key, Range=f"bytes={start}-{start + length - 1}")["Body"]

    def _get(self, key: str, **params: str) -> dict[str, Any]:
        """A GetObject answer with its ``Body`` read into bytes. botocore retries failed requests but
        not a body cut off mid-read (a connection reset), so that GET is sent again here, with backoff."""
        attempt = 1
        while True:
            with self._explain("read", key):
                response = self.client.get_object(Bucket=self.bucket, Key=key, **params)
                try:
                    return {**response, "Body": response["Body"].read()}
                except _CUT_OFF:
                    if attempt >= self.settings.max_attempts:
                        raise
            time.sleep(min(0.2 * 2**attempt, 10))
            attempt += 1

    def open_ranged(self, key: str, size: int) -> RangedObject:
        """A seekable read-only file over the object: parquet readers fetch the footer and only the
        column chunks of the row groups they read, instead of downloading the whole object."""
        return RangedObject(self, key, size)

    def get_json(self, key: str) -> Any:
        """A JSON object; one that is not JSON (truncated, another encoding) is a
        :class:`CorruptObjectError` naming it."""
        return self._parsed_json(key, self.get_bytes(key))

    def _parsed_json(self, key: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise CorruptObjectError(f"{self.uri(key)} is not valid JSON: {exc}") from None

    def download(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._explain("download", key):
            self.client.download_file(self.bucket, key, str(path))
        return path

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        condition: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """One PUT: S3 makes the object visible whole or not at all. Returns the URI. ``condition``:
        from :meth:`read_for_write`; a lost condition is a :class:`WriteConflictError` (or
        :class:`ObjectNotFoundError` when the object was deleted) and writes nothing. ``metadata``:
        user metadata (:meth:`metadata` reads it back with one HEAD)."""
        with self._explain("write", key, conditional=condition is not None):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                **(condition or {}),
                **({"Metadata": metadata} if metadata else {}),
            )
        return self.uri(key)

    def metadata(self, key: str) -> dict[str, str] | None:
        """The user metadata of ``key`` (one HEAD), None when it does not exist."""
        try:
            with self._explain("read", key):
                return dict(self.client.head_object(Bucket=self.bucket, Key=key).get("Metadata") or {})
        except FileNotFoundError:
            self.check()  # HEAD says 404 for a missing bucket too
            return None

    def put_many(
        self, objects: dict[str, bytes], content_type: str = "application/octet-stream", threads: int = 8
    ) -> int:
        """Independent single-object PUTs in parallel (e.g. landing many files); returns bytes sent."""
        _ = self.client  # build the (thread-safe) client once, before the threads share it
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda item: self.put_bytes(item[0], item[1], content_type), objects.items()))
        return sum(len(data) for data in objects.values())

    def put_json(self, key: str, obj: Any, condition: dict[str, str] | None = None) -> str:
        return self.put_bytes(key, _json_bytes(obj), "application/json", condition)

    def read_for_write(self, key: str) -> tuple[bytes | None, dict[str, str]]:
        """The object's bytes (None when absent) and the condition of a PUT that only succeeds if
        nobody wrote it since: ``If-Match`` its ETag, or ``If-None-Match: *`` while it is absent."""
        try:
            response = self._get(key)
            return response["Body"], {"IfMatch": response["ETag"]}
        except FileNotFoundError:
            return None, {"IfNoneMatch": "*"}

    def update_json(self, key: str, change: Callable[[Any | None], Any], attempts: int = 5) -> Any:
        """Replace the JSON object ``key`` by ``change(current)`` (``current`` None when it is absent)
        unless another writer replaces it meanwhile, and return what was written.

        For small state that concurrent tasks read-modify-write: the PUT is conditional on the ETag
        read (``If-Match``; ``If-None-Match: *`` when absent), so a writer that lost the race reads the
        winner's object and calls ``change`` on it again, instead of overwriting it. Each conflict
        means another writer changed the object, so ``attempts`` bounds how many concurrent writers
        one update outlasts; after that it raises :class:`WriteConflictError` and has written nothing.
        ``change`` may thus run several times: keep it a cheap function of its argument. A store that
        ignores conditional headers (older S3-compatible servers) lets the last writer win, as a plain
        :meth:`put_json` would. A stored object that is not JSON is a :class:`CorruptObjectError`.
        """
        sent: tuple[Any, bytes] | None = None  # the last conditional write that got a conflict
        for attempt in range(1, attempts + 1):
            if sent is not None:
                time.sleep(random.uniform(0, 0.05 * attempt))  # racers answered 409 retry out of step
            stored, condition = self.read_for_write(key)
            current = None if stored is None else self._parsed_json(key, stored)
            # botocore resends a PUT whose answer was lost (a timeout, a dropped connection): when S3
            # had applied it, the resend conflicts with the write itself, which is not another writer's.
            if sent is not None and stored == sent[1]:
                return sent[0]
            new = change(current)
            body = _json_bytes(new)
            try:
                self.put_bytes(key, body, "application/json", condition)
                return new
            except (WriteConflictError, FileNotFoundError):  # replaced, created or deleted meanwhile
                sent = (new, body)
        # The last attempt's own write may have landed, its answer lost (see above): no next attempt
        # reads it back, so read it here rather than report a stored update as "wrote nothing".
        if sent is not None and self.read_for_write(key)[0] == sent[1]:
            return sent[0]
        raise WriteConflictError(
            f"Cannot update {self.uri(key)}: other writers replaced it between each of {attempts} reads "
            "and the conditional write that followed; this update wrote nothing. Run it again."
        )

    def upload(
        self,
        path: str | Path,
        key: str,
        content_type: str = "application/octet-stream",
        sha256: str | None = None,
    ) -> str:
        """Upload a local file (see ``SINGLE_PUT_BYTES``); botocore rewinds the file to retry.

        ``sha256`` (hex), when the caller knows it, goes with a single PUT as its checksum: S3 and
        MinIO refuse the object unless the bytes they received have that digest (the local moto
        endpoint stores it without checking), and botocore skips computing a CRC32 of its own. Not
        where checksums are turned off (``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``, for
        S3-compatible stores that reject checksum headers)."""
        checksums_on = self.client.meta.config.request_checksum_calculation != "when_required"
        with self._explain("upload", key):
            if Path(path).stat().st_size <= SINGLE_PUT_BYTES:
                checksum = (
                    {"ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256)).decode()}
                    if sha256 and checksums_on
                    else {}
                )
                with open(path, "rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **checksum
                    )
            else:
                self.client.upload_file(
                    str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=_MULTIPART
                )
        return self.uri(key)

    def delete(self, keys: list[str], attempts: int = 4) -> None:
        """Delete ``keys`` (missing ones are no error). DeleteObjects answers HTTP 200 even when some
        keys could not be deleted and lists those under ``Errors``: keys that failed with a transient
        code (SlowDown, InternalError, ServiceUnavailable) are sent again, with backoff, up to
        ``attempts`` times; any key still there then is a :class:`StorageError` naming it and why."""
        failed: dict[str, str] = {}
        for i in range(0, len(keys), 1000):
            pending = keys[i : i + 1000]
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    time.sleep(min(0.1 * 2**attempt, 5) * random.uniform(0.5, 1))  # SlowDown: back off
                with self._explain("delete", pending[0]):
                    response = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in pending], "Quiet": True}
                    )
                errors = {e["Key"]: e.get("Code", "unknown") for e in response.get("Errors", [])}
                pending = [k for k in pending if errors.get(k) in _RETRYABLE_DELETE_CODES]
                failed.update((k, c) for k, c in errors.items() if k not in pending)
                if not pending:
                    break
            failed.update((k, errors[k]) for k in pending)
        if failed:
            shown = ", ".join(f"{self.uri(k)} ({c})" for k, c in list(failed.items())[:3])
            more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
            raise StorageError(
                f"Cannot delete {len(failed)} of {len(keys)} object(s) in {self.settings.where()}: the "
                f"endpoint refused {shown}{more}, after up to {attempts} attempts for transient codes; "
                "they are still there. Check the credentials' s3:DeleteObject permission (AccessDenied) "
                "or the endpoint's health, then run the task again."
            )

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        if keys:
            self.delete(keys)
        return len(keys)

    # -- manifests and parquet ------------------------------------------------------------------

    def read_manifest(self, partition: str) -> dict[str, Any] | None:
        """The published manifest of a partition, or None if nothing was published there."""
        try:
            return self.get_json(partition.rstrip("/") + "/" + MANIFEST_NAME)
        except FileNotFoundError:
            return None

    @contextmanager
    def spooled(self, key: str) -> Iterator[Path]:
        """Download an object to a temporary file that is removed afterwards. The file is in an
        owner-only directory: the download replaces it with a file of the default permissions."""
        suffix = "".join(Path(key).suffixes[-2:])
        with tempfile.TemporaryDirectory(prefix="mlops-") as directory:
            yield self.download(key, Path(directory) / f"object{suffix}")


def _json_bytes(obj: Any) -> bytes:
    """The stored form of JSON objects: indented, keys sorted, so equal content is equal bytes."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()


def write_part(
    store: ObjectStore, partition: str, name: str, data: bytes | Path, rows: int, sha256: str | None = None
) -> dict[str, Any]:
    """Upload one part of a partition under a content-addressed name; not visible to manifest readers
    until :func:`publish_manifest` lists it. Returns the part's manifest entry. Safe to call from
    several (mapped) tasks for one partition. ``sha256``: the file's digest if the caller computed it
    while writing the file (it travels with the PUT, which the endpoint checks)."""
    partition = partition.rstrip("/") + "/"
    if isinstance(data, Path):
        digest, size = sha256 or sha256_file(data), data.stat().st_size
    else:
        digest, size = sha256_bytes(data), len(data)
    stem, dot, ext = name.partition(".")
    key = f"{partition}{stem}-{digest[:16]}{dot}{ext}"
    if isinstance(data, Path):
        store.upload(data, key, sha256=digest)
    else:
        store.put_bytes(key, data)
    return {"key": key, "rows": int(rows), "sha256": digest, "bytes": size}


UNLISTED_GRACE = dt.timedelta(hours=6)
"""How long :func:`publish_manifest` leaves an object alone that no manifest lists: it may be a part
of a concurrent run of the same partition that has not published yet (longer than any run's
scoring or staging takes)."""


def content_id(manifest: dict[str, Any] | None) -> str | None:
    """A short id of what a published manifest lists (each part's key and sha256): two manifests of
    one id make the same partition content. None when nothing is published."""
    if manifest is None:
        return None
    listed = sorted((part["key"], part.get("sha256")) for part in manifest.get("parts", []))
    return sha256_bytes(_json_bytes(listed))[:16]


class PartsMissingError(StorageError, DataError):
    """Parts to publish are gone from the store (another publish of the partition replaced them)."""


PUBLISH_ATTEMPTS = 5
"""How many publishes of the same partition by other runs one :func:`publish_manifest` outlasts."""


def publish_manifest(
    store: ObjectStore,
    partition: str,
    parts: list[dict[str, Any]],
    *,
    may_replace: Callable[[dict[str, Any]], None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Make ``parts`` the partition's content in one PUT, then delete what no manifest needs.

    The manifest PUT is conditional on the manifest read just before (``If-Match`` its ETag,
    ``If-None-Match: *`` when there was none), after checking that every part exists. A publish that
    another one overtook between its read and its PUT reads the new manifest and lists the partition
    again, up to :data:`PUBLISH_ATTEMPTS` times, then raises :class:`WriteConflictError` having
    published nothing. A publish whose parts are gone (deleted by a concurrent publish) raises
    :class:`PartsMissingError` and leaves the other's complete partition as it is.

    Deleted after the PUT: the parts the replaced manifest listed and this one does not, unless they
    were uploaded again after that manifest was written (:func:`write_part` always PUTs, so such a
    part is being published again by a concurrent run of the same content); and objects no manifest
    lists once they are older than :data:`UNLISTED_GRACE` (parts of killed attempts whose retry wrote
    other bytes). Younger unlisted objects, and replaced parts written again, stay: they may be the
    parts of a concurrent run, which publishes after this one and replaces it.

    What remains (S3 has no conditional delete): the delete is decided on the listing made before the
    PUT. A concurrent run that uploaded a part this publish replaces after that listing, and that
    reads the new manifest and lists the partition between this PUT and the delete that follows it
    (one round trip), publishes a manifest listing a part that is then deleted: readers fail on the
    missing part until a rerun publishes the partition again. And S3's LastModified has 1 s
    resolution: a replaced part written again within the second its manifest was written counts as
    not written again and is deleted at once, so the concurrent run republishing it fails with
    :class:`PartsMissingError` (having published nothing) instead of succeeding.

    ``may_replace``, if given, is called before each PUT with the stored manifest (``{}`` when there
    is none), and raises to refuse (nothing is published, nothing deleted).

    ``extra`` goes into the manifest; keep it deterministic (no wall-clock times) so reruns are
    byte-identical.
    """
    partition = partition.rstrip("/") + "/"
    key = partition + MANIFEST_NAME
    manifest = {
        "partition": partition,
        "parts": sorted(parts, key=lambda p: p["key"]),
        "rows": sum(p["rows"] for p in parts),
        **extra,
    }
    body = _json_bytes(manifest)
    listed = {p["key"] for p in parts} | {key}
    _ = store.client  # one client, built before the two threads share it
    lost: list[str] | None = None  # what the last attempt, whose PUT met a conflict, would have deleted
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        if lost is not None:
            time.sleep(random.uniform(0, 0.05 * attempt))  # racers answered 409 retry out of step
        with ThreadPoolExecutor(1) as reader:
            read = reader.submit(store.read_for_write, key)
            present = {o.key: o for o in store.list(partition)}
            stored, condition = read.result()
        # botocore resends a PUT whose answer was lost: when S3 had applied it, the resend conflicts
        # with this publish itself (or a concurrent run published the very same bytes)
        if lost is not None and stored == body:
            if lost:
                store.delete(lost)
            return manifest
        missing = [p["key"] for p in manifest["parts"] if p["key"] not in present]
        if missing:
            raise PartsMissingError(
                f"{store.uri(partition)}: part(s) {[store.uri(k) for k in missing]} to publish are gone, "
                "deleted by another run that published this partition meanwhile; nothing was published "
                "by this run and the partition keeps the other run's complete content. Re-run the tasks "
                "that wrote the parts to publish this run's instead."
            )
        previous = json.loads(stored) if stored else {}
        if may_replace is not None:
            may_replace(previous)
        replaced = {p["key"] for p in previous.get("parts", [])}
        # When the replaced manifest was written, from the listing (the same clock and resolution as
        # its parts'); unknown if the listing saw another version of it: then replaced parts stay.
        seen = present.get(key)
        written = (
            seen.last_modified
            if seen is not None and stored is not None and seen.etag == condition["IfMatch"].strip('"')
            else None
        )
        abandoned_before = dt.datetime.now(dt.UTC) - UNLISTED_GRACE
        stale = [
            k
            for k, info in present.items()
            if k not in listed
            and (
                info.last_modified is None
                or info.last_modified < abandoned_before
                or (k in replaced and written is not None and info.last_modified <= written)
            )
        ]
        try:
            store.put_json(key, manifest, condition=condition)
        except (WriteConflictError, FileNotFoundError):  # published, or withdrawn, by another run
            lost = stale
            continue
        if stale:
            store.delete(stale)
        return manifest
    if lost is not None and store.read_for_write(key)[0] == body:  # the last PUT landed (see above)
        if lost:
            store.delete(lost)
        return manifest
    raise WriteConflictError(
        f"Cannot publish {store.uri(key)}: other runs published this partition between each of "
        f"{PUBLISH_ATTEMPTS} reads of its manifest and the conditional PUT that followed; this run "
        "published nothing (the partition keeps the last other run's complete content, this run's "
        "parts stay unlisted until a later publish sweeps them). Run the task again."
    )


_CUT_OFF = (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ConnectionClosedError)


class RangedObject(io.RawIOBase):
    """See :meth:`ObjectStore.open_ranged`; every ``read`` is one ranged GET."""

    def __init__(self, store: ObjectStore, key: str, size: int) -> None:
        super().__init__()
        self.store, self.key, self.size = store, key, size
        self._position = 0
        self._block_start, self._block = 0, b""

    def hold(self, start: int, length: int) -> None:
        """Fetch ``length`` bytes from ``start`` in one GET and serve reads inside them from memory
        (e.g. a parquet row group's column chunks: one request instead of one per column)."""
        self._block_start, self._block = start, b""  # drop the previous block before the GET
        self.hold_data(start, self.fetch(start, length))

    def fetch(self, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start`` in one GET, without holding them (for a read-ahead
        thread: hand them to :meth:`hold_data` when they are needed)."""
        return self.store.get_range(self.key, start, min(length, self.size - start))

    def hold_data(self, start: int, data: bytes) -> None:
        """Serve reads inside ``data``, the object's bytes from ``start``, from memory."""
        self._block_start, self._block = start, data

    def holds(self, start: int, end: int) -> bool:
        """Whether the held block covers the bytes ``[start, end)``."""
        return self._block_start <= start and end <= self._block_start + len(self._block)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int = -1) -> bytes | memoryview:
        """Inside the held block, a view of it: pyarrow wraps what ``read`` returns without copying
        (``readinto`` would copy every column chunk twice more)."""
        length = (
            self.size - self._position if size is None or size < 0 else min(size, self.size - self._position)
        )
        offset = self._position - self._block_start
        if length > 0 and 0 <= offset and offset + length <= len(self._block):
            self._position += length
            return memoryview(self._block)[offset : offset + length]
        return super().read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        length = min(len(buffer), self.size - self._position)
        if length <= 0:
            return 0
        offset = self._position - self._block_start
        if 0 <= offset and offset + length <= len(self._block):
            data = self._block[offset : offset + length]
        else:
            data = self.store.get_range(self.key, self._position, length)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


class ManifestMismatchError(StorageError, DataError):
    """A published part's bytes differ from the sha256 its manifest recorded."""


def read_published(
    store: ObjectStore,
    partition: str,
    columns: list[str] | None = None,
    keep: Callable[[pa.Table], pa.Table] | None = None,
) -> tuple[pa.Table | None, dict[str, Any] | None]:
    """The parquet parts a partition's manifest lists, checksums verified, as one table, with the
    manifest; ``(None, None)`` if nothing is published there, ``(None, manifest)`` for an empty one.
    ``keep`` filters each part as it is read (e.g. a sample), so only one whole part is in memory.

    A rerun that publishes the partition while it is read deletes the parts it replaces: the read
    then starts again from the new manifest, so it returns one whole publication or the other."""
    import pyarrow as pa

    manifest = store.read_manifest(partition)
    while manifest is not None:
        try:
            tables = [
                (keep or _whole)(read_part(store, part, columns))
                for part in manifest["parts"]
                if part["key"].endswith(".parquet")
            ]
        except FileNotFoundError:
            newer = store.read_manifest(partition)
            if newer == manifest:
                raise
            manifest = newer
            continue
        return (pa.concat_tables(tables) if tables else None), manifest
    return None, None


def _whole(table: pa.Table) -> pa.Table:
    return table


def read_part(store: ObjectStore, part: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
    """One parquet part of a manifest (``{"key", "sha256", ...}``), its checksum verified."""
    with store.spooled(part["key"]) as path:
        if sha256_file(path) != part["sha256"]:
            raise ManifestMismatchError(
                f"{store.uri(part['key'])}: content does not match its manifest sha256"
            )
        return read_parquet(path, store.uri(part["key"]), columns)


class MissingColumnsError(DataError):
    """A parquet file lacks columns a reader needs; the message names them and the file."""


def read_parquet(
    source: str | Path | pa.NativeFile, where: str, columns: list[str] | None = None
) -> pa.Table:
    """``columns`` of a parquet file; a column the file does not have is a :class:`MissingColumnsError`
    naming it and ``where`` (pyarrow's own error prints the whole schema and no file)."""
    import pyarrow.parquet as pq

    if columns is not None:
        present = pq.read_schema(source).names
        missing = [c for c in columns if c not in present]
        if missing:
            raise MissingColumnsError(f"{where}: column(s) {missing} are missing (it has {present})")
    return pq.read_table(source, columns=columns)
