"""Ingest: one day's landing files (CSV / gzip CSV / parquet) -> one staged, typed parquet partition.

Bad input is normal input, and nothing is lost:

* a value that cannot be converted to its column's type keeps its row; the value becomes null and
  the lineage column ``_ingest_error`` says why (``dep_delay: 'abc' is not a float``), so validation
  quarantines the row with the reason;
* a CSV line with the wrong number of fields is kept verbatim, with its line number, in
  ``malformed_lines.jsonl``;
* a whole-file problem (zero bytes, no header, unknown extension, wrong encoding, unreadable
  parquet or gzip, a required column missing) rejects that file with a one-sentence reason and a
  byte-for-byte copy; the other files of the day still ingest.

Validation (:mod:`mlops_tasks.validation`) moves the copies and malformed lines into the quarantine
partition, so the staging manifest is the hand-over: it lists the data parts, the rejected files
with their reasons and the malformed-lines part.

Output bytes depend only on the landing bytes: files are read in key order, rows keep their file
order, and no wall-clock time is written, so a rerun publishes byte-identical parts.
"""

from __future__ import annotations

import csv
import datetime as dt
import fnmatch
import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_tasks.config import ColumnSpec, JoinSpec, PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.storage import (
    PARQUET_COMPRESSION,
    ObjectStore,
    partition_prefix,
    publish_manifest,
    sha256_bytes,
    write_part,
)

LINEAGE_COLUMNS = ("_day", "_source_file", "_source_line", "_ingest_error")
# Tokens that mean "missing" in numeric, bool and timestamp columns (R's NA, pandas' NaN, SQL NULL).
# In string columns only the empty field is missing: "NA" may be a real code there.
NA_TOKENS = frozenset({"", "NA", "N/A", "n/a", "NaN", "nan", "NAN", "-nan", "null", "NULL", "None", "none"})
TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0"})
CSV_SUFFIXES = (".csv",)
GZIP_SUFFIXES = (".csv.gz", ".gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
STRING_DTYPE = pd.StringDtype()


class RejectedFileError(DataError):
    """A landing file cannot be ingested at all; the message names the key (and column) and why."""


@dataclass
class _Table:
    """The rows of one table (main or a join) read from one day's files, before typing."""

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
    keys = [o.key for o in store.list(landing) if not o.key.endswith("/")]
    if not keys:
        return {
            "date": day.isoformat(),
            "status": "no_data",
            "staged_uri": None,
            "rows": 0,
            "files": 0,
            "rejected_files": [],
            "malformed_lines": 0,
            "warnings": [f"no files under {store.uri(landing)}"],
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
        data = store.get_bytes(key)
        try:
            frame, malformed = _read_file(key, data, columns, required, cfg, found.warnings)
        except RejectedFileError as exc:
            copy = write_part(store, staging, rejected_copy_name(key), data, rows=0)
            found.rejected.append({"key": key, "reason": str(exc), "copy": copy["key"]})
            parts.append(copy)
            continue
        found.malformed.extend(malformed)
        table = main if target == "" else joins[target]
        table.frames.append(frame)
        table.sources.append(
            {"key": key, "sha256": sha256_bytes(data), "rows": len(frame), "table": target or "main"}
        )

    frame = _type_table(main.frames, cfg.data.columns, day)
    for join in cfg.data.joins:
        frame = _left_join(frame, join, joins[join.name].frames, day, found.warnings)
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


def _required_columns(cfg: PipelineConfig, target: str) -> set[str]:
    """Columns a file must have: non-nullable ones, the row key and the join keys. A missing
    nullable column is filled with nulls (and warned about) instead."""
    if target:
        join = _join(cfg, target)
        return {c.name for c in join.columns if not c.nullable} | set(join.keys)
    keys = set(cfg.data.key) | {k for j in cfg.data.joins for k in j.keys}
    return {c.name for c in cfg.data.columns if not c.nullable} | keys


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
    malformed: list[dict[str, Any]] = []
    if lower.endswith(PARQUET_SUFFIXES):
        try:
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
        except (pa.ArrowException, OSError) as exc:
            raise RejectedFileError(f"{key} is not a readable parquet file ({exc}).") from None
        lines = np.arange(1, len(frame) + 1)
    elif lower.endswith(GZIP_SUFFIXES + CSV_SUFFIXES):
        if lower.endswith(GZIP_SUFFIXES):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise RejectedFileError(f"{key} is not a valid gzip file ({exc}).") from None
        frame, lines, malformed = _parse_csv(
            key, data, cfg.data.source.encoding, cfg.data.source.csv_delimiter
        )
    else:
        raise RejectedFileError(
            f"{key} has an unsupported file extension; expected one of "
            f"{', '.join(CSV_SUFFIXES + GZIP_SUFFIXES + PARQUET_SUFFIXES)}."
        )
    declared = [c.name for c in columns]
    missing = [c for c in declared if c not in frame.columns]
    missing_required = [c for c in missing if c in required]
    if missing_required:
        raise RejectedFileError(
            f"{key} lacks the required column '{missing_required[0]}'"
            + (f" (and {missing_required[1:]})" if len(missing_required) > 1 else "")
            + f"; its columns are {list(frame.columns)}."
        )
    if missing:
        warnings.append(f"{key}: optional columns {missing} are missing and were filled with nulls")
    extra = [c for c in frame.columns if c not in declared]
    if extra:
        warnings.append(f"{key}: extra columns {extra} were dropped")
    out = pd.DataFrame(
        {
            c: frame[c] if c in frame.columns else pd.Series([None] * len(frame), dtype=object)
            for c in declared
        }
    )
    out["_source_file"] = key
    out["_source_line"] = lines
    return out, malformed


def _parse_csv(
    key: str, data: bytes, encoding: str, delimiter: str
) -> tuple[pd.DataFrame, np.ndarray, list[dict[str, Any]]]:
    """All fields as strings, the 1-based line number where each record starts, and the records
    whose field count differs from the header's (kept verbatim)."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RejectedFileError(
            f"{key} is not valid {encoding}: byte {exc.start} (line {line}) cannot be decoded."
        ) from None
    if not text.strip():
        raise RejectedFileError(f"{key} is empty: it has no header line.")
    lines = list(io.StringIO(text, newline=""))
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    header[0] = header[0].lstrip("\ufeff")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise RejectedFileError(f"{key} has the column '{dupes[0]}' more than once in its header.")
    records: list[list[str]] = []
    numbers: list[int] = []
    malformed: list[dict[str, Any]] = []
    start = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            record, reason = None, f"unparseable CSV ({exc})"
        else:
            reason = f"{len(record)} fields, the header has {len(header)}"
        raw = "".join(lines[start - 1 : reader.line_num])
        if record == []:
            pass  # a blank line
        elif record is not None and len(record) == len(header):
            records.append(record)
            numbers.append(start)
        else:
            malformed.append({"source_file": key, "line": start, "raw": raw.rstrip("\r\n"), "reason": reason})
        start = reader.line_num + 1
    columns = list(zip(*records, strict=True)) if records else [()] * len(header)
    frame = pd.DataFrame({h: np.array(col, dtype=object) for h, col in zip(header, columns, strict=True)})
    return frame, np.array(numbers, dtype=np.int64), malformed


# -- typing -------------------------------------------------------------------------------------


def _type_table(frames: list[pd.DataFrame], columns: list[ColumnSpec], day: dt.date) -> pd.DataFrame:
    """Concatenate one table's raw frames and convert every declared column to its type."""
    names = [c.name for c in columns] + ["_source_file", "_source_line"]
    raw = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame({n: pd.Series([], dtype=object) for n in names})
    )
    out = pd.DataFrame(index=raw.index)
    errors: list[list[str]] = [[] for _ in range(len(raw))]
    for spec in columns:
        typed, bad, reason = convert_column(raw[spec.name], spec.type)
        for i in np.flatnonzero(bad):
            errors[i].append(f"{spec.name}: {_show(raw[spec.name].iloc[i])} {reason}")
        out[spec.name] = typed
    out["_day"] = pd.Series(day.isoformat(), index=raw.index, dtype=STRING_DTYPE)
    out["_source_file"] = raw["_source_file"].astype(STRING_DTYPE)
    out["_source_line"] = raw["_source_line"].astype("int64")
    out["_ingest_error"] = pd.Series([_join_errors(e) for e in errors], index=raw.index, dtype=STRING_DTYPE)
    return out


def _join_errors(errors: list[str]) -> str | None:
    return "; ".join(errors) if errors else None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "...'"


def convert_column(raw: pd.Series, kind: str) -> tuple[pd.Series, np.ndarray, str]:
    """``raw`` (strings from CSV, or parquet-typed values) as the config type ``kind``.

    Returns the typed series (unconvertible values become null), the boolean mask of values that
    were present but unconvertible, and the reason to report for them.
    """
    if kind in ("string", "category"):
        typed = raw.astype(STRING_DTYPE)
        return typed.mask(typed == ""), np.zeros(len(raw), dtype=bool), ""
    textual = raw.dtype == object or isinstance(raw.dtype, pd.StringDtype)
    if textual:
        stripped = raw.astype(STRING_DTYPE).str.strip()
        missing = (stripped.isna() | stripped.isin(NA_TOKENS)).to_numpy(dtype=bool)
        values: pd.Series = stripped.mask(missing)
    else:
        missing = raw.isna().to_numpy(dtype=bool)
        values = raw
    if kind in ("int", "float"):
        return _to_number(values, missing, kind)
    if kind == "bool":
        if not textual:
            return values.astype("boolean"), np.zeros(len(raw), dtype=bool), ""
        lower = values.str.lower()
        typed = pd.Series(pd.NA, index=raw.index, dtype="boolean")
        typed[lower.isin(TRUE_TOKENS).to_numpy(dtype=bool)] = True
        typed[lower.isin(FALSE_TOKENS).to_numpy(dtype=bool)] = False
        return typed, (typed.isna().to_numpy() & ~missing), "is not a boolean"
    # timestamp: naive values are taken as UTC.
    if textual:
        # Parsed in two groups: pandas 2.3 gives a naive value the offset of an aware one before it.
        aware = values.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).fillna(False).to_numpy(dtype=bool)
        typed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
        for group in (aware, ~aware):
            if group.any():
                typed[group] = pd.to_datetime(values[group], utc=True, errors="coerce", format="ISO8601")
    elif isinstance(values.dtype, pd.DatetimeTZDtype):
        typed = values.dt.tz_convert("UTC")
    else:
        typed = pd.to_datetime(values, utc=True, errors="coerce")
    typed = typed.astype("datetime64[ns, UTC]")
    return typed, (typed.isna().to_numpy() & ~missing), "is not an ISO 8601 timestamp"


def _to_number(values: pd.Series, missing: np.ndarray, kind: str) -> tuple[pd.Series, np.ndarray, str]:
    numbers = pd.to_numeric(values.astype(object), errors="coerce").astype("float64")
    array = numbers.to_numpy()
    unparsed = np.isnan(array) & ~missing
    if kind == "float":
        infinite = np.isinf(array)
        array = np.where(infinite, np.nan, array)
        return pd.Series(array, index=values.index), unparsed | infinite, "is not a finite float"
    with np.errstate(invalid="ignore"):
        fractional = np.isfinite(array) & ((array != np.floor(array)) | (np.abs(array) >= 2.0**63))
    bad = unparsed | fractional | np.isinf(array)
    array = np.where(bad, np.nan, array)
    return pd.Series(array, index=values.index).astype("Int64"), bad, "is not an integer"


# -- joins --------------------------------------------------------------------------------------


def _left_join(
    frame: pd.DataFrame, join: JoinSpec, frames: list[pd.DataFrame], day: dt.date, warnings: list[str]
) -> pd.DataFrame:
    """Left-join a side table on its keys. Side rows without a full key cannot match and are
    dropped; duplicate keys keep their first row (file, line order); both are counted in warnings.
    A conversion error in a side value marks the rows it joins to (``weather: temp: ...``)."""
    if not frames:
        warnings.append(f"join '{join.name}': no file matching '{join.file_pattern}'; its columns are null")
    side = _type_table(frames, join.columns, day)
    no_key = side[join.keys].isna().any(axis=1)
    if no_key.any():
        warnings.append(f"join '{join.name}': {int(no_key.sum())} row(s) without a complete key were dropped")
        side = side[~no_key]
    duplicated = side.duplicated(join.keys, keep="first")
    if duplicated.any():
        warnings.append(
            f"join '{join.name}': {int(duplicated.sum())} row(s) with a duplicate key {join.keys} were "
            "dropped (first kept)"
        )
        side = side[~duplicated]
    added = [c.name for c in join.columns if c.name not in frame.columns]
    side = side[join.keys + added + ["_ingest_error"]].rename(columns={"_ingest_error": "_join_error"})
    merged = frame.merge(side, on=join.keys, how="left", validate="many_to_one", sort=False)
    side_error = f"{join.name}: " + merged["_join_error"]
    merged["_ingest_error"] = (
        (merged["_ingest_error"] + "; " + side_error)
        .fillna(merged["_ingest_error"])
        .fillna(side_error)
        .astype(STRING_DTYPE)
    )
    return merged.drop(columns="_join_error")
