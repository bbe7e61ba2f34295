"""Metrics and the champion/challenger gate.

The gate scores the held-out evaluation days with onnxruntime, i.e. with the exact artifact batch
inference would serve, for both the challenger (this run's ``model/model.onnx``) and the current
champion (registry alias ``champion``), on the same rows. A challenger is promoted only if its primary
metric clears the absolute floor, beats the champion by ``gate.min_improvement`` (a champion whose
metric is undefined on these rows cannot be shown to be beaten: rejected), and its ONNX file and p95
batch latency fit the budgets. The champion is compared only on rows of days it did not train on (its
data version's record names them): a run for an earlier window than the champion's (a backfill) would
otherwise be judged against a model that saw its evaluation days; with no such rows left, it is
rejected. The decision also records the registry's newest version at gate
time, so the registry knows which versions the gate came after, and the sha256 of the challenger's ONNX
file, which the registry records; a run that is champion already passes only while its file still has
that checksum. A rejection is a normal outcome: it
is reported (JSON + a self-contained HTML page under ``reports/gate/``, both also logged to the MLflow
run under ``gate/vs-v<champion>/``), not raised.
The report keys are fixed per (day, run, champion compared with); its bytes repeat on a rerun except
the measured latencies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, RunTag
from sklearn import metrics as skm

from mlops_tasks import tracking
from mlops_tasks.config import FeatureSpec, PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.features import (
    META_CLASSES,
    META_FEATURES,
    META_TASK,
    PROBABILITIES_OUTPUT,
    SCORE_OUTPUT,
    FeatureError,
    category_strings,
    derive_label,
    is_legacy_session,
    onnx_inputs,
    session_inputs,
    take_rows,
)
from mlops_tasks.storage import ObjectStore, parse_partition_date, partition_prefix
from mlops_tasks.versioning import DataVersionError, read_record

HIGHER_IS_BETTER = {
    "roc_auc": True,
    "pr_auc": True,
    "accuracy": True,
    "f1": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
}
FLOOR_CHECKS = ("metric_defined", "min_value")
# Model version tag (and key of the decision's challenger): sha256 of the ONNX file the gate judged.
ONNX_SHA256_TAG = "onnx_sha256"
LATENCY_REPEATS = 20
DAY_COLUMN = "_day"  # the curated rows' day, by which training splits off the evaluation days
_EPS = 1e-7


class EvaluationDataError(DataError):
    """The gate cannot judge a model (no labelled rows, a champion without its ONNX file)."""


# -- labels and metrics -----------------------------------------------------------------------------


def class_text(values: pd.Series) -> pd.Series:
    """Class labels (or a model's classes) as :func:`~mlops_tasks.features.category_strings` writes
    them, whole numbers as integers ("1", never "1.0"); also for text "1.0", which is how models
    trained before that rule stored the classes of a label column read as floats."""
    return category_strings(values).str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)


def labelled_rows(frame: pd.DataFrame, cfg: PipelineConfig) -> tuple[pd.DataFrame, pd.Series]:
    """Rows with a label; the label as strings (classification, "0"/"1" for a rule) or floats."""
    label = derive_label(frame, cfg.target)
    keep = label.notna().to_numpy()
    label = label[keep]
    if cfg.target.task != "regression":
        label = class_text(label)
    return frame[keep], label


def labels_outside(label: pd.Series, classes: list[Any]) -> tuple[list[str], list[str]]:
    """(labels not among ``classes``, sorted; the classes as text), compared as :func:`class_text`
    (a model's metadata may list its classes as numbers)."""
    known = list(class_text(pd.Series(classes, dtype=object)))
    return sorted(set(class_text(label).dropna()) - set(known)), known


def label_targets(label: pd.Series, task: str, classes: list[Any] | None) -> np.ndarray:
    """Labels as metric inputs: binary 0/1 (positive = last class), multiclass class index, regression
    floats. A multiclass label the model does not know gets an index past the model's classes (one per
    such label, in sorted order), so :func:`compute_metrics` scores its rows too. A binary model is
    neither right nor wrong about a label outside its two classes: callers refuse those rows first
    (:func:`labels_outside`), here they would count as negative. Labels and classes are compared as
    :func:`class_text`."""
    if task == "regression":
        return label.to_numpy(dtype=np.float64)
    assert classes is not None, "classification needs the model's classes"
    known = list(class_text(pd.Series(classes, dtype=object)))
    text = class_text(label)
    if task == "binary":
        return (text == known[-1]).to_numpy(dtype=np.float64, na_value=0.0)
    unknown = sorted(set(text.dropna()) - set(known))
    return pd.Categorical(text, categories=known + unknown).codes.astype(np.int64)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _defined(fn: Any, *args: Any, **kwargs: Any) -> float | None:
    """A metric value, or None where it is undefined on these rows (e.g. AUC of a single class, any
    metric of a NaN prediction)."""
    try:
        return _finite(fn(*args, **kwargs))
    except ValueError:
        return None


def compute_metrics(
    task: str, y_true: np.ndarray, score: np.ndarray, probabilities: np.ndarray | None = None
) -> dict[str, float | None]:
    """Quality metrics of one model on one set of rows (JSON-safe: undefined metrics are None).

    ``y_true`` as produced by :func:`label_targets`; ``score``/``probabilities`` as in the ONNX contract.
    """
    score = np.asarray(score, dtype=np.float64)
    metrics = _metrics(task, np.asarray(y_true), score, probabilities)
    # A model predicting NaN/inf for a row has no defined quality on these rows (accuracy and f1 would
    # count NaN as a class), so the gate's metric_defined check rejects it whatever the primary metric.
    finite = np.isfinite(score).all() and (probabilities is None or np.isfinite(probabilities).all())
    return metrics if finite else dict.fromkeys(metrics)


def _metrics(
    task: str, y_true: np.ndarray, score: np.ndarray, probabilities: np.ndarray | None
) -> dict[str, float | None]:
    if task == "regression":
        error = score - y_true
        return {"rmse": _defined(np.sqrt, np.mean(error**2)), "mae": _defined(np.mean, np.abs(error))}
    if task == "binary":
        y = y_true.astype(np.int64)
        predicted = (score >= 0.5).astype(np.int64)
        both = 0 < int(y.sum()) < len(y)
        return {
            # The rankings on the scores as they are: clipped, a confident model's distinct scores
            # near 0 or 1 would tie and lower its AUC.
            "roc_auc": _defined(skm.roc_auc_score, y, score) if both else None,
            "pr_auc": _defined(skm.average_precision_score, y, score) if both else None,
            "log_loss": _defined(skm.log_loss, y, np.clip(score, _EPS, 1 - _EPS), labels=[0, 1]),
            "accuracy": float(np.mean(predicted == y)),
            # Undefined (None) without a positive row, for every model alike: a perfect model on a
            # window of negatives would otherwise score 0 or 0/0 and a sloppy one 0.0, which beat it.
            # With positive rows, a model predicting none of them scores 0 (it finds none).
            "f1": _defined(skm.f1_score, y, predicted, zero_division=0.0) if y.any() else None,
        }
    if probabilities is None:
        raise ValueError("multiclass metrics need the probabilities output")
    proba = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1)
    proba = proba / proba.sum(axis=1, keepdims=True)
    y = y_true.astype(np.int64)
    if (y < 0).any():
        raise ValueError("multiclass targets must be class indices as label_targets makes them (no -1)")
    # Every row counts, also one whose class the model does not know (index past its classes): it gets
    # probability 0 for that class. Dropping such rows instead would score a challenger lacking a class
    # on other rows than the champion, and reward it for the rows it cannot get right. Refusing the
    # comparison would block every model trained after a class appeared or vanished.
    proba = np.pad(proba, ((0, 0), (0, max(0, int(y.max(initial=-1)) + 1 - proba.shape[1]))))
    predicted = proba.argmax(axis=1)
    onehot = np.eye(proba.shape[1])[y]
    # Averaged over the classes in the rows: the same for every model judged on them.
    present = onehot.any(axis=0)
    true_p = np.clip(proba[np.arange(len(y)), y], _EPS, 1)
    # Rankings need rows of two classes at least, as in the binary case: with one class, each class
    # column is all ones or all zeros, and average precision of an all-ones column is 1.0 for any scores.
    ranked = int(present.sum()) > 1
    return {
        "accuracy": float(np.mean(predicted == y)),
        "f1": float(
            skm.f1_score(y, predicted, labels=np.flatnonzero(present), average="macro", zero_division=0)
        ),
        "log_loss": _defined(np.mean, -np.log(true_p)),
        "roc_auc": _defined(skm.roc_auc_score, onehot[:, present], proba[:, present], average="macro")
        if ranked
        else None,
        "pr_auc": _defined(
            skm.average_precision_score, onehot[:, present], proba[:, present], average="macro"
        )
        if ranked
        else None,
    }


# -- scoring with onnxruntime ------------------------------------------------------------------------


class OnnxModel:
    """An ONNX file of our contract, loaded once, with its metadata (features, task, classes)."""

    def __init__(self, path: Path, cfg: PipelineConfig) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cfg.inference.intra_op_threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[cfg.inference.graph_optimization]
        self.path = path
        self.bytes = path.stat().st_size
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.features = FeatureSpec(**json.loads(meta[META_FEATURES]))
        self.task = meta[META_TASK]
        self.classes = json.loads(meta[META_CLASSES]) if META_CLASSES in meta else None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.legacy = is_legacy_session(self.session)

    def _inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        return onnx_inputs(frame, self.features, source="evaluation rows")

    def _run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, session_inputs(inputs, self.legacy))

    def score(self, frame: pd.DataFrame, batch_rows: int = 65536) -> tuple[np.ndarray, np.ndarray | None]:
        """(score [N], probabilities [N, C] or None) of raw rows, ``batch_rows`` rows per call."""
        inputs = self._inputs(frame)
        scores, probas = [], []
        for start in range(0, max(len(frame), 1), batch_rows):
            batch = take_rows(inputs, slice(start, start + batch_rows))
            result = dict(zip(self.outputs, self._run(batch), strict=True))
            scores.append(result[SCORE_OUTPUT])
            if PROBABILITIES_OUTPUT in result:
                probas.append(result[PROBABILITIES_OUTPUT])
        return np.concatenate(scores), (np.concatenate(probas) if probas else None)

    def p95_batch_latency_ms(self, frame: pd.DataFrame, batch_rows: int) -> float:
        """p95 wall time of one ``batch_rows``-row call (rows of ``frame`` repeated to fill a batch)."""
        batch = take_rows(self._inputs(frame), np.resize(np.arange(len(frame)), batch_rows))
        self._run(batch)  # warm-up: first call allocates
        times = []
        for _ in range(LATENCY_REPEATS):
            started = time.perf_counter()
            self._run(batch)
            times.append((time.perf_counter() - started) * 1000)
        return float(np.percentile(times, 95))

    def assess(self, frame: pd.DataFrame, label: pd.Series, cfg: PipelineConfig) -> dict[str, Any]:
        """Metrics on ``frame``'s rows, how many of them the model gave no finite score, the ONNX
        file's size and the p95 batch latency."""
        metrics, nonfinite = self._scored_metrics(frame, label, cfg)
        return {
            "metrics": metrics,
            "nonfinite_rows": nonfinite,
            "onnx_bytes": self.bytes,
            "p95_batch_latency_ms": round(self.p95_batch_latency_ms(frame, cfg.gate.latency_batch_rows), 3),
            "rows": len(frame),
        }

    def metrics(self, frame: pd.DataFrame, label: pd.Series, cfg: PipelineConfig) -> dict[str, float | None]:
        return self._scored_metrics(frame, label, cfg)[0]

    def _scored_metrics(
        self, frame: pd.DataFrame, label: pd.Series, cfg: PipelineConfig
    ) -> tuple[dict[str, float | None], int]:
        if self.task == "binary":
            unknown, known = labels_outside(label, self.classes or [])
            if unknown:
                rows = int(class_text(label).isin(unknown).sum())
                raise EvaluationDataError(
                    f"column '{cfg.target.column}': {rows} evaluation rows have labels {unknown[:5]} "
                    f"outside the binary model's classes {known}; the model is neither right nor wrong "
                    "about them, so the gate cannot judge it and nothing is registered. Correct those "
                    "labels (validation can restrict the column with `allowed`) or make the task "
                    "multiclass."
                )
        score, proba = self.score(frame)
        finite = np.isfinite(np.asarray(score, dtype=np.float64))
        if proba is not None:
            finite &= np.isfinite(np.asarray(proba, dtype=np.float64)).all(axis=1)
        metrics = compute_metrics(self.task, label_targets(label, self.task, self.classes), score, proba)
        return metrics, int((~finite).sum())


# -- the gate -----------------------------------------------------------------------------------------


def _check(name: str, passed: bool, value: Any, threshold: Any, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def gate_checks(
    cfg: PipelineConfig, challenger: dict[str, Any], champion: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Every configured gate rule as a pass/fail record (pure: unit-testable without models)."""
    gate = cfg.gate
    name = gate.primary_metric
    higher = HIGHER_IS_BETTER[name]
    # NaN/inf would pass every comparison below that is not written to fail on it.
    value = _finite(challenger["metrics"].get(name))
    checks = [
        _check(
            "metric_defined",
            value is not None,
            value,
            None,
            f"{name} is {'defined' if value is not None else 'undefined'} on the evaluation rows",
        )
    ]
    if value is None:
        return checks
    if gate.min_value is not None:
        ok = value >= gate.min_value if higher else value <= gate.min_value
        rel = ">=" if higher else "<="
        checks.append(
            _check(
                "min_value", ok, value, gate.min_value, f"{name} {value:.4f} must be {rel} {gate.min_value}"
            )
        )
    champ_value = _finite(champion["metrics"].get(name)) if champion else None
    if champion is not None and "challenger_metrics" in champion:
        # The champion trained on some evaluation days: both are compared on the other days' rows.
        value = _finite(champion["challenger_metrics"].get(name))
    # Without both values there is no comparison: passing would promote blind.
    no_comparison = broken_champion = None
    if champion is not None and "trained_on_days" in champion and champion["rows"] == 0:
        no_comparison = (
            f"champion v{champion['version']} trained on every evaluation day "
            f"({', '.join(champion['trained_on_days'])}), so its {name} there says nothing about "
            "new data and this model cannot be shown to beat it. This happens when training runs "
            "for an earlier window than the champion's (a backfill); train for a window that ends "
            "after the champion's to replace it"
        )
    elif (
        champion is not None and champ_value is None and value is not None and champion.get("nonfinite_rows")
    ):
        # The champion breaks on some rows (NaN or inf scores), this model scores every one: better,
        # whatever the champion's metric on the rest. Refusing the comparison instead would keep a
        # broken champion serving for good, every retrain rejected.
        broken_champion = (
            f"champion v{champion['version']} gives no finite score for {champion['nonfinite_rows']} "
            f"of the {_compared_rows(champion)}; this model scores every one of them"
        )
    elif champion is not None and (champ_value is None or value is None):
        whose = f"champion v{champion['version']}'s" if champ_value is None else "this model's"
        no_comparison = (
            f"{whose} {name} is undefined on the {_compared_rows(champion)}, so this model cannot "
            "be shown to beat the champion"
        )
    if no_comparison is not None:
        checks.append(_check("beats_champion", False, None, gate.min_improvement, no_comparison))
    elif broken_champion is not None:
        checks.append(_check("beats_champion", True, None, gate.min_improvement, broken_champion))
    elif champion is not None:
        improvement = value - champ_value if higher else champ_value - value
        ok = improvement > 0 and improvement >= gate.min_improvement
        checks.append(
            _check(
                "beats_champion",
                ok,
                round(improvement, 6),
                gate.min_improvement,
                f"{name} {value:.4f} vs champion v{champion['version']} {champ_value:.4f} on the "
                f"{_compared_rows(champion)}: improvement {improvement:+.4f} must be > 0 and >= "
                f"{gate.min_improvement}",
            )
        )
    if gate.max_onnx_bytes is not None:
        size = challenger["onnx_bytes"]
        checks.append(
            _check(
                "max_onnx_bytes",
                size <= gate.max_onnx_bytes,
                size,
                gate.max_onnx_bytes,
                f"ONNX size {size} bytes must be <= {gate.max_onnx_bytes}",
            )
        )
    if gate.max_p95_batch_latency_ms is not None:
        p95 = challenger["p95_batch_latency_ms"]
        checks.append(
            _check(
                "max_p95_batch_latency_ms",
                p95 <= gate.max_p95_batch_latency_ms,
                p95,
                gate.max_p95_batch_latency_ms,
                f"p95 latency of {gate.latency_batch_rows}-row batches {p95:.1f} ms must be <= "
                f"{gate.max_p95_batch_latency_ms} ms",
            )
        )
    return checks


def _compared_rows(champion: dict[str, Any]) -> str:
    if "trained_on_days" not in champion:
        return "evaluation rows"
    days = champion["trained_on_days"]
    return f"{champion['rows']} evaluation rows of days it did not train on (not {', '.join(days[:5])}{' ...' if len(days) > 5 else ''})"


def _reason(checks: list[dict[str, Any]], champion: dict[str, Any] | None) -> str:
    failed = [c["detail"] for c in checks if not c["passed"]]
    if failed:
        return "rejected: " + "; ".join(failed)
    if champion is None:
        return "promoted: no champion yet and every absolute gate passes"
    return f"promoted: beats champion v{champion['version']} and every gate passes"


def _champion(
    cfg: PipelineConfig, tracking_uri: str, run_id: str, tmp: Path
) -> tuple[Any | None, OnnxModel | None, str | None]:
    """(champion version, its loaded model unless it is this run, the registry's newest version)."""
    client = tracking.client(tracking_uri)
    name = cfg.registered_model_name
    with tracking.reachable(tracking_uri, f"read the champion of '{name}'"):
        version = tracking.alias_version(client, name, "champion")
        # Recorded so the registry knows which versions this gate ran after (see registry's challenger).
        newest = client.search_model_versions(
            f"name={tracking.quoted(name)}", max_results=1, order_by=["version_number DESC"]
        )
    newest_version = newest[0].version if newest else None
    if version is None or version.run_id == run_id:
        return version, None, newest_version
    try:
        path = tracking.download_run_artifact(
            tracking_uri, version.run_id, tracking.ONNX_ARTIFACT, tmp / "champion"
        )
    except tracking.ArtifactMissingError:
        raise EvaluationDataError(
            f"champion v{version.version} of '{name}' (run {version.run_id}) has no {tracking.ONNX_ARTIFACT} "
            "any more (deleted from the artifact store?), so the challenger cannot be compared with it, "
            "and batch inference cannot serve it either. Roll back to the previous champion "
            f"(mlops-tasks model rollback {cfg.name}), or restore the file, then run the gate again."
        ) from None
    champion = OnnxModel(path, cfg)
    with tracking.reachable(tracking_uri, f"read the label rule of champion v{version.version} of '{name}'"):
        recorded = client.get_run(version.run_id).data.params
    changed = _target_changes(cfg, champion.task, recorded)
    if changed:
        raise EvaluationDataError(
            f"champion v{version.version} of '{name}' was trained for another target than the config's "
            f"({'; '.join(changed)}): its metrics do not compare with this run's, and batch inference "
            "would go on serving predictions of the old target. Register the models of the new target "
            "under a new mlflow.registered_model (batch inference serves it once its first model is "
            "promoted), or put the target back."
        )
    return version, champion, newest_version


def _target_changes(cfg: PipelineConfig, task: str, recorded: dict[str, str]) -> list[str]:
    """How the config's target differs from the one a run trained for: its model's task, and the
    ``target.*`` parameters the run recorded (those it has: older runs may lack some)."""
    changes = [f"task {task} -> {cfg.target.task}"] if task != cfg.target.task else []
    for field, value in cfg.target.model_dump().items():
        was, now = recorded.get(f"target.{field}"), str(value)[:6000]
        if field != "task" and was is not None and was != now:
            changes.append(f"target.{field} {was} -> {now}")
    return changes


def champion_training_days(
    store: ObjectStore, cfg: PipelineConfig, tracking_uri: str, run_id: str
) -> set[dt.date] | None:
    """The days whose rows the run trained on: its data version's days (the record names them) before
    the last ``training.evaluation_days`` days with rows, as :func:`mlops_tasks.training.split_window`
    cut them with the run's own setting. None when that cannot be known (a run without a data version,
    or a version whose record is gone)."""
    client = tracking.client(tracking_uri)
    with tracking.reachable(tracking_uri, f"read training run {run_id}"):
        run = client.get_run(run_id)
    version = run.data.tags.get("data_version")
    evaluation_days = run.data.params.get("training.evaluation_days")
    if not version or not evaluation_days:
        return None
    try:
        record = read_record(store, cfg, version)
    except DataVersionError:
        return None
    days = {parse_partition_date(f["path"]) for f in record["files"] if f["rows"]} - {None}
    if not days:
        return None
    cutoff = max(days) - dt.timedelta(days=int(evaluation_days) - 1)
    return {day for day in days if day < cutoff}


def _rows_of_days(rows: pd.DataFrame, days: set[dt.date]) -> np.ndarray:
    """Which of ``rows`` (curated rows, with their ``_day``) fall on ``days``."""
    if DAY_COLUMN not in rows.columns or not days:
        return np.zeros(len(rows), dtype=bool)
    return pd.to_datetime(rows[DAY_COLUMN]).dt.date.isin(days).to_numpy()


def _already_champion(version: Any, onnx_sha256: str) -> dict[str, Any]:
    """The check for a run that is the champion already: it passes only while the run's ONNX file is
    the one registered (and so gated) as that version. Any other file would be served unjudged."""
    registered = (version.tags or {}).get(ONNX_SHA256_TAG) or None
    if registered == onnx_sha256:
        detail = f"this run is already champion v{version.version} with the ONNX model it registered"
    elif registered is None:
        detail = (
            f"this run is champion v{version.version}, registered without an ONNX checksum, so its "
            "current ONNX model cannot be shown to be the one gated; train a new run to gate a model"
        )
    else:
        detail = (
            f"this run is champion v{version.version}, but its ONNX model (sha256 {onnx_sha256[:12]}) is "
            f"not the one registered (sha256 {registered[:12]}); the served file changed after its gate. "
            "Train a new run to gate a new model, and roll back if the changed file is being served."
        )
    return _check("already_champion", registered == onnx_sha256, onnx_sha256, registered, detail)


def evaluate_and_gate(
    cfg: PipelineConfig,
    run_id: str,
    eval_frame: pd.DataFrame,
    *,
    tracking_uri: str,
    store: ObjectStore,
    day: dt.date,
) -> dict[str, Any]:
    """Score challenger and champion ONNX on the evaluation rows, decide, report; see module doc."""
    rows, label = labelled_rows(eval_frame, cfg)
    if rows.empty:
        raise EvaluationDataError(
            f"the evaluation rows ({len(eval_frame)} rows) have no label in column '{cfg.target.column}'; "
            "the gate cannot judge a model without labelled rows"
        )
    with tempfile.TemporaryDirectory(prefix="mlops-gate-") as tmp:
        onnx_path = tracking.download_run_artifact(
            tracking_uri, run_id, tracking.ONNX_ARTIFACT, Path(tmp) / "challenger"
        )
        challenger_model = OnnxModel(onnx_path, cfg)
        challenger = {
            "run_id": run_id,
            ONNX_SHA256_TAG: hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            **challenger_model.assess(rows, label, cfg),
        }
        version, champ_model, newest = _champion(cfg, tracking_uri, run_id, Path(tmp))
        champion = None
        if champ_model is not None:
            champion = {"version": version.version, "run_id": version.run_id}
            # A champion scored on days it trained on looks better than it is: a run for an earlier
            # window than the champion's (a backfill) would be judged against its memory. Both models
            # are compared on the rows of the other days only; with none left there is no comparison.
            seen = _rows_of_days(
                rows, champion_training_days(store, cfg, tracking_uri, version.run_id) or set()
            )
            compared, compared_label = rows[~seen], label[~seen]
            if seen.any():
                champion["trained_on_days"] = sorted(
                    {d.isoformat() for d in pd.to_datetime(rows[DAY_COLUMN][seen]).dt.date}
                )
                champion["challenger_metrics"] = (
                    challenger_model.metrics(compared, compared_label, cfg) if len(compared) else {}
                )
            try:
                champion |= (
                    champ_model.assess(compared, compared_label, cfg)
                    if len(compared)
                    else {"metrics": {}, "onnx_bytes": champ_model.bytes, "rows": 0}
                )
            except FeatureError as exc:
                raise EvaluationDataError(
                    f"champion v{version.version} of '{cfg.registered_model_name}' cannot be scored: "
                    f"{exc}. It was trained on a column the data no longer has (data.columns "
                    "changed since), so no challenger can be compared with it, nor can batch inference "
                    "serve it on this data. Restore the column, or register the new models under a new "
                    "mlflow.registered_model."
                ) from None
    if version is not None and version.run_id == run_id:
        checks = [_already_champion(version, challenger[ONNX_SHA256_TAG])]
        reason = ("promoted: " if checks[0]["passed"] else "rejected: ") + checks[0]["detail"]
    else:
        checks = gate_checks(cfg, challenger, champion)
        reason = _reason(checks, champion)
    promote = all(c["passed"] for c in checks)
    decision: dict[str, Any] = {
        "promote": promote,
        "reason": reason,
        "primary_metric": cfg.gate.primary_metric,
        "challenger": challenger,
        "champion": champion,
        "champion_version": version.version if version is not None else None,
        "registry_newest_version": newest,
        "checks": checks,
        "floor_failed": any(c["name"] in FLOOR_CHECKS and not c["passed"] for c in checks),
        "model_name": cfg.registered_model_name,
        "day": day.isoformat(),
    }
    # One report per champion compared with: a run gated again after the champion moved (a stale
    # registration's remedy) keeps its first report, which that gate's version and lineage point to.
    compared = f"vs-v{version.version}" if version is not None else "vs-none"
    base = partition_prefix(cfg.prefix, "reports/gate", day) + f"{run_id}/{compared}/"
    report = json.dumps(decision, indent=1, sort_keys=True).encode()
    page = render_html(decision).encode()
    decision["report_json_uri"] = store.put_bytes(base + "gate.json", report, "application/json")
    decision["report_html_uri"] = store.put_bytes(base + "gate.html", page, "text/html; charset=utf-8")
    _log_to_run(tracking_uri, run_id, decision, report, page, f"gate/{compared}")
    return decision


def _log_to_run(
    tracking_uri: str, run_id: str, decision: dict[str, Any], report: bytes, page: bytes, artifact_path: str
) -> None:
    """The gate's metrics, its decision as the run's tags (the latest gate of the run) and its report
    as artifacts under ``artifact_path`` (one folder per champion compared with, as in S3)."""
    client = tracking.client(tracking_uri)
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"eval_{k}", v, now, 0)
        for k, v in sorted(decision["challenger"]["metrics"].items())
        if v is not None
    ]
    metrics.append(
        Metric("eval_p95_batch_latency_ms", decision["challenger"]["p95_batch_latency_ms"], now, 0)
    )
    tags = [
        RunTag("gate_decision", "promote" if decision["promote"] else "reject"),
        RunTag("gate_reason", decision["reason"][:4000]),
    ]
    with (
        tracking.reachable(tracking_uri, f"log the gate report to run {run_id}"),
        tempfile.TemporaryDirectory() as tmp,
    ):
        (Path(tmp) / "gate.json").write_bytes(report)
        (Path(tmp) / "gate.html").write_bytes(page)
        # A retry measures the same eval metrics again: log only what changed (the latency), so the
        # run's history holds one point per evaluation, not one per attempt.
        logged = client.get_run(run_id).data.metrics
        metrics = [m for m in metrics if logged.get(m.key) != m.value]
        client.log_batch(run_id, metrics=metrics, tags=tags)
        client.log_artifacts(run_id, tmp, artifact_path)


# -- the HTML report ---------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _svg_chart(challenger: dict[str, float | None], champion: dict[str, float | None] | None) -> str:
    """Inline SVG: one pair of bars (challenger, champion) per metric, scaled per metric."""
    names = sorted(challenger)
    row_h, label_w, bar_w = 34, 110, 380
    height = row_h * len(names) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 90}" height="{height}" '
        'role="img" aria-label="challenger vs champion metrics">',
        '<rect x="0" y="0" width="12" height="10" fill="#2b6cb0"/><text x="16" y="10" font-size="11">challenger</text>',
        '<rect x="100" y="0" width="12" height="10" fill="#a0aec0"/><text x="116" y="10" font-size="11">champion</text>',
    ]
    for i, name in enumerate(names):
        values = [challenger.get(name), (champion or {}).get(name)]
        top = max((abs(v) for v in values if v is not None), default=0) or 1.0
        y = 24 + i * row_h
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(name)}</text>')
        for j, (value, color) in enumerate(zip(values, ("#2b6cb0", "#a0aec0"), strict=True)):
            if value is None:
                continue
            width = bar_w * abs(value) / top
            parts.append(
                f'<rect x="{label_w}" y="{y + j * 14}" width="{width:.1f}" height="12" fill="{color}"/>'
                f'<text x="{label_w + width + 4:.1f}" y="{y + j * 14 + 10}" font-size="11">{value:.4f}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def render_html(decision: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no external assets) with every number of the decision."""
    ch, cp = decision["challenger"], decision["champion"]
    verdict = "PROMOTE" if decision["promote"] else "REJECT"
    color = "#276749" if decision["promote"] else "#9b2c2c"
    champion_label = f"v{decision['champion_version']}" if decision["champion_version"] else "none"
    # A champion that trained on some evaluation days is compared on the other days' rows only: the
    # challenger's metrics on those rows get a column of their own.
    same_rows = (cp or {}).get("challenger_metrics")
    header = "<th>challenger, champion's rows</th>" if same_rows is not None else ""
    metric_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td>"
        + (f"<td>{_fmt(same_rows.get(k))}</td>" if same_rows is not None else "")
        + f"<td>{_fmt((cp or {}).get('metrics', {}).get(k))}</td></tr>"
        for k, v in sorted(ch["metrics"].items())
    )
    for key in ("onnx_bytes", "p95_batch_latency_ms", "rows", "run_id"):
        metric_rows += (
            f"<tr><td>{key}</td><td>{_fmt(ch.get(key))}</td>"
            + ("<td></td>" if same_rows is not None else "")
            + f"<td>{_fmt((cp or {}).get(key))}</td></tr>"
        )
    trained_on = (cp or {}).get("trained_on_days")
    overlap = (
        f"<p>Champion {champion_label} trained on {len(trained_on)} of the evaluation days "
        f"({html.escape(', '.join(trained_on))}): it is compared on the {cp['rows']} rows of the other "
        "days, and so is the challenger.</p>"
        if trained_on
        else ""
    )
    check_rows = "".join(
        f'<tr><td>{html.escape(c["name"])}</td><td style="color:{"#276749" if c["passed"] else "#9b2c2c"}">'
        f"{'pass' if c['passed'] else 'FAIL'}</td><td>{_fmt(c['value'])}</td><td>{_fmt(c['threshold'])}</td>"
        f"<td>{html.escape(c['detail'])}</td></tr>"
        for c in decision["checks"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Gate report {html.escape(ch["run_id"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #cbd5e0;padding:4px 8px;text-align:left}}</style></head><body>
<h1>Gate report: <span style="color:{color}">{verdict}</span></h1>
<p>Model <b>{html.escape(decision["model_name"])}</b>, evaluation day {html.escape(decision["day"])},
challenger run <code>{html.escape(ch["run_id"])}</code>, champion {champion_label},
primary metric <b>{html.escape(decision["primary_metric"])}</b>.</p>
<p><b>Reason:</b> {html.escape(decision["reason"])}</p>{overlap}
{_svg_chart(same_rows or ch["metrics"], cp["metrics"] if cp else None)}
<h2>Numbers</h2><table><tr><th>metric</th><th>challenger</th>{header}<th>champion</th></tr>{metric_rows}</table>
<h2>Checks</h2><table><tr><th>check</th><th>result</th><th>value</th><th>threshold</th><th>rule</th></tr>
{check_rows}</table></body></html>
"""
