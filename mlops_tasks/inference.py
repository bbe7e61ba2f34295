"""Batch inference: one day of curated rows -> the champion's ONNX model -> predictions in S3.

The work is split so Airflow can map it and every step is a transaction:

1. :func:`plan_parts` reads only parquet footers (ranged GETs) and cuts the day's curated parts into
   units of at most ``inference.part_rows`` rows along row groups: one mapped task per unit, and the
   plan is the same on every retry.
2. :func:`score_part` streams one unit by record batch - ranged GETs of its row groups' columns, one
   row group at a time - builds the model inputs with the shared
   :func:`mlops_tasks.features.onnx_inputs` (no training/serving skew), scores them with onnxruntime
   and appends each batch to a local parquet file, so memory depends on ``batch_rows`` and the row
   group size, not on the size of the day. Reading runs a few batches ahead in a thread; each
   scoring thread builds the inputs of a job of several batches and scores them batch by batch
   (see :func:`_score_rows`). The file is uploaded as one content-addressed part that nobody reads yet.
3. :func:`publish_predictions` publishes every part in one manifest PUT, which makes the day visible
   at once and deletes the parts it replaced: a rerun replaces the day, it never adds rows.

Same curated bytes + same model + same run id -> same keys and same bytes. :func:`shadow_report`
compares a challenger scored into ``predictions_shadow`` with the champion, without touching
``predictions``.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import hashlib
import json
import math
import os
import queue
import re
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_tasks import features as F
from mlops_tasks.errors import DataError
from mlops_tasks.storage import (
    PARQUET_COMPRESSION,
    ObjectNotFoundError,
    ObjectStore,
    RangedObject,
    content_id,
    partition_prefix,
    publish_manifest,
    read_published,
    write_part,
)

if TYPE_CHECKING:
    from mlops_tasks.config import PipelineConfig

PART_NAME = "part-{index:05d}.parquet"
SHADOW_REPORT_NAME = "shadow.json"
BINARY_THRESHOLD = 0.5
ROW_GROUP_ROWS = 65_536  # rows per row group of a predictions part
PREFETCH_BATCHES = 2  # batches read ahead of scoring
JOB_ROWS = 32_768  # rows a scoring thread takes at a time, in whole batches (see _job_rows)
DECODE_ROWS = 65_536  # rows of curated parquet decoded at a time (at most about 10 MB of columns)
HOLD_BYTES = 8 * 2**20  # most bytes of consecutive row groups fetched (and held) by one GET
_Item = TypeVar("_Item")
_TEXT = pa.dictionary(pa.int32(), pa.string())  # how pyarrow decodes a parquet dictionary string column
_FOOTER_GUESS = 256 * 1024  # one ranged GET covers the footer of the files planned (16 row groups: 70 kB)
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class InferenceInputError(F.FeatureError):
    """Curated rows cannot be scored: a key/feature column is missing or has the wrong type."""


class ModelContractError(DataError):
    """The ONNX model does not follow the contract of :mod:`mlops_tasks.features` for this config."""


class PredictionsError(DataError):
    """Published predictions are missing, inconsistent or were written by another model."""


# -- model ------------------------------------------------------------------------------------------


def make_session(
    model_path: str | Path, cfg: PipelineConfig, *, intra_op_threads: int | None = None
) -> ort.InferenceSession:
    """An onnxruntime CPU session tuned by ``cfg.inference`` (threads, graph optimisation level);
    ``intra_op_threads`` overrides the config's threads per call."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model file {path} does not exist")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = (
        cfg.inference.intra_op_threads if intra_op_threads is None else intra_op_threads
    )
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = _OPTIMIZATION[cfg.inference.graph_optimization]
    opts.log_severity_level = 3  # warnings (e.g. unused initialisers) are noise in task logs
    # Workers share their cores with other tasks: spin-waiting threads then burn the CPU the other
    # thread needs (1.5x fewer rows/s with spinning on a loaded 2-core host, bench_inference.py (a)).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise ModelContractError(f"{path}: onnxruntime cannot load the model: {exc}") from None


@dataclass(frozen=True)
class _Model:
    """A loaded session and what its metadata says about its outputs."""

    session: ort.InferenceSession
    task: str
    classes: list[Any] | None
    legacy: bool  # a contract-1 model (see mlops_tasks.features)
    label: str  # names the model in errors

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        cfg: PipelineConfig,
        intra_op_threads: int | None = None,
        label: str | None = None,
    ) -> _Model:
        """``label`` names the model in errors (e.g. "challenger v3 of 'flights_delay'"; default: the
        file, which a task downloaded into a temporary directory)."""
        session = make_session(model_path, cfg, intra_op_threads=intra_op_threads)
        where = label or str(model_path)
        meta = session.get_modelmeta().custom_metadata_map
        task = meta.get(F.META_TASK, cfg.target.task)
        if task != cfg.target.task:
            raise ModelContractError(
                f"{where}: the model was trained for task '{task}' but the pipeline "
                f"'{cfg.name}' predicts '{cfg.target.task}'"
            )
        expected = {"numeric": cfg.features.numeric, "categorical": cfg.features.categorical}
        if F.META_FEATURES in meta and json.loads(meta[F.META_FEATURES]) != expected:
            raise ModelContractError(
                f"{where}: the model's features {meta[F.META_FEATURES]} differ from the config's "
                f"{json.dumps(expected)}; retrain or fix features in the pipeline config"
            )
        numeric = [F.NUMERIC_INPUT] if cfg.features.numeric else []
        categorical = cfg.features.categorical
        wanted = {*numeric, *([F.CATEGORICAL_VALUES_INPUT, F.CATEGORICAL_CODES_INPUT] if categorical else [])}
        contract_1 = {*numeric, *([F.LEGACY_CATEGORICAL_INPUT] if categorical else [])}
        have = {i.name for i in session.get_inputs()}
        if have not in (wanted, contract_1):
            raise ModelContractError(
                f"{where}: the model's inputs are {sorted(have)}, expected {sorted(wanted)}"
            )
        classes = json.loads(meta[F.META_CLASSES]) if F.META_CLASSES in meta else None
        if task == "binary" and classes is not None and len(classes) != 2:
            raise ModelContractError(f"{where}: a binary model needs 2 classes, has {classes}")
        if task == "multiclass" and not classes:
            raise ModelContractError(f"{where}: a multiclass model must list its classes in metadata")
        if task == "multiclass":
            outputs = {o.name: o.shape for o in session.get_outputs()}
            width = (outputs.get(F.PROBABILITIES_OUTPUT) or [None, None])[-1]
            if F.PROBABILITIES_OUTPUT not in outputs or (isinstance(width, int) and width != len(classes)):
                raise ModelContractError(
                    f"{where}: a multiclass model needs an output '{F.PROBABILITIES_OUTPUT}' of one "
                    f"column per class of its metadata ({len(classes)}: {classes}); it has {outputs}"
                )
        labels = classes if task != "binary" else (classes or [0, 1])
        return cls(session, task, labels, F.is_legacy_session(session), where)

    def output_fields(self) -> list[pa.Field]:
        """The columns :meth:`predict` fills. Only a class can be null: a row the model gave no
        finite score (a regression's prediction is then NaN, like its score)."""
        fields = [pa.field("prediction", self._label_type(), nullable=self.task != "regression")]
        fields.append(pa.field("score", pa.float32(), nullable=False))
        if self.task == "multiclass":
            fields += [
                pa.field(f"probability_{_label_text(c)}", pa.float32(), nullable=False)
                for c in self.classes or []
            ]
        return fields

    def _label_type(self) -> pa.DataType:
        if self.task == "regression":
            return pa.float32()
        return pa.int64() if self._class_labels.dtype == np.int64 else pa.string()

    @functools.cached_property
    def _class_labels(self) -> np.ndarray:
        """The prediction of each class index (built once, not per scored job): integers where every
        class is a whole number, else text."""
        if all(_whole_number(c) for c in self.classes):
            whole = (int(c.split(".")[0]) if isinstance(c, str) else int(c) for c in self.classes)
            return np.fromiter(whole, dtype=np.int64, count=len(self.classes))
        return np.asarray([str(c) for c in self.classes], dtype=object)

    def predict(self, inputs: dict[str, np.ndarray], batch_rows: int | None = None) -> list[np.ndarray]:
        """Arrays in the order of :meth:`output_fields`; onnxruntime scores ``batch_rows`` rows per
        call (all at once if None) and the label and class columns are derived once for all."""
        inputs = F.session_inputs(inputs, self.legacy)
        names = [F.SCORE_OUTPUT] if self.task != "multiclass" else [F.SCORE_OUTPUT, F.PROBABILITIES_OUTPUT]
        rows = len(next(v for k, v in inputs.items() if k != F.CATEGORICAL_VALUES_INPUT))
        if batch_rows is None or rows <= batch_rows:
            outputs = self.session.run(names, inputs)
        else:
            calls = [
                self.session.run(names, F.take_rows(inputs, slice(start, start + batch_rows)))
                for start in range(0, rows, batch_rows)
            ]
            outputs = [np.concatenate(parts) for parts in zip(*calls, strict=True)]
        if self.task == "regression":
            return [outputs[0], outputs[0]]
        if self.task == "binary":
            score = outputs[0]
            return [self._labels(score >= BINARY_THRESHOLD, np.isfinite(score)), score]
        score, proba = outputs
        if proba.shape[1] != len(self.classes):  # a dynamic output shape is checked here, not at load
            raise ModelContractError(
                f"{self.label}: the model gives {proba.shape[1]} probabilities per row but its metadata "
                f"lists {len(self.classes)} classes ({self.classes})"
            )
        return [self._labels(proba.argmax(axis=1), np.isfinite(proba).all(axis=1)), score, *proba.T]

    def _labels(self, index: np.ndarray, scored: np.ndarray) -> np.ndarray:
        """The class of each row; masked (null once written) where the model gave no finite score:
        NaN is below the threshold and argmax of a NaN row is 0, so the row would read as a real
        class, and two models failing on it would agree."""
        labels = self._class_labels[index.astype(np.intp, copy=False)]
        return labels if scored.all() else np.ma.MaskedArray(labels, mask=~scored)


_WHOLE_NUMBER_TEXT = re.compile(r"(?:0|-?[1-9][0-9]*)(?:\.0+)?")


def _whole_number(value: Any) -> bool:
    """A class that is a whole number: 1, 1.0, True, or the text "1" - how training stores the classes
    of a 0/1 column or a positive_when rule (:func:`mlops_tasks.evaluation.class_text`), whose
    predictions are then the integers users compare with, not the text "0"/"1". The text "1.0" is how
    models of older releases stored a float label's classes: the same classes."""
    if isinstance(value, str):
        return _WHOLE_NUMBER_TEXT.fullmatch(value) is not None
    return isinstance(value, bool | int) or (isinstance(value, float) and value.is_integer())


def _label_text(value: Any) -> str:
    """A class in a column name (``probability_<class>``): as stored, but a float 1.0 as "1". The
    text "1.0" stays: the days a model scored keep their column names, which the drift monitor reads
    back across days."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


# -- plan -------------------------------------------------------------------------------------------


def _parquet_metadata(
    store: ObjectStore, key: str, size: int, footer_bytes: int | None = None
) -> pq.FileMetaData:
    """A parquet object's footer, read with ranged GETs instead of downloading the object: one GET
    of ``footer_bytes`` (known from the plan) or of a guess, and a second one if the guess fell
    short."""
    data = store.get_tail(key, min(size, footer_bytes or _FOOTER_GUESS), size=size)
    if size < 12 or data[-4:] != b"PAR1":
        raise InferenceInputError(f"{store.uri(key)}: not a parquet file (no PAR1 footer)")
    footer_len = struct.unpack("<I", data[-8:-4])[0]
    if footer_len + 8 > len(data):
        data = store.get_tail(key, footer_len + 8, size=size)
    return pq.read_metadata(pa.BufferReader(b"PAR1" + data[-footer_len - 8 :]))


def split_row_groups(group_rows: list[int], limit: int) -> list[tuple[list[int], int, int]]:
    """Cut a parquet file with row groups of ``group_rows`` rows into units of at most ``limit``
    rows: ``(row_groups, row_offset, rows)``. Whole row groups are packed greedily; a row group
    bigger than ``limit`` becomes several row ranges of its own."""
    units: list[tuple[list[int], int, int]] = []
    groups: list[int] = []
    rows = 0
    for index, n in enumerate(group_rows):
        if groups and (rows + n > limit or n > limit):
            units.append((groups, 0, rows))
            groups, rows = [], 0
        if n > limit:
            units += [([index], start, min(limit, n - start)) for start in range(0, n, limit)]
        elif n:
            groups.append(index)
            rows += n
    if groups:
        units.append((groups, 0, rows))
    return units


def _unit(
    day: dt.date, index: int, part: dict[str, Any], groups: list[int], offset: int, rows: int
) -> dict[str, Any]:
    """A work unit of ``rows`` rows from ``offset`` in the row groups ``groups`` of a curated part;
    its footer size and first block unknown (see :func:`plan_parts`)."""
    return {
        "day": day.isoformat(),
        "part_index": index,
        "source_key": part["key"],
        "source_bytes": part["bytes"],
        "row_groups": groups,
        "row_offset": offset,
        "rows": rows,
        "footer_bytes": None,
        "first_block": None,
    }


def plan_parts(store: ObjectStore, cfg: PipelineConfig, day: dt.date) -> list[dict[str, Any]]:
    """Work units over the day's published curated parts (see :func:`split_row_groups`), one per
    mapped task, read from parquet footers only. An unpublished day plans nothing. A day curated
    with no rows (``validation.min_rows: 0``) plans one unit of no rows over its empty part: scored
    and published as any other, its empty predictions replace those of the day's earlier rows."""
    manifest = store.read_manifest(partition_prefix(cfg.prefix, "curated", day))
    parts = manifest["parts"] if manifest else []
    # The curated content the plan was made from: publishing refuses results of other content.
    curated = content_id(manifest)
    units: list[dict[str, Any]] = []
    if parts and not any(part["rows"] for part in parts):
        return [{**_unit(day, 0, parts[0], [], 0, 0), "units": 1, "curated": curated}]
    for part in parts:
        if part["rows"] == 0:
            continue
        meta = _parquet_metadata(store, part["key"], part["bytes"])
        if meta.num_rows != part["rows"]:
            raise InferenceInputError(
                f"{store.uri(part['key'])}: the curated manifest says {part['rows']} rows but the "
                f"parquet footer says {meta.num_rows}; the partition is corrupt, re-run ingestion"
            )
        group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        present = set(meta.schema.to_arrow_schema().names)
        columns = [c for c in _scored_columns(cfg) if c in present]  # a missing one fails in scoring
        chunk_indices = _chunk_indices(meta, columns)
        for groups, offset, rows in split_row_groups(group_rows, cfg.inference.part_rows):
            units.append(
                _unit(day, len(units), part, groups, offset, rows)
                | {
                    "footer_bytes": meta.serialized_size + 8,  # + length and magic
                    "first_block": _block([_row_group_span(meta, g, chunk_indices) for g in groups])
                    if columns
                    else None,
                }
            )
    # Each unit knows how many there are, and so does its result: publishing checks that none is
    # missing before it makes the day visible.
    return [{**unit, "units": len(units), "curated": curated} for unit in units]


# -- score ------------------------------------------------------------------------------------------


def _check_schema(schema: pa.Schema, cfg: PipelineConfig, where: str) -> None:
    missing = [c for c in _scored_columns(cfg) if c not in schema.names]
    if missing:
        raise InferenceInputError(
            f"{where}: column(s) {missing} needed for scoring (data.key + features) are missing; the part "
            f"has {schema.names}. The curated data does not match the pipeline config '{cfg.name}'."
        )
    numeric_ok = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal)
    # Every column type a config may list as categorical (any but timestamp): training, the gate and
    # features.onnx_inputs render them all as the same category strings ("True", "5").
    categorical_ok = (
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_dictionary,
        pa.types.is_integer,
        pa.types.is_boolean,
        pa.types.is_floating,
    )
    for columns, allowed, kind in (
        (cfg.features.numeric, numeric_ok, "numeric (int/float)"),
        (cfg.features.categorical, categorical_ok, "categorical (string/category/int/bool/float)"),
    ):
        for col in columns:
            col_type = schema.field(col).type
            if not (pa.types.is_null(col_type) or any(ok(col_type) for ok in allowed)):
                raise InferenceInputError(
                    f"{where}: feature column '{col}' must be {kind} but has type {col_type}; the curated "
                    f"data does not match the pipeline config '{cfg.name}'."
                )


def _chunk_indices(metadata: pq.FileMetaData, columns: list[str]) -> list[int]:
    """The column chunks of ``columns`` in each row group, counted off the schema's fields in order
    (a field has one chunk per leaf): not matched by the name before a path's first dot, as a name
    may hold dots ("a.b" is one column, not a field of "a")."""
    indices, first = [], 0
    for field in metadata.schema.to_arrow_schema():
        leaves = _leaf_count(field.type)
        if field.name in columns:
            indices += range(first, first + leaves)
        first += leaves
    return indices


def _leaf_count(kind: pa.DataType) -> int:
    """Parquet column chunks of an arrow type: one per leaf of its nesting."""
    if pa.types.is_struct(kind):
        return sum(_leaf_count(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _leaf_count(kind.key_type) + _leaf_count(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_count(kind.value_type)
    return 1


def _row_group_span(metadata: pq.FileMetaData, group: int, chunk_indices: list[int]) -> tuple[int, int]:
    """(first byte, end byte) of the row group's chunks ``chunk_indices`` (see :func:`_chunk_indices`)."""
    row_group = metadata.row_group(group)
    chunks = [row_group.column(i) for i in chunk_indices]
    starts = [
        c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset else c.data_page_offset
        for c in chunks
    ]
    return min(starts), max(s + c.total_compressed_size for s, c in zip(starts, chunks, strict=True))


def _scored_columns(cfg: PipelineConfig) -> list[str]:
    """The curated columns scoring reads: the keys the output carries, then the features."""
    return list(dict.fromkeys([*cfg.data.key, *cfg.features.all]))


def _block(spans: list[tuple[int, int]]) -> list[int]:
    """``[start, length]`` of the one GET that fetches the first row group of ``spans`` and as many
    of the following ones as fit in ``HOLD_BYTES`` (a list: units travel as JSON, by XCom)."""
    first = spans[0][0]
    end = max([end for _, end in spans if end - first <= HOLD_BYTES], default=spans[0][1])
    return [first, end - first]


def _unit_batches(
    parquet: pq.ParquetFile,
    source: RangedObject,
    unit: dict[str, Any],
    job_rows: int,
    columns: list[str],
    read_ahead: ThreadPoolExecutor,
) -> Iterator[pa.RecordBatch]:
    """The unit's rows (row groups, then the ``row_offset``/``rows`` window) in record batches of
    ``job_rows``: slices of batches decoded ``DECODE_ROWS`` at a time on this thread (decoding 8k
    rows at a time took 1.5x the CPU, and arrow's decoding threads another 1.3x on top, while the
    scorers want every core).

    Consecutive row groups are fetched together, one ranged GET per ``HOLD_BYTES`` (a GET costs tens
    of milliseconds whatever its size), and held only while they are decoded. While one block is
    decoded, the next one is fetched by ``read_ahead``: at most two blocks are in memory, and the
    GETs do not stall decoding. A block the source already holds (fetched while the footer was
    read) is used as it is."""
    start, stop = unit["row_offset"], unit["row_offset"] + unit["rows"]
    position = 0
    chunk_indices = _chunk_indices(parquet.metadata, columns)
    spans = [_row_group_span(parquet.metadata, g, chunk_indices) for g in unit["row_groups"]]
    ahead: tuple[list[int], Future] | None = None  # the next block and its GET
    for index, group in enumerate(unit["row_groups"]):
        if not source.holds(*spans[index]):
            block = _block(spans[index:])
            if ahead is not None and ahead[0] == block:
                source.hold_data(block[0], ahead[1].result())
            else:
                source.hold(*block)
            ahead = None
        if ahead is None:
            following = next((i for i in range(index + 1, len(spans)) if not source.holds(*spans[i])), None)
            if following is not None:
                block = _block(spans[following:])
                ahead = (block, read_ahead.submit(source.fetch, *block))
        decoded = parquet.iter_batches(
            batch_size=max(job_rows, DECODE_ROWS), row_groups=[group], columns=columns, use_threads=False
        )
        for batch in decoded:
            lo, hi = max(start - position, 0), min(stop - position, batch.num_rows)
            position += batch.num_rows
            for offset in range(lo, hi, job_rows):
                yield batch.slice(offset, min(job_rows, hi - offset))
            if position >= stop:
                return


def score_part(
    store: ObjectStore,
    cfg: PipelineConfig,
    unit: dict[str, Any],
    *,
    model_path: str,
    model_name: str,
    model_version: str,
    run_id: str,
    output_area: str = "predictions",
) -> dict[str, Any]:
    """Score one planned unit and upload its predictions as an unpublished part.

    Returns ``{"part": <manifest entry>, "part_index", "rows", "model_version", "run_id",
    "seconds": {"read", "preprocess", "score", "write"}}``; the seconds are busy times of each step
    (preprocess and score summed over the scoring threads), and they overlap.
    """
    day = dt.date.fromisoformat(unit["day"])
    output = partition_prefix(cfg.prefix, output_area, day)
    threads = scoring_threads(cfg)
    key = unit["source_key"]
    where = store.uri(key)
    keys = list(cfg.data.key)
    seconds = dict.fromkeys(("read", "preprocess", "score", "write"), 0.0)
    rows = 0
    with (
        _scoring_process(),
        tempfile.TemporaryDirectory(prefix="mlops-inference-") as tmp,
        _planned_source(where, key),
    ):
        local = Path(tmp) / "predictions.parquet"
        clock = time.perf_counter()
        # Ranged reads of the unit's row groups and columns only: a part cut into several units
        # is not downloaded once per unit.
        with store.open_ranged(key, unit["source_bytes"]) as source, ThreadPoolExecutor(2) as fetcher:
            # The plan says where the unit's first rows are: fetch them and the footer at once (one
            # ranged GET each; pyarrow reading the footer through the file takes two or three).
            early_block = (
                fetcher.submit(source.fetch, *unit["first_block"]) if unit.get("first_block") else None
            )
            footer = fetcher.submit(
                _parquet_metadata, store, key, unit["source_bytes"], unit.get("footer_bytes")
            )
            # Meanwhile the model loads. Several single-threaded calls at once: each batch runs start
            # to end on one core, with no hand-offs between onnxruntime's pool threads at every
            # operator (a thread another process delays stalls the whole call) and with the
            # operators onnxruntime runs on one thread anyway (imputer, encoders, gathers, concat)
            # in parallel too: 1.5-1.7x the rows/s of one call on 2 threads (bench_inference.py
            # (a)). The session is thread-safe; outputs keep their order.
            model = _Model.load(
                model_path,
                cfg,
                intra_op_threads=1 if threads > 1 else None,
                label=f"version {model_version} of '{model_name}'",
            )
            metadata = footer.result()
            stored = metadata.schema.to_arrow_schema()
            _check_schema(stored, cfg, where)
            # String categoricals decode straight into dictionaries: each distinct value becomes
            # one Python string in the model inputs, not one per row.
            strings = [c for c in cfg.features.categorical if pa.types.is_string(stored.field(c).type)]
            parquet = pq.ParquetFile(source, metadata=metadata, read_dictionary=strings)
            # Strings as the writer receives them: read as dictionaries (string categoricals) or
            # constant (the model's identity), written as parquet dictionaries without re-hashing
            # every value; readers see plain strings (see _RowGroupWriter).
            output_fields = model.output_fields()
            schema = pa.schema(
                [pa.field(k, _TEXT) if k in strings else stored.field(k) for k in keys]
                + output_fields
                + [
                    pa.field(name, _TEXT, nullable=False)
                    for name in ("model_name", "model_version", "run_id")
                ]
            )
            if early_block is not None:
                source.hold_data(unit["first_block"][0], early_block.result())
            columns = _scored_columns(cfg)
            batches = _unit_batches(
                parquet, source, unit, _job_rows(cfg.inference.batch_rows), columns, fetcher
            )
            identity = (model_name, model_version, run_id)
            # Typed: pyarrow converts a float32 array of unknown type about 700x slower (1.7 ms per
            # 32Ki rows, holding the GIL the scoring threads want; 50 ms per 1M rows).
            output_types = [f.type for f in output_fields]
            constants: dict[int, list[pa.Array]] = {}  # by job length: every job but the last is full
            with _RowGroupWriter(local, schema) as writer:
                seconds["read"] += time.perf_counter() - clock
                decoded = _prefetched(_timed(batches, seconds, "read"), PREFETCH_BATCHES)
                score_rows = functools.partial(_score_rows, model, cfg, where)
                for batch, outputs in _scored(score_rows, decoded, threads, seconds):
                    clock = time.perf_counter()
                    n = batch.num_rows
                    if n not in constants:
                        zeros = pa.array(np.zeros(n, np.int32))
                        constants[n] = [pa.DictionaryArray.from_arrays(zeros, [str(v)]) for v in identity]
                    writer.write(
                        [batch.column(k) for k in keys]
                        + [pa.array(o, type=t) for o, t in zip(outputs, output_types, strict=True)]
                        + constants[n],
                        n,
                    )
                    rows += n
                    seconds["write"] += time.perf_counter() - clock
        if rows != unit["rows"]:
            raise InferenceInputError(
                f"{where}: the plan expected {unit['rows']} rows, the part gave {rows}: the object changed "
                "after planning. Re-run the whole inference run."
            )
        clock = time.perf_counter()
        name = PART_NAME.format(index=unit["part_index"])
        part = write_part(store, output, name, local, rows, sha256=writer.sha256)
        seconds["write"] += time.perf_counter() - clock
    return {
        "part": part,
        "part_index": unit["part_index"],
        "units": unit.get("units"),
        "curated": unit.get("curated"),
        "rows": rows,
        "model_version": str(model_version),
        "run_id": run_id,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }


@contextmanager
def _planned_source(where: str, key: str) -> Iterator[None]:
    """The planned curated part gone is not an outage to retry: the day was validated again (parts
    are named by their content) and the plan is stale."""
    try:
        yield
    except ObjectNotFoundError as exc:
        if exc.key != key:
            raise
        raise InferenceInputError(
            f"{where}: the curated part this unit was planned on is gone: the day was published again "
            "after planning. Re-run the whole inference run, which plans the new parts."
        ) from None


@functools.cache
def _scoring_memory_pool() -> pa.MemoryPool:
    """jemalloc where pyarrow has it, else the system allocator (see :func:`_scoring_process`)."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.system_memory_pool()


@contextmanager
def _scoring_process() -> Iterator[None]:
    """Two process-wide settings for the time a unit scores, both restored afterwards (the numbers
    are CPU per 1M rows, bench_inference.py (b); a task process scores one unit at a time):

    - Python's cyclic garbage collector leaves the objects that exist before scoring alone
      (``gc.freeze``). A task process holds hundreds of thousands of long-lived objects (Airflow,
      boto3, pandas, pyarrow, onnxruntime) that every full collection walks, and the small objects
      each batch creates trigger collections throughout a unit (63 ms of a measured run's CPU,
      35 ms with the freeze). Objects created while scoring are collected as usual; a freeze the
      caller made stays.
    - Arrow allocates from jemalloc (or the system allocator) instead of its default mimalloc, which
      hands freed pages back to the OS after 10 ms: every batch decoded into the same sizes then
      faults its pages in again and the kernel zeroes them (50 ms). jemalloc reuses them for a second.
    """
    frozen_before = gc.get_freeze_count() > 0
    pool_before = pa.default_memory_pool()
    gc.freeze()
    pa.set_memory_pool(_scoring_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(pool_before)
        if not frozen_before:
            gc.unfreeze()


class _RowGroupWriter:
    """A parquet writer that gathers scored batches into row groups of ``ROW_GROUP_ROWS`` (one row
    group per scoring batch would make small, slow-to-write and slow-to-read files) and casts,
    encodes and compresses each row group in a background thread while the next batches score.

    At most one row group is in flight, and row groups are written in order: the file is the same
    bytes as a sequential write. What encoding costs, measured per 1M rows of the example's
    predictions (bench_inference.py (b)), and what is done instead:

    - Floating-point columns are not dictionary-encoded: scores rarely repeat, and trying costs
      parquet a hash table per page before it falls back (a quarter of the encode time, and larger
      files).
    - String columns arrive as arrow dictionaries (``_TEXT``: categoricals as read, the model's
      identity as one value) and are written as parquet dictionaries directly; plain strings would
      be hashed again value by value (55 ms of 200). The file does not store the arrow schema, so
      readers see them as the plain strings they are; the other types are parquet's own.
    - No min/max statistics on string columns (25 ms): they prune no row group of mixed values.
    - Integer columns (keys, labels) are delta-encoded instead of dictionary-encoded: no hash per
      value, and runs of equal or increasing numbers (year, day, flight numbers in order) pack to a
      few bits (prediction + two integer keys: 50 -> 26 ms).
    - Columns the model and the run fill (``nullable=False`` in the schema) are written without
      definition levels (11 ms).
    - Snappy, not zstd (``PARQUET_COMPRESSION``): pyarrow builds a zstd context per page (30 ms).

    The file's sha256 (:attr:`sha256`, for its manifest entry) is computed in the same thread as
    each row group lands, not after the last one, when nothing else would run beside it.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._schema = schema
        self._path = path
        self._digest = hashlib.sha256()
        self._hashed = 0  # bytes of the file in the digest so far (the writer only appends)
        self.sha256: str | None = None  # set when the file is complete
        integers = [f.name for f in schema if pa.types.is_integer(f.type)]
        dictionary = [f.name for f in schema if f.name not in integers and not pa.types.is_floating(f.type)]
        statistics = [f.name for f in schema if f.type != _TEXT and not pa.types.is_string(f.type)]
        self._writer = pq.ParquetWriter(
            path,
            schema,
            compression=PARQUET_COMPRESSION,
            use_dictionary=dictionary,
            column_encoding=dict.fromkeys(integers, "DELTA_BINARY_PACKED"),
            write_statistics=statistics,
            store_schema=False,
        )
        self._pending: list[list[pa.Array]] = []
        self._rows = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference-writer")
        self._in_flight: Future | None = None

    def write(self, columns: list[pa.Array], rows: int) -> None:
        """Append one batch: arrays in schema order, of types the schema's can be cast from."""
        self._pending.append(columns)
        self._rows += rows
        if self._rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._wait()
            pending, rows = self._pending, self._rows
            self._in_flight = self._thread.submit(self._write_row_group, pending, rows)
        self._pending, self._rows = [], 0

    def _write_row_group(self, pending: list[list[pa.Array]], rows: int) -> None:
        names = self._schema.names
        table = pa.Table.from_batches([pa.record_batch(columns, names=names) for columns in pending])
        # one dictionary per column in a row group: parquet allows one per column chunk, and a
        # change of dictionary between batches would make the writer hash the values after all
        table = table.cast(self._schema).unify_dictionaries()
        self._writer.write_table(table, row_group_size=rows)
        self._hash_written()

    def _hash_written(self) -> None:
        """Add the bytes the writer appended since the last call to the digest."""
        with open(self._path, "rb") as written:
            written.seek(self._hashed)
            while chunk := written.read(1 << 20):
                self._digest.update(chunk)
                self._hashed += len(chunk)

    def _wait(self) -> None:
        """Wait for the row group in flight; its error, if any, is raised here."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()

    def __enter__(self) -> _RowGroupWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._flush()
                self._wait()
        finally:
            self._thread.shutdown(wait=True)  # never close the file under a write in flight
            self._writer.close()
        if exc_type is None:
            self._hash_written()  # the footer
            self.sha256 = self._digest.hexdigest()


def _job_rows(batch_rows: int) -> int:
    """Rows of one scoring thread's job: as many whole batches as fit in ``JOB_ROWS`` (8 of the
    default 4,096), at least one. Jobs, not the batches in them, are what decoding slices and hands
    to the threads, so the decoded rows in memory do not grow with more batches per job."""
    return max(batch_rows, JOB_ROWS // batch_rows * batch_rows)


def _score_rows(
    model: _Model, cfg: PipelineConfig, where: str, rows: pa.RecordBatch
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Model outputs of ``rows`` (a scoring thread's job, see :func:`_job_rows`) and the
    seconds spent preprocessing and scoring. The job's inputs are built in one go, then scored
    ``batch_rows`` at a time, on this thread: a job, not each batch, pays the Python of building
    inputs and deriving labels, which is also where the threads wait for each other's GIL. Against
    building each batch's inputs in turn, on an AVX2 host: 1.15x the rows/s at batch 8,192 and
    1.4x at 4,096 (bench_inference.py (a)), 1.07x and 1.25x end to end ((b), paired runs)."""
    clock = time.perf_counter()
    try:
        inputs = F.onnx_inputs(rows, cfg.features, where)
    except F.FeatureError as exc:
        raise InferenceInputError(str(exc)) from None
    scoring = time.perf_counter()
    outputs = model.predict(inputs, cfg.inference.batch_rows)
    return outputs, {"preprocess": scoring - clock, "score": time.perf_counter() - scoring}


def scoring_threads(cfg: PipelineConfig) -> int:
    """How many batches :func:`score_part` scores at once: ``inference.scoring_threads``, or one per
    CPU core this process may run on."""
    return cfg.inference.scoring_threads or len(os.sched_getaffinity(0))


def _scored(
    score: Callable[[pa.RecordBatch], tuple[list[np.ndarray], dict[str, float]]],
    batches: Iterator[pa.RecordBatch],
    threads: int,
    seconds: dict[str, float],
) -> Iterator[tuple[pa.RecordBatch, list[np.ndarray]]]:
    """Each batch with its model outputs (``score(batch)``, which also returns the seconds it spent
    by step), in input order, ``threads`` batches scoring at a time (one more queued, so no core
    idles while the caller writes); the steps' seconds add to ``seconds``. An error in any call is
    raised here and cancels the queued ones."""

    def done(batch: pa.RecordBatch, scored: tuple[list[np.ndarray], dict[str, float]]) -> tuple:
        for step, spent in scored[1].items():  # here, in the caller's thread: `+=` is not atomic
            seconds[step] = seconds.get(step, 0.0) + spent
        return batch, scored[0]

    if threads == 1:
        for batch in batches:
            yield done(batch, score(batch))
        return
    in_flight: deque[tuple[pa.RecordBatch, Future]] = deque()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="inference-score")
    try:
        for batch in batches:
            in_flight.append((batch, pool.submit(score, batch)))
            if len(in_flight) > threads:
                batch, scored = in_flight.popleft()
                yield done(batch, scored.result())
        while in_flight:
            batch, scored = in_flight.popleft()
            yield done(batch, scored.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prefetched(items: Iterator[_Item], depth: int) -> Iterator[_Item]:
    """``items`` produced by a background thread up to ``depth`` ahead, so that fetching and decoding
    the next batches overlaps with scoring this one (pyarrow and onnxruntime both release the GIL).
    An error in the producer is raised here; leaving the loop early stops the producer."""
    pending: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def offer(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                pending.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((False, item)):
                    return
            offer((True, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            offer((True, exc))

    producer = threading.Thread(target=produce, name="inference-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            finished, value = pending.get()
            if finished:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        producer.join()


def _timed(
    batches: Iterator[pa.RecordBatch], seconds: dict[str, float], name: str
) -> Iterator[pa.RecordBatch]:
    """Yield from ``batches``, adding the time spent producing each item to ``seconds[name]``."""
    while True:
        clock = time.perf_counter()
        batch = next(batches, None)
        seconds[name] += time.perf_counter() - clock
        if batch is None:
            return
        yield batch


# -- publish and read -------------------------------------------------------------------------------


def publish_predictions(
    store: ObjectStore,
    cfg: PipelineConfig,
    day: dt.date,
    part_results: list[dict[str, Any]],
    *,
    model_name: str,
    model_version: str,
    run_id: str,
    output_area: str = "predictions",
    aliased_version: Callable[[], str | None] | None = None,
) -> dict[str, Any]:
    """Make the day's predictions visible in one manifest PUT (see :func:`storage.publish_manifest`).

    Refuses results of another model version or run, two results for one unit, and a set of results
    that misses a planned unit, so a day never mixes models, counts rows twice or goes up partial
    over a complete one. Returns ``{"uri", "rows", "parts", "model_version"}``.

    ``aliased_version`` returns the version the model's alias (champion, or challenger for the
    shadow) names now. Given, it is asked when the day is published by another version, and the
    publish is refused when that version is the alias's and this one is not: a run that resolved its
    model before a rollback or promotion, and publishes late (a retry, a slow run), must not replace
    the predictions a newer run made with the current model.
    """
    partition = partition_prefix(cfg.prefix, output_area, day)
    indexes = [r["part_index"] for r in part_results]
    duplicated = sorted({i for i in indexes if indexes.count(i) > 1})
    if duplicated:
        raise PredictionsError(f"{store.uri(partition)}: several results for unit(s) {duplicated}")
    for result in part_results:
        if (result["model_version"], result["run_id"]) != (str(model_version), run_id):
            raise PredictionsError(
                f"{store.uri(result['part']['key'])} was scored by model version {result['model_version']} "
                f"in run {result['run_id']!r}, not version {model_version} in run {run_id!r}"
            )
        if not result["part"]["key"].startswith(partition):
            raise PredictionsError(f"{store.uri(result['part']['key'])} is not in {store.uri(partition)}")
    # Results of an older release carry no unit count: nothing to check them against.
    planned = {r["units"] for r in part_results if r.get("units") is not None}
    if len(planned) > 1:
        raise PredictionsError(
            f"{store.uri(partition)}: the results come from different plans ({sorted(planned)} units); "
            "re-run the whole inference run"
        )
    total = planned.pop() if planned else 0
    missing = sorted(set(range(total)) - set(indexes))
    if missing:
        raise PredictionsError(
            f"{store.uri(partition)}: unit(s) {missing[:10]} of the {total} "
            "planned have no result, so publishing would make a partial day visible; the published "
            "day is left as it is. Re-run the inference run (its failed or skipped score tasks)."
        )
    curated = _scored_content(store, cfg, day, part_results, partition)

    def may_replace(published: dict[str, Any]) -> None:
        theirs = published.get("model_version")
        if aliased_version is None or theirs is None or str(theirs) == str(model_version):
            return
        if aliased_version() == str(theirs):
            raise PredictionsError(
                f"{store.uri(partition)}: not published. The day's predictions there are model version "
                f"{theirs}'s (run {published.get('run_id')!r}), the version the registry's alias names now; "
                f"this run scored with version {model_version}, which it resolved when it started and "
                "which the alias has left since (a promotion or a rollback). The day keeps the current "
                "model's predictions. To score it with the model of this run's start anyway, move the "
                "alias back first; otherwise nothing is to be done."
            )

    manifest = publish_manifest(
        store,
        partition,
        [r["part"] for r in part_results],
        may_replace=may_replace,
        day=day.isoformat(),
        model_name=model_name,
        model_version=str(model_version),
        run_id=run_id,
        **({"curated": curated} if curated else {}),
    )
    return {
        "uri": store.uri(partition),
        "rows": manifest["rows"],
        "parts": len(manifest["parts"]),
        "model_version": str(model_version),
    }


def _scored_content(
    store: ObjectStore, cfg: PipelineConfig, day: dt.date, part_results: list[dict[str, Any]], partition: str
) -> str | None:
    """The id of the curated content the results scored (:func:`storage.content_id`), checked to be
    the day's curated content now. The day curated again since planning (a late file, a replaced
    rejected one) means these predictions are of rows that are no longer the day's: published late
    (a retry, a slow run) they would replace the predictions of a run that scored the new rows, and
    the new rows would go unscored. None for results of an older release, which carry no id."""
    scored = {r.get("curated") for r in part_results} - {None}
    if len(scored) > 1:
        raise PredictionsError(
            f"{store.uri(partition)}: the results come from plans of different curated data; re-run the "
            "whole inference run"
        )
    if not scored:
        return None
    planned = scored.pop()
    curated = partition_prefix(cfg.prefix, "curated", day)
    if content_id(store.read_manifest(curated)) != planned:
        raise PredictionsError(
            f"{store.uri(partition)}: not published. The day's curated data at {store.uri(curated)} "
            "changed after this run planned its scoring (the day was validated again: a late or "
            "replaced landing file), so these predictions are of rows that are no longer the day's. "
            "The published day is left as it is; re-run the inference run to score the new rows."
        )
    return planned


def read_predictions(
    store: ObjectStore,
    cfg: PipelineConfig,
    day: dt.date,
    area: str = "predictions",
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """The published predictions of ``day`` (only the parts its manifest lists, checksums verified);
    FileNotFoundError when the day is not published."""
    frame, _ = _read_published(store, partition_prefix(cfg.prefix, area, day), columns)
    return frame


def _read_published(
    store: ObjectStore,
    partition: str,
    columns: list[str] | None,
    keep: Callable[[pa.Table], pa.Table] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    table, manifest = read_published(store, partition, columns, keep)
    if manifest is None:
        raise FileNotFoundError(f"{store.uri(partition)}: nothing is published there (no manifest)")
    return (table.to_pandas() if table is not None else pd.DataFrame(columns=columns)), manifest


def _key_sample(keys: list[str], fraction: float) -> Callable[[pa.Table], pa.Table]:
    """A filter keeping the rows whose key hashes into the first ``fraction`` of the hash range:
    the same keys on every side (predictions copy the curated key columns, so their types match),
    and the same sample on every run. Hashed ``DECODE_ROWS`` rows at a time."""
    limit = np.uint64(min(int(fraction * 2**64), 2**64 - 1))

    def keep(table: pa.Table) -> pa.Table:
        masks = [
            pd.util.hash_pandas_object(batch.select(keys).to_pandas(), index=False).to_numpy() <= limit
            for batch in table.to_batches(DECODE_ROWS)
        ]
        return table.filter(pa.array(np.concatenate(masks) if masks else np.zeros(0, bool)))

    return keep


# -- shadow -----------------------------------------------------------------------------------------


def _float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _same(a: pd.Series, b: pd.Series) -> pd.Series:
    """Equality of class labels that may be stored as 1, 1.0 or "1" on either side; a row missing
    a prediction on either side agrees with nothing."""
    na, nb = pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")
    numbers = bool((na.notna() == a.notna()).all() and (nb.notna() == b.notna()).all())
    same = na == nb if numbers else a.astype(str) == b.astype(str)
    return same & a.notna() & b.notna()


def _join_on_keys(
    left: pd.DataFrame, right: pd.DataFrame, keys: list[str], validate: str, where: str
) -> pd.DataFrame:
    """``left`` joined with ``right`` on ``keys``, each key at most once a side: a repeated key would
    pair every row with every other and count them all."""
    try:
        return left.merge(right, on=keys, suffixes=("_champion", "_challenger"), validate=validate)
    except pd.errors.MergeError:
        repeated = pd.concat([side.loc[side.duplicated(keys, keep=False), keys] for side in (left, right)])
        sample = repeated.drop_duplicates().head(3).to_dict("records")
        raise PredictionsError(
            f"{where}: the shadow comparison joins on data.key {keys}, but keys repeat within a day "
            f"(e.g. {sample}); data.key must identify one row"
        ) from None


# The derived label beside the keys in the shadow comparison: not a name data.key may use ("label"
# may be a key column, which the label would replace before the join).
_LABEL = "__label__"


def _metrics(task: str, label: pd.Series, prediction: pd.Series, score: pd.Series) -> dict[str, float | None]:
    from sklearn import metrics

    if not len(score):
        return {}
    if task == "regression":
        return {
            "rmse": float(np.sqrt(metrics.mean_squared_error(label, score))),
            "mae": float(metrics.mean_absolute_error(label, score)),
        }
    out: dict[str, float | None] = {"accuracy": float(_same(prediction, label).mean())}
    if task == "binary":
        y = _same(label, pd.Series(_positive_class(label, prediction, score), index=label.index))
        p = score.astype(float).to_numpy()
        out["roc_auc"] = float(metrics.roc_auc_score(y, p)) if y.nunique() == 2 else None
        out["log_loss"] = float(metrics.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[False, True]))
    return out


def _positive_class(label: pd.Series, prediction: pd.Series, score: pd.Series) -> Any:
    """The class a binary model's score is the probability of: 1 for labels of positive_when rules,
    else one of two class names. It is the prediction where the score reaches the threshold; where
    no row does, the label that differs from the (negative) prediction."""
    above = prediction[score >= BINARY_THRESHOLD]
    if len(above):
        return above.iloc[0]
    other = label[~_same(label, pd.Series(prediction.iloc[0], index=label.index))]
    return other.iloc[0] if len(other) else 1


def shadow_report(
    store: ObjectStore,
    cfg: PipelineConfig,
    day: dt.date,
    *,
    champion: dict[str, Any],
    challenger: dict[str, Any],
) -> dict[str, Any]:
    """Compare the challenger's shadow predictions with the champion's for one day; write JSON.

    ``champion``/``challenger`` describe the models (model_name, model_version, run id...); where
    they name a model the manifests disagree with, the report refuses to compare the wrong outputs.
    Metrics use the labels derived from the day's curated rows, where present.
    """
    keys = list(cfg.data.key)
    if not keys:
        raise PredictionsError(f"pipeline '{cfg.name}': shadow comparison joins on data.key, which is empty")
    areas = {"champion": ("predictions", champion), "challenger": ("predictions_shadow", challenger)}
    manifests = {}
    for role, (area, described) in areas.items():
        manifest = store.read_manifest(partition_prefix(cfg.prefix, area, day))
        if manifest is None:
            raise FileNotFoundError(
                f"{store.uri(partition_prefix(cfg.prefix, area, day))}: nothing is published there (no manifest)"
            )
        for field in ("model_name", "model_version"):
            if field in described and str(described[field]) != str(manifest.get(field)):
                raise PredictionsError(
                    f"{store.uri(manifest['partition'])}: published by {field} {manifest.get(field)!r}, "
                    f"but the {role} is {described[field]!r}"
                )
        manifests[role] = manifest
    published = {role: int(manifest["rows"]) for role, manifest in manifests.items()}
    # A big day is compared on a sample of its keys, read part by part: memory bounded by the sample.
    fraction = min(1.0, cfg.inference.shadow_sample_rows / max(*published.values(), 1))
    keep = _key_sample(keys, fraction) if fraction < 1 else None
    sides = {
        role: _read_published(
            store, partition_prefix(cfg.prefix, area, day), [*keys, "prediction", "score"], keep
        )[0]
        for role, (area, _) in areas.items()
    }
    # A row without a whole key pairs with no row: pandas would join null keys to each other.
    unkeyed = {role: int(frame[keys].isna().any(axis=1).sum()) for role, frame in sides.items()}
    sides = {role: frame.dropna(subset=keys) for role, frame in sides.items()}
    both = _join_on_keys(
        sides["champion"],
        sides["challenger"],
        keys,
        "one_to_one",
        store.uri(partition_prefix(cfg.prefix, "predictions", day)),
    )
    curated = partition_prefix(cfg.prefix, "curated", day)
    truth, _ = _read_published(store, curated, list(dict.fromkeys([*keys, cfg.target.column])), keep)
    truth[_LABEL] = F.derive_label(truth, cfg.target)
    truth = truth.dropna(subset=keys)
    labelled = _join_on_keys(both, truth[[*keys, _LABEL]], keys, "one_to_one", store.uri(curated)).dropna(
        subset=[_LABEL]
    )
    task = cfg.target.task
    champ_s, chall_s = both["score_champion"].astype(float), both["score_challenger"].astype(float)
    # Both models on the same rows: those each gave a finite score. A model that fails on the hard
    # rows must not look better for leaving them out of its own metrics.
    measured = labelled[
        np.isfinite(labelled["score_champion"].astype(float))
        & np.isfinite(labelled["score_challenger"].astype(float))
    ]
    metrics = {
        role: _metrics(task, measured[_LABEL], measured[f"prediction_{role}"], measured[f"score_{role}"])
        for role in ("champion", "challenger")
    }
    metrics["delta"] = {
        name: metrics["challenger"][name] - value
        for name, value in metrics["champion"].items()
        if value is not None and metrics["challenger"].get(name) is not None
    }
    report = {
        "day": day.isoformat(),
        "champion": champion,
        "challenger": challenger,
        "rows": {
            "champion": published["champion"],
            "challenger": published["challenger"],
            "compared": len(both),
            "labelled": len(labelled),
            "measured": len(measured),  # labelled rows both models scored: the metrics' rows
            "without_key": unkeyed,
            # the share of keys compared (1: every row); the counts above but the first two are of it
            "sampled_fraction": round(fraction, 6),
        },
        # Classes agree or not; regression predictions are numbers that never quite agree: compare
        # them by score_correlation and mean_abs_score_difference.
        "agreement_rate": _float(_same(both["prediction_champion"], both["prediction_challenger"]).mean())
        if len(both) and task != "regression"
        else None,
        "score_correlation": {
            "pearson": _float(champ_s.corr(chall_s, method="pearson")) if len(both) > 1 else None,
            "spearman": _float(champ_s.corr(chall_s, method="spearman")) if len(both) > 1 else None,
        },
        "mean_abs_score_difference": _float((champ_s - chall_s).abs().mean()) if len(both) else None,
        "metrics": metrics,
    }
    key = partition_prefix(cfg.prefix, "reports/shadow", day) + SHADOW_REPORT_NAME
    report["uri"] = store.put_json(key, report)
    return report
