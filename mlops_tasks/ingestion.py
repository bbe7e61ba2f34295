"""Ingest: one day's landing files (CSV / gzip CSV / parquet) -> one staged, typed parquet partition.

Bad input is normal input, and nothing is lost:

* a value that cannot be converted to its column's type keeps its row; the value becomes null and
  the lineage column ``_ingest_error`` says why (``dep_delay: 'abc' is not a float``), so validation
  quarantines the row with the reason;
* a CSV line with the wrong number of fields, or where a record does not parse (a quote that is
  never closed), is kept verbatim, with its line number, in ``malformed_lines.jsonl``; parsing
  resumes on the next line, so one stray quote costs one line, not the rest of the file;
* a row of a join's file (weather) whose key is missing or does not convert can join no row: it
  goes with the malformed lines too (its values as read, its line number, why);
* a whole-file problem (zero bytes, no header or a blank first line, unknown extension, wrong
  encoding, bytes that are not UTF-8 in a parquet text column, unreadable parquet or gzip, a column
  twice, a required column missing) rejects that file with a one-sentence reason, a byte-for-byte
  copy and the number of lines (rows) it held; the other files of the day still ingest.

Each file is typed on its own, from its own column types (CSV text is parsed, parquet values are
converted from their arrow type: integers exactly, never through float), so what happens to a value
never depends on the other files of the day.

Validation (:mod:`mlops_tasks.validation`) moves the copies and malformed lines into the quarantine
partition, so the staging manifest is the hand-over: it lists the data parts, the rejected files
with their reasons and the malformed-lines part.

Output bytes depend only on the landing bytes: files are read in key order, rows keep their file
order, and no wall-clock time is written, so a rerun publishes byte-identical parts.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import fnmatch
import gzip
import io
import json
import math
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_tasks.config import ColumnSpec, JoinSpec, PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.features import category_strings
from mlops_tasks.storage import (
    PARQUET_COMPRESSION,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    partition_prefix,
    publish_manifest,
    sha256_bytes,
    write_part,
)

LINEAGE_COLUMNS = ("_day", "_source_file", "_source_line", "_ingest_error")
# Tokens that mean "missing" in numeric, bool and timestamp columns (R's NA, pandas' NaN, SQL NULL).
# In string columns only the empty (or all-whitespace) field is missing: "NA" may be a real code there.
NA_TOKENS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "NAN", "-nan", "null", "NULL", "None", "none"})
TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0"})
CSV_SUFFIXES = (".csv",)
GZIP_SUFFIXES = (".csv.gz", ".gz")
GZIP_MAGIC = b"\x1f\x8b"  # how gzip bytes start, whatever the file is named
PARQUET_SUFFIXES = (".parquet", ".pq")
STRING_DTYPE = pd.StringDtype()
TIMESTAMP_DTYPE = "datetime64[ns, UTC]"
TIMESTAMP_MIN = pd.Timestamp.min.tz_localize("UTC")
TIMESTAMP_MAX = pd.Timestamp.max.tz_localize("UTC")
TIMESTAMP_RANGE = "1677-09-21..2262-04-11"  # what nanosecond timestamps hold
TEXT_TIMESTAMP_RULE = f"is not an ISO 8601 timestamp within {TIMESTAMP_RANGE}"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT64_DIGITS = len(str(INT64_MAX))
# An integer, optionally with a zero fraction ("12", "12.0": pandas writes an int column with nulls
# that way); other numbers ("1.2e1") go through Decimal, slower but just as exact.
_INTEGER = re.compile(r"([+-]?[0-9]+)(?:\.0*)?")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Timestamp text (upper-cased) that may carry a zone: a time, then a sign or a letter anywhere after
# it ("Z", "+05" as PostgreSQL writes it, "+5:00", "-05:00[AMERICA/NEW_YORK]" as Java writes it).
# Broad on purpose: pandas gives the naive values after any such text its offset, even when it
# cannot parse the text. The time is required: a date alone has signs too ("2013-01-02"), but is naive.
_AWARE_TIMESTAMP = r"[T ]\d.*[-+A-Z]"
# The column name pandas gives an index level without a name.
_UNNAMED_INDEX = re.compile(r"__index_level_\d+__")


class LandingChangedError(RuntimeError):
    """A landing file disappeared between listing and reading (retryable: the next attempt lists again)."""


class RejectedFileError(DataError):
    """A landing file cannot be ingested at all; the message names the key (and column) and why."""


@dataclass
class _Table:
    """One table (main or a join): its typed frames, one per file of the day, and their sources."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Day:
    """Everything one ingest run found, in landing-key order."""

    rejected: list[dict[str, Any]] = field(default_factory=list)
    malformed: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def ingest_day(store: ObjectStore, cfg: PipelineConfig, day: dt.date) -> dict[str, Any]:
    """Type and stage every landing file of ``day``; see the module docstring for the rules.

    Returns ``{"date", "status" ("ingested" | "no_data"), "staged_uri", "rows", "files",
    "rejected_files": [{"key", "reason"}], "malformed_lines", "warnings"}``.
    """
    landing = partition_prefix(cfg.prefix, "landing", day)
    staging = partition_prefix(cfg.prefix, "staging", day)
    listed = [o for o in store.list(landing) if not o.key.endswith("/")]
    keys = [o.key for o in listed]
    ignored = [k for k in keys if _route(k.rsplit("/", 1)[-1], cfg) is None]
    if len(ignored) == len(keys):
        # Only files of no table (a writer's _SUCCESS marker, a README): no data either, not a day
        # of 0 rows that fails the validation gate and with it the training run.
        return {
            "date": day.isoformat(),
            "status": "no_data",
            "staged_uri": None,
            "rows": 0,
            "files": 0,
            "rejected_files": [],
            "malformed_lines": 0,
            "warnings": [f"no files under {store.uri(landing)}"]
            + [f"{k}: ignored, its name matches no file_pattern of the config" for k in ignored],
        }
    found = _Day()
    main = _Table()
    joins = {j.name: _Table() for j in cfg.data.joins}
    parts: list[dict[str, Any]] = []
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        target = _route(name, cfg)
        if target is None:
            found.warnings.append(f"{key}: ignored, its name matches no file_pattern of the config")
            continue
        columns = cfg.data.columns if target == "" else _join(cfg, target).columns
        required = _required_columns(cfg, target)
        try:
            data = store.get_bytes(key)
        except ObjectNotFoundError:
            # Not a DataError: the task's retry lists the landing area again.
            raise LandingChangedError(
                f"{store.uri(key)} was listed but removed before it could be read: the day's landing "
                "files changed while they were ingested. Nothing was staged; a retry lists them again."
            ) from None
        try:
            frame, malformed = _read_file(key, data, columns, required, cfg, found.warnings)
        except RejectedFileError as exc:
            copy = write_part(store, staging, rejected_copy_name(key), data, rows=0)
            found.rejected.append(
                {
                    "key": key,
                    "reason": str(exc),
                    "copy": copy["key"],
                    "lines": _rejected_lines(
                        key, data, cfg.data.source.encoding, cfg.data.source.csv_delimiter
                    ),
                }
            )
            parts.append(copy)
            continue
        table = main if target == "" else joins[target]
        # Typed per file: a value's outcome must not depend on the other files of the day.
        typed = _type_frame(frame, columns, day, label=f"{target}: " if target else "", zone=cfg.zone)
        source = {
            "key": key,
            "sha256": sha256_bytes(data),
            "rows": len(frame),
            "malformed_lines": len(malformed),
            "table": target or "main",
        }
        if target:
            typed, unjoinable = _split_unjoinable(key, _join(cfg, target), frame, typed, found.warnings)
            malformed = sorted(malformed + unjoinable, key=lambda m: m["line"])
            source["unjoinable_rows"] = len(unjoinable)
        found.malformed.extend(malformed)
        table.frames.append(typed)
        table.sources.append(source)

    frame = _identical_copies_dropped(_stack(main.frames, cfg.data.columns, day), cfg, found.warnings)
    for join in cfg.data.joins:
        rejected = [r["key"] for r in found.rejected if _route(r["key"].rsplit("/", 1)[-1], cfg) == join.name]
        frame = _left_join(frame, join, joins[join.name].frames, day, rejected, found.warnings)
    frame = frame[[c.name for c in cfg.data.all_columns()] + list(LINEAGE_COLUMNS)]

    data_part = write_part(store, staging, "data.parquet", to_parquet_bytes(frame), rows=len(frame))
    parts.append(data_part)
    malformed_key = None
    if found.malformed:
        lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in found.malformed).encode()
        malformed_part = write_part(store, staging, "malformed_lines.jsonl", lines, rows=len(found.malformed))
        parts.append(malformed_part)
        malformed_key = malformed_part["key"]
    sources = main.sources + [s for j in cfg.data.joins for s in joins[j.name].sources]
    publish_manifest(
        store,
        staging,
        parts,
        day=day.isoformat(),
        data_parts=[data_part["key"]],
        source_files=sorted(sources, key=lambda s: s["key"]),
        rejected_files=found.rejected,
        malformed_lines=len(found.malformed),
        malformed_part=malformed_key,
        warnings=found.warnings,
        landing_files=_fingerprints(listed, cfg, rejected={r["key"] for r in found.rejected}),
    )
    return {
        "date": day.isoformat(),
        "status": "ingested",
        "staged_uri": store.uri(staging),
        "rows": len(frame),
        "files": len(sources),
        "rejected_files": [{"key": r["key"], "reason": r["reason"]} for r in found.rejected],
        "malformed_lines": len(found.malformed),
        "warnings": found.warnings,
    }


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    """Deterministic parquet bytes of a frame (no index, fixed compression)."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression=PARQUET_COMPRESSION)
    return buffer.getvalue()


# -- routing ------------------------------------------------------------------------------------


def _route(name: str, cfg: PipelineConfig) -> str | None:
    """ "" for the main table, a join's name, or None. Joins are tried first so a catch-all main
    pattern ("*") does not swallow the side tables."""
    for join in cfg.data.joins:
        if fnmatch.fnmatchcase(name, join.file_pattern):
            return join.name
    if fnmatch.fnmatchcase(name, cfg.data.source.file_pattern):
        return ""
    return None


def _join(cfg: PipelineConfig, name: str) -> JoinSpec:
    return next(j for j in cfg.data.joins if j.name == name)


# -- days to (re-)ingest ----------------------------------------------------------------------------


def _fingerprints(
    objects: list[ObjectInfo], cfg: PipelineConfig, rejected: set[str] = frozenset()
) -> list[dict[str, Any]]:
    """What a day is ingested from: each landing file a ``file_pattern`` routes, with its size and
    ETag (S3 gives an object replaced by other bytes another ETag; no download needed to compare),
    and ``"rejected": true`` for the ``rejected`` ones, which gave no rows."""
    return [
        {"key": o.key, "size": o.size, "etag": o.etag} | ({"rejected": True} if o.key in rejected else {})
        for o in objects
        if not o.key.endswith("/") and _route(o.key.rsplit("/", 1)[-1], cfg) is not None  # not folders
    ]


def landing_changes(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, recorded: list[dict[str, Any]] | None
) -> dict[str, list[str]] | None:
    """How ``day``'s landing files differ from ``recorded`` (the ``landing_files`` of its curated
    manifest): keys ``added``, ``changed`` (another size or ETag) and ``removed`` (files that gave
    rows: a rejected file removed, say renamed to the extension the rejection asked for, takes no
    rows away). None when nothing was recorded (a day curated before this was recorded: its files
    cannot be compared)."""
    if recorded is None:
        return None
    landing = partition_prefix(cfg.prefix, "landing", day)
    now = {f["key"]: (f["size"], f["etag"]) for f in _fingerprints(store.list(landing), cfg)}
    before = {f["key"]: (f["size"], f["etag"]) for f in recorded}
    gave_rows = {f["key"] for f in recorded if not f.get("rejected")}
    return {
        "added": sorted(now.keys() - before.keys()),
        "changed": sorted(k for k in now.keys() & before.keys() if now[k] != before[k]),
        "removed": sorted((before.keys() - now.keys()) & gave_rows),
    }


@dataclass
class IngestionPlan:
    """Which days of a training window to ingest (``todo``) and why the others are left alone."""

    todo: list[dt.date] = field(default_factory=list)
    curated: list[dt.date] = field(default_factory=list)  # curated and unchanged: used as they are
    missing: list[dt.date] = field(default_factory=list)  # neither curated nor landed
    # curated, then landing files were added or replaced: in ``todo`` again, {"day", "added", "changed"}
    changed: list[dict[str, Any]] = field(default_factory=list)
    # curated, then files added or replaced while others were removed: kept (see plan_ingestion)
    kept: list[dict[str, Any]] = field(default_factory=list)


def plan_ingestion(store: ObjectStore, cfg: PipelineConfig, days: list[dt.date]) -> IngestionPlan:
    """Sort ``days`` into those to ingest and the rest.

    A day is ingested when it landed and is not curated, or when it is curated but a landing file
    was added or replaced since (late or corrected data): its curated partition is rebuilt from all
    its landing files. Removed landing files alone change nothing (landing retention deletes files
    once they are curated); a day that gained or changed files *and* lost some is kept as it is,
    since ingesting it again would drop the removed files' rows: it is reported in ``kept``.
    """
    landed = set(store.list_partition_dates(f"{cfg.prefix}/landing/"))

    def look(day: dt.date) -> tuple[dt.date, dict[str, Any] | None, dict[str, list[str]] | None]:
        manifest = store.read_manifest(partition_prefix(cfg.prefix, "curated", day))
        if manifest is None or day not in landed:
            return day, manifest, None
        return day, manifest, landing_changes(store, cfg, day, manifest.get("landing_files"))

    plan = IngestionPlan()
    _ = store.client  # built once, before the threads share it
    with ThreadPoolExecutor(8) as pool:  # two requests a day: a long window on remote S3 adds up
        for day, manifest, changes in pool.map(look, days):
            grown = changes is not None and bool(changes["added"] or changes["changed"])
            if manifest is None:
                (plan.todo if day in landed else plan.missing).append(day)
            elif grown and changes["removed"]:
                plan.kept.append({"day": day, **changes})
                plan.curated.append(day)
            elif grown:
                plan.changed.append({"day": day, "added": changes["added"], "changed": changes["changed"]})
                plan.todo.append(day)
            else:
                plan.curated.append(day)
    return plan


def _required_columns(cfg: PipelineConfig, target: str) -> set[str]:
    """Columns a file must have: non-nullable ones, the row key and the join keys. A missing
    nullable column is filled with nulls (and warned about) instead."""
    if target:
        join = _join(cfg, target)
        return {c.name for c in join.columns if not c.nullable} | set(join.keys)
    keys = set(cfg.data.key) | {k for j in cfg.data.joins for k in j.keys}
    return {c.name for c in cfg.data.columns if not c.nullable} | keys


def _rejected_lines(key: str, data: bytes, encoding: str, delimiter: str) -> int:
    """How many rows a rejected file holds, for the validation gate's bad share: its non-blank records
    but the header for CSV, as the reader splits them (a quoted field may span lines; records end by
    LF, CRLF or CR; gzip bytes are counted in their text whatever the file's name), else its
    non-blank lines when it is not text of the encoding or not CSV; the footer's row count for
    parquet, and 1 for a file whose content cannot be read at all (it still stands for data that was
    lost)."""
    if not data:
        return 0
    lower = key.rsplit("/", 1)[-1].lower()
    if lower.endswith(PARQUET_SUFFIXES):
        try:
            return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        except (pa.ArrowException, OSError):
            return 1
    if data.startswith(GZIP_MAGIC):
        data = _gunzipped_prefix(data)
    encoding = _UTF16_BOMS.get(data[:2], encoding)
    try:
        text = data.decode(encoding).removeprefix("\ufeff")
        csv.field_size_limit(max(csv.field_size_limit(), len(text)))
        records = sum(
            1
            for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
            if "".join(row).strip()
        )
    except (UnicodeDecodeError, csv.Error):
        records = sum(1 for line in data.splitlines() if line.strip())
    return max(records - 1, 0)


# A byte order mark that says a file is UTF-16, whatever encoding the config expects.
_UTF16_BOMS = {b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16"}


def _gunzipped_prefix(data: bytes) -> bytes:
    """What a gzip file's bytes decompress to, as far as they go: a truncated upload's rows still count
    as lost rows (decompressing it whole fails, and it once counted as 1)."""
    try:
        return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(data)
    except zlib.error:
        return b""


def rejected_copy_name(key: str) -> str:
    """Part name of a rejected file's copy: ``rejected_<file name>`` made key-safe."""
    name = key.rsplit("/", 1)[-1]
    return "rejected_" + "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


# -- reading one file ---------------------------------------------------------------------------


def _read_file(
    key: str,
    data: bytes,
    columns: list[ColumnSpec],
    required: set[str],
    cfg: PipelineConfig,
    warnings: list[str],
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Raw columns of one file (declared columns only) + ``_source_file``/``_source_line``, and its
    malformed lines. Raises :class:`RejectedFileError` for whole-file problems."""
    lower = key.rsplit("/", 1)[-1].lower()
    if not data:
        raise RejectedFileError(f"{key} is a zero-byte object.")
    declared = [c.name for c in columns]
    malformed: list[dict[str, Any]] = []
    if lower.endswith(PARQUET_SUFFIXES):
        names, raw, lines = _read_parquet(key, data, declared)
    elif lower.endswith(GZIP_SUFFIXES + CSV_SUFFIXES):
        if lower.endswith(GZIP_SUFFIXES) or data.startswith(GZIP_MAGIC):  # gzip, whatever its name
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise RejectedFileError(f"{key} is not a valid gzip file ({_one_line(exc)}).") from None
        frame, lines, malformed = _parse_csv(
            key, data, cfg.data.source.encoding, cfg.data.source.csv_delimiter, declared
        )
        names, raw = list(frame.columns), {c: frame[c] for c in frame.columns if c in declared}
    else:
        raise RejectedFileError(
            f"{key} has an unsupported file extension; expected one of "
            f"{', '.join(CSV_SUFFIXES + GZIP_SUFFIXES + PARQUET_SUFFIXES)}."
        )
    missing = [c for c in declared if c not in names]
    # A header that differs from a declared name only in case or spacing would otherwise be dropped
    # as extra while the declared column fills with nulls: the values lost without a trace.
    for column in missing:
        like = [n for n in names if n not in declared and n.strip().casefold() == column.casefold()]
        if like:
            raise RejectedFileError(
                f"{key} has the column '{like[0]}' where the config declares '{column}': column names "
                "are case-sensitive; rename the file's header or the config's column."
            )
    missing_required = [c for c in missing if c in required]
    if missing_required:
        raise RejectedFileError(
            f"{key} lacks the required column '{missing_required[0]}'"
            + (f" (and {missing_required[1:]})" if len(missing_required) > 1 else "")
            + f"; its columns are {names}."
        )
    if missing:
        warnings.append(f"{key}: optional columns {missing} are missing and were filled with nulls")
    extra = list(dict.fromkeys(c for c in names if c not in declared))
    if extra:
        warnings.append(f"{key}: extra columns {extra} were dropped")
    out = pd.DataFrame(
        {c: raw[c] if c in raw else pd.Series([None] * len(lines), dtype=object) for c in declared},
        index=pd.RangeIndex(len(lines)),
    )
    out["_source_file"] = key
    out["_source_line"] = lines
    return out, malformed


def _read_parquet(
    key: str, data: bytes, declared: list[str]
) -> tuple[list[str], dict[str, pd.Series], np.ndarray]:
    """The column names of a parquet file, its declared columns as lossless pandas series, and the
    row numbers (1-based)."""
    try:
        # ParquetFile, not read_table: the dataset reader fails on a repeated column name with an
        # unreadable message; the check below names the column instead.
        # INT96 (Spark's timestamps) read as nanoseconds would wrap dates past 2262 (9999-12-31, "no
        # end") to other dates silently; read as microseconds they reach the range check.
        table = pq.ParquetFile(io.BytesIO(data), coerce_int96_timestamp_unit="us").read()
    except (pa.ArrowException, OSError) as exc:
        raise RejectedFileError(f"{key} is not a readable parquet file ({_one_line(exc)}).") from None
    index = _pandas_index_columns(table)
    names = [n for n in table.column_names if n not in index]
    dupes = _repeated(names, declared)
    if dupes:
        raise RejectedFileError(f"{key} has the column '{dupes[0]}' more than once in its schema.")
    raw = {n: _arrow_series(key, n, table.column(n)) for n in names if n in declared}
    return names, raw, np.arange(1, table.num_rows + 1, dtype=np.int64)


def _pandas_index_columns(table: pa.Table) -> set[str]:
    """Columns that pandas wrote for an unnamed DataFrame index (``__index_level_0__``): not data.
    A named index (``df.set_index("id")``) is stored as a column of its own name and is data; a
    RangeIndex is a descriptor in the metadata (a dict), not a column."""
    try:
        meta = table.schema.pandas_metadata or {}
    except ValueError:  # metadata that is not JSON: no index columns to recognise
        return set()
    return {c for c in meta.get("index_columns", []) if isinstance(c, str) and _UNNAMED_INDEX.fullmatch(c)}


def _arrow_series(key: str, name: str, column: pa.ChunkedArray) -> pd.Series:
    """One parquet column as the pandas dtype that holds its values exactly, chosen from the file's
    own arrow type: integers stay integers (pandas' default turns an int column with nulls into
    float64, which rounds above 2**53), timestamps keep their unit, dates become midnight, binary is
    decoded as UTF-8. Whether a value suits the column's config type is decided per value by
    :func:`convert_column`, the same rule as for CSV text."""
    arrow = column.type
    if pa.types.is_dictionary(arrow):
        column, arrow = column.cast(arrow.value_type), arrow.value_type
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or pa.types.is_fixed_size_binary(arrow):
        column, arrow = _decode_utf8(key, name, column), pa.large_string()
    elif pa.types.is_string(arrow) or pa.types.is_large_string(arrow):
        try:  # a writer may store any bytes in a text column; pyarrow checks them only when converting
            column.validate(full=True)
        except pa.ArrowInvalid:
            column = _decode_utf8(key, name, column)  # raises naming the row
    if pa.types.is_timestamp(arrow) and arrow.tz is not None:
        # The values are UTC instants whatever zone the file names; pandas would look the name up,
        # and fail on one it does not know ("UTC+5").
        column = column.cast(pa.timestamp(arrow.unit, tz="UTC"))
    if pa.types.is_integer(arrow):
        wide = pa.uint64() if arrow == pa.uint64() else pa.int64()
        mapper = {pa.int64(): pd.Int64Dtype(), pa.uint64(): pd.UInt64Dtype()}
        return column.cast(wide).to_pandas(types_mapper=mapper.get)
    if pa.types.is_boolean(arrow):
        return column.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
    if pa.types.is_floating(arrow):
        return column.cast(pa.float64()).to_pandas()
    if pa.types.is_date(arrow):
        return column.cast(pa.timestamp("ms")).to_pandas()
    if pa.types.is_nested(arrow):
        # As Python objects a list reads as text ("['AA']"); as arrow values it is of no type's family.
        return column.to_pandas(types_mapper=pd.ArrowDtype)
    return column.to_pandas()


def _decode_utf8(key: str, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A binary column as strings; bytes that are not UTF-8 reject the file, like a CSV file in the
    wrong encoding."""
    column = column.cast(pa.large_binary())  # fixed-size binary has no cast to text
    try:
        return column.cast(pa.large_string())
    except pa.ArrowInvalid:
        pass
    for row, value in enumerate(column.to_pylist(), start=1):
        if value is None:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RejectedFileError(
                f"{key}: column '{name}' holds bytes that are not valid UTF-8 text (row {row}: byte "
                f"{exc.start} of {_show(value)} cannot be decoded)."
            ) from None
    raise RejectedFileError(f"{key}: column '{name}' cannot be read as UTF-8 text.")


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line: a rejection reason is a single paragraph."""
    return " ".join(str(exc).split())


def _repeated(names: list[str], declared: list[str]) -> list[str]:
    """The declared columns a file has more than once: which copy holds the values is anyone's
    guess. Repeated columns the config does not declare (the empty names of trailing delimiters a
    spreadsheet export writes, say) are dropped like any extra column."""
    return sorted({n for n in names if n in declared and names.count(n) > 1})


def _parse_csv(
    key: str, data: bytes, encoding: str, delimiter: str, declared: list[str]
) -> tuple[pd.DataFrame, np.ndarray, list[dict[str, Any]]]:
    """All fields as strings, the 1-based line number where each record starts, and the records
    whose field count differs from the header's (kept verbatim); of a column the header repeats
    (not a declared one, see :func:`_repeated`), the last."""
    lossy = False
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        if data[:2] in _UTF16_BOMS and encoding.replace("-", "").lower() != "utf16":
            raise RejectedFileError(
                f"{key} is UTF-16 text (its byte order mark says so), not {encoding}: export it as "
                f"{encoding}, or set data.source.encoding: utf-16 for this pipeline's files."
            ) from None
        if codecs.lookup(encoding).name != "utf-8":
            line = data[: exc.start].count(b"\n") + 1
            raise RejectedFileError(
                f"{key} is not valid {encoding}: byte {exc.start} (line {line}) cannot be decoded."
            ) from None
        # A stray byte (a Windows-1252 quote in a free-text field) costs its value, not the file:
        # kept as it is, flagged where a declared column holds it, dropped with undeclared columns.
        text, lossy = data.decode(encoding, errors="surrogateescape"), True
    # Excel's byte order mark goes before parsing: after it, a quoted first name keeps its quotes.
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise RejectedFileError(f"{key} is empty: it has no header line.")
    # Lines end at LF (or CRLF), as editors, `wc -l` and `grep -n` number them: a CR alone inside a
    # line (pasted from an old Mac note) stays in it, one malformed line instead of two fragments
    # that shifted every later line number. A file without any LF ends its lines with CR (classic
    # Mac OS).
    lines = _Lines(list(io.StringIO(text, newline="\n" if "\n" in text else "")))
    # The csv module refuses fields over 128 KiB (a global limit); no field is longer than the file,
    # which is already in memory.
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    # Strict: a quote that is never closed raises at the end of the file instead of swallowing every
    # later line into one field.
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise RejectedFileError(
            f"{key}: its header line cannot be parsed as CSV ({_one_line(exc)})."
        ) from None
    if not any(header):
        # Not skipped: a file whose header is not on line 1 is not the file the writer meant.
        raise RejectedFileError(f"{key} has no column names on line 1; the header must be the first line.")
    dupes = _repeated(header, declared)
    if dupes:
        raise RejectedFileError(f"{key} has the column '{dupes[0]}' more than once in its header.")
    records: list[list[str]] = []
    numbers: list[int] = []
    malformed: list[dict[str, Any]] = []
    while True:
        first = lines.position  # 0-based: the record starts on line first + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # Only the record's first line is malformed: the lines a broken quote ran over are
            # records of their own, so parsing resumes on the next line.
            lines.position = first + 1
            why = (
                "a carriage return (CR) inside an unquoted field" if "new-line character" in str(exc) else exc
            )
            record, reason = None, f"unparseable CSV ({why}); parsing resumed on the next line"
        else:
            reason = f"{len(record)} fields, the header has {len(header)}"
            spanned = lines.lines[first : lines.position]
            if len(spanned) > 1 and (
                len(record) != len(header) or _records_of_their_own(spanned[1:-1], delimiter, len(header))
            ):
                # A quote opened on this line and closed lines later: the lines between are records
                # of their own (each with the header's fields), not the text of one quoted field.
                # Only this line is malformed: parsing resumes on the next one, as after a csv.Error.
                lines.position = first + 1
                record = None
                reason = (
                    f"a quote opened on this line is closed {len(spanned) - 1} line(s) later, over lines "
                    "that are records of their own; parsing resumed on the next line"
                )
        if record is not None and len(record) == len(header):
            records.append(record)
            numbers.append(first + 1)
            continue
        raw = "".join(lines.lines[first : lines.position]).rstrip("\r\n")
        if record is not None and not raw.strip(" \t"):
            continue  # a blank line, or one of only spaces or tabs ("," is a malformed line)
        malformed.append({"source_file": key, "line": first + 1, "raw": raw, "reason": reason})
    columns = list(zip(*records, strict=True)) if records else [()] * len(header)
    if lossy:  # undecodable bytes back as bytes: typing flags them as text that is not UTF-8
        columns = [
            [_undecoded(v) for v in col] if name in declared else col
            for name, col in zip(header, columns, strict=True)
        ]
    frame = pd.DataFrame({h: np.array(col, dtype=object) for h, col in zip(header, columns, strict=True)})
    return frame, np.array(numbers, dtype=np.int64), malformed


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte surrogateescape kept


def _undecoded(value: str) -> str | bytes:
    """A field decoded with surrogateescape: the bytes it was read from if one of them did not
    decode, else the text."""
    return value.encode("utf-8", "surrogateescape") if _ESCAPED_BYTE.search(value) else value


def _records_of_their_own(lines: list[str], delimiter: str, fields: int) -> bool:
    """Whether ``lines`` (the inner lines of a record spanning several) each parse alone as a record
    of ``fields`` fields: lines a stray quote swallowed, not the text of a multi-line quoted field."""
    if not lines:
        return False
    try:
        return all(len(next(csv.reader([line], delimiter=delimiter), [])) == fields for line in lines)
    except csv.Error:
        return False


class _Lines:
    """A file's lines for :func:`csv.reader`, with a position that can be set back to resume
    parsing after a record that does not parse."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.position = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.position == len(self.lines):
            raise StopIteration
        self.position += 1
        return self.lines[self.position - 1]


# -- typing -------------------------------------------------------------------------------------


def _type_frame(
    raw: pd.DataFrame, columns: list[ColumnSpec], day: dt.date, label: str = "", zone: dt.tzinfo = dt.UTC
) -> pd.DataFrame:
    """Convert every declared column of one file's raw frame to its type and add the lineage.
    ``label`` goes before each column name in ``_ingest_error`` (``weather: `` for a join's file);
    naive timestamps are times in ``zone``, the pipeline's time zone."""
    out = pd.DataFrame(index=raw.index)
    errors: list[list[str]] = [[] for _ in range(len(raw))]
    for spec in columns:
        typed, bad, reason = convert_column(raw[spec.name], spec.type, zone)
        for i in np.flatnonzero(bad):
            errors[i].append(f"{label}{spec.name}: {_show(raw[spec.name].iloc[i])} {reason}")
        out[spec.name] = typed
    out["_day"] = pd.Series(day.isoformat(), index=raw.index, dtype=STRING_DTYPE)
    out["_source_file"] = raw["_source_file"].astype(STRING_DTYPE)
    out["_source_line"] = raw["_source_line"].astype("int64")
    out["_ingest_error"] = pd.Series([_join_errors(e) for e in errors], index=raw.index, dtype=STRING_DTYPE)
    return out


def _stack(frames: list[pd.DataFrame], columns: list[ColumnSpec], day: dt.date) -> pd.DataFrame:
    """One table's typed per-file frames, in file order (an empty typed frame when there are none)."""
    if frames:
        return pd.concat(frames, ignore_index=True)
    names = [c.name for c in columns] + ["_source_file", "_source_line"]
    return _type_frame(pd.DataFrame({n: pd.Series([], dtype=object) for n in names}), columns, day)


def _join_errors(errors: list[str]) -> str | None:
    return "; ".join(errors) if errors else None


def _show(value: object) -> str:
    if isinstance(value, np.generic):
        value = value.item()  # 1.5, not np.float64(1.5)
    text = repr(value.isoformat()) if isinstance(value, pd.Timestamp) else repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def convert_column(raw: pd.Series, kind: str, zone: dt.tzinfo = dt.UTC) -> tuple[pd.Series, np.ndarray, str]:
    """``raw`` (strings from CSV, or one parquet file's typed values) as the config type ``kind``.

    Returns the typed series (unconvertible values become null), the boolean mask of values that
    were present but unconvertible, and the reason to report for them. Text is parsed; typed values
    are converted without a detour through text or float, and a typed value that cannot be of
    ``kind`` (a number for a timestamp, whose unit is unknown) is flagged like unparseable text.
    Timestamps without an offset are times in ``zone``. Never raises on values.
    """
    family = _family(raw.dtype)
    if family != "text":
        missing = raw.isna().to_numpy(dtype=bool)
        if kind in ("string", "category"):
            if family == "nested":
                return _wrong_family(raw, missing, STRING_DTYPE, "is not text (a list, struct or map)")
            # Whole numbers as integers ("101", not "101.0"): an int column with a null arrives as
            # floats, and must give the text the same values give in CSV (joins, duplicates, rules).
            text = category_strings(raw) if family == "float" else raw.astype(STRING_DTYPE)
            return _trimmed(text), np.zeros(len(raw), dtype=bool), ""
        values = raw
    else:
        text, undecodable = _as_text(raw)
        if kind in ("string", "category"):
            return _trimmed(text), undecodable, "is not valid UTF-8 text"
        stripped = text.str.strip()
        # An undecodable value is null but present: it is flagged, not taken as missing.
        missing = (stripped.isna() | stripped.isin(NA_TOKENS)).to_numpy(dtype=bool) & ~undecodable
        values = stripped.mask(missing)
    if kind == "int":
        return _to_int(values, missing, family)
    if kind == "float":
        return _to_float(values, missing, family)
    if kind == "bool":
        return _to_bool(values, missing, family)
    return _to_timestamp(values, missing, family, zone)


def _trimmed(text: pd.Series) -> pd.Series:
    """Text without surrounding whitespace, empty as missing: "JFK " would be a category of its own
    and join no weather row, and "   " would pass a not-null rule."""
    stripped = text.str.strip()
    return stripped.mask(stripped == "")


def _family(dtype: Any) -> str:
    """What a series holds: "nested", "text", "int", "float", "bool", "timestamp" or "other"."""
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_nested(dtype.pyarrow_dtype):
        return "nested"
    if pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.StringDtype | pd.CategoricalDtype):
        return "text"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    return "other"


def _as_text(raw: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Text values as a string series; bytes are decoded as UTF-8, and those that cannot be become
    null, flagged in the mask."""
    undecodable = np.zeros(len(raw), dtype=bool)
    if isinstance(raw.dtype, pd.CategoricalDtype):
        raw = raw.astype(object)
    if raw.dtype == object and pd.api.types.infer_dtype(raw, skipna=True) not in ("string", "empty"):
        values = raw.to_numpy(copy=True)
        for i, value in enumerate(values):
            if isinstance(value, bytes | bytearray):
                try:
                    values[i] = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    values[i], undecodable[i] = None, True
        raw = pd.Series(values, index=raw.index)
    return raw.astype(STRING_DTYPE), undecodable


def _wrong_family(
    values: pd.Series, missing: np.ndarray, dtype: str, reason: str
) -> tuple[pd.Series, np.ndarray, str]:
    """Every present value flagged: the series' type can hold no value of the column's type."""
    return pd.Series(index=values.index, dtype=dtype), ~missing, reason


def _to_int(values: pd.Series, missing: np.ndarray, family: str) -> tuple[pd.Series, np.ndarray, str]:
    reason = "is not a 64-bit integer"
    if family == "text":
        parsed = [_exact_int(v) if isinstance(v, str) else None for v in values.tolist()]
        bad = np.array([p is None for p in parsed], dtype=bool) & ~missing
        return pd.Series(parsed, index=values.index, dtype="Int64"), bad, reason
    if family == "int":
        # Exact: no float in between. Only an unsigned 64-bit value can be too large for int64.
        if not pd.api.types.is_unsigned_integer_dtype(values.dtype):
            return values.astype("Int64"), np.zeros(len(values), dtype=bool), reason
        unsigned = values.astype("UInt64")
        too_big = (unsigned > INT64_MAX).fillna(False).to_numpy(dtype=bool)
        return unsigned.mask(too_big).astype("Int64"), too_big, reason
    if family == "float":
        array = values.to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(array) & (array == np.floor(array)) & (np.abs(array) < 2.0**63)
        bad = ~integral & ~missing
        return pd.Series(np.where(integral, array, np.nan), index=values.index).astype("Int64"), bad, reason
    return _wrong_family(values, missing, "Int64", reason)


def _exact_int(text: str) -> int | None:
    """``text`` as an int64 when it is an integer ("12", "12.0", "1.2e1"), else None; parsed exactly
    (Python int / Decimal), never through float."""
    if match := _INTEGER.fullmatch(text):
        # int() refuses more than 4300 digits, leading zeros too (ValueError); an int64 has 19 at most.
        digits = match.group(1).lstrip("+-").lstrip("0") or "0"
        if len(digits) > INT64_DIGITS:
            return None
        value = -int(digits) if match.group(1).startswith("-") else int(digits)
    elif _DECIMAL.fullmatch(text):
        try:
            number = Decimal(text)
        except InvalidOperation:
            # An exponent beyond Decimal's range (over 10**18 digits): only a zero is an int64 then.
            return 0 if not text.lower().partition("e")[0].strip("+-.0") else None
        if number != number.to_integral_value() or not INT64_MIN <= number <= INT64_MAX:
            return None
        value = int(number)
    else:
        return None
    return value if INT64_MIN <= value <= INT64_MAX else None


def _to_float(values: pd.Series, missing: np.ndarray, family: str) -> tuple[pd.Series, np.ndarray, str]:
    reason = "is not a finite float"
    if family == "text":
        text = values.astype(object)
        array = pd.to_numeric(text, errors="coerce").astype("float64").to_numpy()
        # pandas says which values are numbers, but its parser is not correctly rounded: one value
        # of 17 significant digits in seven comes out a bit off (a float written with repr() would
        # not read back as itself). Python's float() is correctly rounded, for the accepted ones.
        accepted = np.flatnonzero(np.isfinite(array))
        array[accepted] = [_correctly_rounded(v) for v in text.to_numpy()[accepted]]
    elif family in ("int", "float"):
        array = values.to_numpy(dtype="float64", na_value=np.nan)
    else:
        return _wrong_family(values, missing, "float64", reason)
    bad = ~np.isfinite(array) & ~missing
    return pd.Series(np.where(bad, np.nan, array), index=values.index), bad, reason


def _correctly_rounded(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # a form pandas reads and Python does not: not a finite float after all
        return math.nan


def _to_bool(values: pd.Series, missing: np.ndarray, family: str) -> tuple[pd.Series, np.ndarray, str]:
    reason = "is not a boolean"
    typed = pd.Series(pd.NA, index=values.index, dtype="boolean")
    if family == "text":
        lower = values.str.lower()
        typed[lower.isin(TRUE_TOKENS).to_numpy(dtype=bool)] = True
        typed[lower.isin(FALSE_TOKENS).to_numpy(dtype=bool)] = False
        # "1.0" / "0.0": how pandas writes a 0/1 column that has a null (as _to_int reads "12.0")
        other = (typed.isna() & values.notna()).to_numpy(dtype=bool)
        if other.any():
            numbers = values[other].map(_exact_int)
            typed[numbers.index[(numbers == 1).to_numpy(dtype=bool)]] = True
            typed[numbers.index[(numbers == 0).to_numpy(dtype=bool)]] = False
    elif family == "bool":
        typed = values.astype("boolean")
    elif family in ("int", "float"):
        # 1 and 0 are booleans in CSV text too (1.0 and 0.0: a 0/1 column with a null, as pandas
        # stores it); any other number is not.
        typed[(values == 1).fillna(False).to_numpy(dtype=bool)] = True
        typed[(values == 0).fillna(False).to_numpy(dtype=bool)] = False
    return typed, (typed.isna().to_numpy() & ~missing), reason


def _to_timestamp(
    values: pd.Series, missing: np.ndarray, family: str, zone: dt.tzinfo = dt.UTC
) -> tuple[pd.Series, np.ndarray, str]:
    """Naive values are times in ``zone`` (the pipeline's); the result is UTC nanoseconds, so values
    outside 1677-2262 are flagged rather than wrapped, and so is a naive local time that a
    daylight-saving change skips or repeats (which instant it was is unknown)."""
    local = zone is not dt.UTC and str(zone) != "UTC"
    if family == "text":
        # RFC 3339 allows a lower-case t and z; pandas parses upper case only.
        values = values.str.upper()
        # Parsed in two groups: pandas 2.3 gives a naive value the offset of an aware one before it.
        aware = values.str.contains(_AWARE_TIMESTAMP, regex=True).fillna(False).to_numpy(dtype=bool)
        typed = pd.Series(pd.NaT, index=values.index, dtype=TIMESTAMP_DTYPE)
        if aware.any():
            typed[aware] = pd.to_datetime(values[aware], utc=True, errors="coerce", format="ISO8601")
        if (~aware).any():
            naive = pd.to_datetime(values[~aware], utc=not local, errors="coerce", format="ISO8601")
            typed[~aware] = _localized(naive, zone) if local else naive
        # Out-of-range values fail the same parse: 9999-12-31 ("no end") is valid ISO 8601.
        reason = TEXT_TIMESTAMP_RULE + (f" (a time in {zone} that exists once)" if local else "")
        return typed, (typed.isna().to_numpy() & ~missing), reason
    if family == "timestamp":
        if values.dt.tz is None and local:
            values = _localized(values, zone)
        utc = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        in_range = (utc >= TIMESTAMP_MIN) & (utc <= TIMESTAMP_MAX)
        typed = utc.where(in_range).astype(TIMESTAMP_DTYPE)
        return (
            typed,
            (typed.isna().to_numpy() & ~missing),
            f"is outside the timestamp range {TIMESTAMP_RANGE}",
        )
    if family in ("int", "float"):
        reason = "is a number, not a timestamp (its epoch unit is unknown)"
    else:
        reason = "is not a timestamp"
    return _wrong_family(values, missing, TIMESTAMP_DTYPE, reason)


def _localized(naive: pd.Series, zone: dt.tzinfo) -> pd.Series:
    """Naive times as times in ``zone``, in UTC; NaT where a daylight-saving change skips or repeats
    the time (flagged by the caller, never guessed)."""
    return naive.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")


# -- joins --------------------------------------------------------------------------------------


def _split_unjoinable(
    key: str, join: JoinSpec, raw: pd.DataFrame, typed: pd.DataFrame, warnings: list[str]
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """A side file's typed rows with a complete join key, and the others as malformed-line entries
    (its values as read, line, reason). A row whose key is missing or does not convert can join
    nothing and never becomes a row of the day, so it is kept like a line that does not parse:
    validation quarantines it and counts it as a bad record."""
    no_key = typed[join.keys].isna().any(axis=1).to_numpy(dtype=bool)
    if not no_key.any():
        return typed, []
    entries = []
    for i in np.flatnonzero(no_key).tolist():
        error = typed["_ingest_error"].iloc[i]
        missing = [k for k in join.keys if pd.isna(typed[k].iloc[i])]
        why = error if isinstance(error, str) else f"{', '.join(missing)} missing"
        values = {c.name: _raw_text(raw[c.name].iloc[i]) for c in join.columns}
        entries.append(
            {
                "source_file": key,
                "line": int(raw["_source_line"].iloc[i]),
                "raw": json.dumps(values, ensure_ascii=False),
                "reason": f"join '{join.name}': no complete key {join.keys} ({why}); it joins no row",
            }
        )
    warnings.append(
        f"{key}: {len(entries)} row(s) without a complete key {join.keys} cannot be joined; they were "
        "quarantined with the malformed lines"
    )
    return typed[~no_key], entries


def _identical_copies_dropped(frame: pd.DataFrame, cfg: PipelineConfig, warnings: list[str]) -> pd.DataFrame:
    """``frame`` less the rows repeating an earlier row's key and every value (an overlapping extract
    sent again, a file landed twice): kept once, counted in ``warnings``, as a join's identical copies
    are. Quarantined by the key rule instead, every copy was lost though they agree. Copies that
    disagree stay for that rule: which is right is unknown."""
    keys = list(cfg.data.key)
    if not keys or frame.empty:
        return frame
    values = [c.name for c in cfg.data.columns]
    repeated = frame.duplicated([*values, "_ingest_error"], keep="first") & frame[keys].notna().all(axis=1)
    if not repeated.any():
        return frame
    files = sorted(set(frame.loc[repeated, "_source_file"]))
    warnings.append(
        f"{int(repeated.sum())} row(s) repeating another row's key {keys} and every value were kept once "
        f"(the repeats in {', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
    )
    return frame[~repeated.to_numpy()].reset_index(drop=True)


def _disagreeing_copies_marked(
    side: pd.DataFrame, join: JoinSpec, values: list[str], warnings: list[str]
) -> pd.DataFrame:
    """``side`` with the first copy of each key whose copies disagree (on a joined value or a
    conversion error) carrying an ``_ingest_error`` that names every copy; a warning per kind."""
    copies = side[side.duplicated(join.keys, keep=False)].reset_index(names="_row")
    variants = copies.drop_duplicates([*join.keys, *values, "_ingest_error"])
    conflicting = variants[variants.duplicated(join.keys, keep=False)][join.keys].drop_duplicates()
    conflicted = copies.merge(conflicting, on=join.keys)  # every copy of those keys, in side order
    identical = int(side.duplicated(join.keys).sum()) - (len(conflicted) - len(conflicting))
    if identical:
        warnings.append(
            f"join '{join.name}': {identical} row(s) repeating another row's key {join.keys} and values "
            "were joined once"
        )
    if conflicting.empty:
        return side
    side = side.copy()
    for _, group in conflicted.groupby(join.keys, sort=False):
        key = ", ".join(f"{k}={_show(group[k].iloc[0])}" for k in join.keys)
        where = ", ".join(
            f"{f} line {n}" for f, n in zip(group["_source_file"], group["_source_line"], strict=True)
        )
        side.loc[group["_row"].iloc[0], "_ingest_error"] = (
            f"{join.name}: {len(group)} rows of key {key} disagree ({where}); which is right is unknown"
        )
    warnings.append(
        f"join '{join.name}': {len(conflicting)} key(s) {join.keys} have copies that disagree; the rows "
        "they join are quarantined"
    )
    return side


def _raw_text(value: object) -> str | None:
    """A value as read (CSV text, or a parquet value), as JSON-safe text; None when missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, np.generic):
        value = value.item()
    return value.isoformat() if isinstance(value, pd.Timestamp | dt.datetime | dt.date) else str(value)


def _left_join(
    frame: pd.DataFrame,
    join: JoinSpec,
    frames: list[pd.DataFrame],
    day: dt.date,
    rejected: list[str],
    warnings: list[str],
) -> pd.DataFrame:
    """Left-join a side table on its keys (its rows without a full key were taken out per file by
    :func:`_split_unjoinable`). Copies of a key with the same values join as one row (counted in
    warnings); copies that disagree (a correction file beside the original) cannot say which value
    is right, so every row they join is marked with the files and lines of the copies and validation
    quarantines it, as a conversion error in a side value marks the rows it joins to
    (``weather: temp: ...``). ``rejected``: the day's files of this join that were rejected, named
    when none is left."""
    if not frames:
        why = (
            f"its file(s) {rejected} were rejected (see rejected_files)"
            if rejected
            else f"no file matching '{join.file_pattern}'"
        )
        warnings.append(f"join '{join.name}': {why}; its columns are null")
    side = _stack(frames, join.columns, day)
    added = [c.name for c in join.columns if c.name not in frame.columns]
    duplicated = side.duplicated(join.keys, keep="first")
    if duplicated.any():
        side = _disagreeing_copies_marked(side, join, added, warnings)
        side = side[~duplicated]
    side = side[join.keys + added + ["_ingest_error"]].rename(columns={"_ingest_error": "_join_error"})
    merged = frame.merge(side, on=join.keys, how="left", validate="many_to_one", sort=False, indicator=True)
    matched = int((merged.pop("_merge") == "both").sum())
    if frames and len(frame) and matched < len(frame):
        # Keys that differ in case, time zone or spelling join nothing, and every side column is
        # null where they do not: said here, or the day passes with its side values silently empty.
        unused = len(side) - side.merge(frame[join.keys].drop_duplicates(), on=join.keys).shape[0]
        warnings.append(
            f"join '{join.name}': {matched} of {len(frame)} rows found a {join.name} row on "
            f"{'+'.join(join.keys)}; the others get null {join.name} columns. {unused} of the "
            f"{len(side)} {join.name} rows matched no row"
            + (": compare the key values of both files (case, time zone, format)." if not matched else ".")
        )
    # The side's errors are already labelled with the join's name (_type_frame).
    merged["_ingest_error"] = (
        (merged["_ingest_error"] + "; " + merged["_join_error"])
        .fillna(merged["_ingest_error"])
        .fillna(merged["_join_error"])
        .astype(STRING_DTYPE)
    )
    return merged.drop(columns="_join_error")
