"""Train the pipeline's PyTorch tabular model and track it in MLflow.

The model is an MLP over standardised numeric features and one learned embedding per categorical
feature. Everything the model needs to turn raw columns into predictions (imputation medians, scaler
statistics, categorical vocabularies, class names, target scaling, architecture) is learned from
training rows only and stored as one JSON artifact (``model/model_spec.json``) next to the weights
(``model/weights.pt``, a ``state_dict`` read back only with ``torch.load(weights_only=True)``): no
pickle anywhere, and :mod:`mlops_tasks.export` can rebuild the exact network from the run alone.

Categorical code 0 is the out-of-vocabulary slot (also used for missing values), trained on a small
share of values hidden as unknown (``model.unknown_category_rate``, :func:`hide_categories`), so
unseen values at serving time are a normal input, not an error, and score like an average category.
Training is deterministic for a fixed seed: one seeded validation split, one seeded data order per
epoch, deterministic torch kernels. A retry of a killed
attempt (same run name) marks the attempt's run, left RUNNING, as KILLED; a retry of an attempt that
finished its run and failed afterwards reuses that run rather than training a duplicate.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# torch's OpenMP threads busy-wait between steps by default; on a shared worker (Airflow slots, other
# tasks) that turns a 20 ms step into seconds. Passive waiting must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
from mlflow.entities import Metric, Param, RunTag
from torch import nn

from mlops_tasks import tracking
from mlops_tasks.config import MIN_TRAINING_ROWS, FeatureSpec, PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.evaluation import DAY_COLUMN, compute_metrics, label_targets, labelled_rows
from mlops_tasks.features import CATEGORICAL_CODES_INPUT, CATEGORICAL_VALUES_INPUT, onnx_inputs

log = logging.getLogger(__name__)

SPEC_FORMAT = 1
# Below this spread the export's first layer, whose weights it divides by the spread in float32,
# overflows to inf for trained weights of |w| > ~3e8 (and at 3e-39, for any |w| > 1).
_SMALLEST_SCALABLE_STD = 1e-30


class TrainingDataError(DataError):
    """The training rows cannot produce a model (too few rows, a single class, no window)."""


@dataclass(frozen=True)
class NetSpec:
    """Everything but the weights: preprocessing statistics, labels and architecture (JSON-able)."""

    task: str
    numeric: list[str]
    categorical: list[str]
    classes: list[str] | None
    median: list[float]
    mean: list[float]
    std: list[float]
    vocab: list[list[str]]
    target_mean: float
    target_std: float
    embedding_dims: list[int]
    hidden_layers: list[int]
    dropout: float
    outputs: int
    # Numeric features constant (or empty) in the training rows; absent from specs of older runs.
    constant: list[str] = field(default_factory=list)

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(numeric=self.numeric, categorical=self.categorical)

    def to_json(self) -> str:
        return json.dumps({"format": SPEC_FORMAT, **asdict(self)}, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NetSpec:
        raw = json.loads(text)
        if raw.pop("format", None) != SPEC_FORMAT:
            raise ValueError(f"model spec format is not {SPEC_FORMAT}; was it written by another version?")
        return cls(**raw)


class TabularNet(nn.Module):
    """MLP over [scaled numeric, one embedding per categorical]; outputs logits (or the scaled target)."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(len(vocab) + 1, dim)
            for vocab, dim in zip(spec.vocab, spec.embedding_dims, strict=True)
        )
        layers: list[nn.Module] = []
        width = len(spec.numeric) + sum(spec.embedding_dims)
        for hidden in spec.hidden_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = hidden
        layers.append(nn.Linear(width, spec.outputs))
        self.mlp = nn.Sequential(*layers)
        # A constant training feature is 0 after centring, so its first-layer weights get no gradient
        # and would keep their random start: when the feed varies again at serving, the scores would
        # move by chance. Zeroed, they stay zero (no gradient, weight decay keeps 0) and the feature
        # is ignored, in torch and in the exported graph alike.
        with torch.no_grad():
            for name in spec.constant:
                self.mlp[0].weight[:, spec.numeric.index(name)] = 0.0

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = [numeric, *(emb(codes[:, i]) for i, emb in enumerate(self.embeddings))]
        return self.mlp(torch.cat(parts, dim=1))


# -- data -------------------------------------------------------------------------------------------


MIN_HELD_OUT_DAYS = 3


def validation_split(
    rows: pd.DataFrame, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the early-stopping rows and of the rows to fit.

    Whole days, drawn at random (seeded) until they hold about ``fraction`` of the rows, when that
    comes to at least ``MIN_HELD_OUT_DAYS`` days. Rows of one day share its weather and events: split
    within days, the validation loss kept falling while the model learnt the days themselves, so early
    stopping hardly ever stopped. Days from the whole window, not the latest ones: those are the most
    like the days the model will score, and held out they cost it (bench_model_quality.py).

    A shorter window (or rows without ``_day``) is split by rows at random: the loss of one or two
    held-out days is too noisy to stop on (it stopped short windows' training after an epoch or two,
    giving models the gate rejected).
    """
    want = max(1, round(len(rows) * fraction))
    days = pd.to_datetime(rows[DAY_COLUMN], errors="coerce") if DAY_COLUMN in rows else None
    if days is None or days.isna().any() or days.nunique() * fraction < MIN_HELD_OUT_DAYS:
        order = rng.permutation(len(rows))
        return np.sort(order[:want]), np.sort(order[want:])
    per_day = days.value_counts().sort_index()
    per_day = per_day.iloc[rng.permutation(len(per_day))]
    held_days = min(int(np.searchsorted(per_day.cumsum().to_numpy(), want)) + 1, len(per_day) - 1)
    held = days.isin(per_day.index[:held_days]).to_numpy()
    return np.flatnonzero(held), np.flatnonzero(~held)


def split_window(frame: pd.DataFrame, cfg: PipelineConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Temporal split by ``_day``: the last ``evaluation_days`` calendar days are the evaluation rows.

    A random split would leak tomorrow's weather into today's training; the gate must judge the model
    on days it has not seen, as batch inference will.
    """
    if DAY_COLUMN not in frame.columns:
        raise TrainingDataError(f"training rows have no '{DAY_COLUMN}' column; cannot split by day")
    days = pd.to_datetime(frame[DAY_COLUMN], errors="coerce").dt.normalize()
    if days.empty:
        raise TrainingDataError("no training rows to split into training and evaluation days")
    if days.isna().any():
        # A row without its day would land in training whatever day it is from (evaluation rows too).
        example = frame[DAY_COLUMN][days.isna()].iloc[0]
        raise TrainingDataError(
            f"column '{DAY_COLUMN}' of {int(days.isna().sum())} of the {len(frame)} training rows holds no "
            f"date (e.g. {example!r}); ingest writes it on every row: the rows do not come from curated "
            "partitions as ingest and validation wrote them"
        )
    cutoff = days.max() - pd.Timedelta(days=cfg.training.evaluation_days - 1)
    is_eval = (days >= cutoff).to_numpy()
    train, evaluation = frame[~is_eval], frame[is_eval]
    if train.empty:
        raise TrainingDataError(
            f"all rows fall in the last {cfg.training.evaluation_days} evaluation days "
            f"(from {cutoff.date()}); no training rows left"
        )
    return train, evaluation


def encode(frame: pd.DataFrame, spec: NetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw columns -> (imputed, scaled float32 numeric; int64 codes with 0 = unseen/missing).

    Built on :func:`features.onnx_inputs`, so the torch path sees exactly what the ONNX graph sees.
    """
    inputs = onnx_inputs(frame, spec.features, source="model input")
    numeric = inputs.get("numeric", np.zeros((len(frame), 0), dtype=np.float32))
    numeric = np.where(np.isnan(numeric), np.asarray(spec.median, dtype=np.float32), numeric)
    numeric = (numeric - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    codes = np.zeros((len(frame), len(spec.categorical)), dtype=np.int64)
    for i, vocab in enumerate(spec.vocab):
        # Look the batch's distinct values up once (-1 = unseen or "" -> slot 0), then index by row.
        value_codes = pd.Index(vocab, dtype=object).get_indexer(inputs[CATEGORICAL_VALUES_INPUT]) + 1
        codes[:, i] = value_codes[inputs[CATEGORICAL_CODES_INPUT][:, i]]
    return numeric.astype(np.float32), codes


def fit_spec(frame: pd.DataFrame, label: pd.Series, cfg: PipelineConfig) -> NetSpec:
    """Learn preprocessing statistics and label encoding from the training rows only."""
    feats = cfg.features
    inputs = onnx_inputs(frame, feats, source="training rows")
    numeric = inputs.get("numeric", np.zeros((len(frame), 0), dtype=np.float32)).astype(np.float64)
    median, mean, std, constant = [], [], [], []
    for i, col in enumerate(feats.numeric):
        values = numeric[:, i]
        if np.isnan(values).all():
            log.warning("numeric feature '%s' is empty (all NaN) in the training rows; imputed as 0", col)
            med = 0.0
        else:
            med = float(np.nanmedian(values))
        filled = np.where(np.isnan(values), med, values).astype(np.float32)
        sd = float(filled.std(dtype=np.float64))  # float32 squares overflow beyond a spread of ~1.8e19
        if sd < _SMALLEST_SCALABLE_STD:  # 0, or so small that 1/std overflows in the float32 graph
            log.warning(
                "numeric feature '%s' is constant in the training rows (spread %.3g); the model ignores it",
                col,
                sd,
            )
            sd = 1.0
            constant.append(col)
        median.append(float(np.float32(med)))
        mean.append(float(filled.mean(dtype=np.float64).astype(np.float32)))
        std.append(float(np.float32(sd)))
    vocab = []
    for i in range(len(feats.categorical)):
        present = inputs[CATEGORICAL_VALUES_INPUT][np.unique(inputs[CATEGORICAL_CODES_INPUT][:, i])]
        vocab.append(sorted({v for v in present if v != ""}))
    dims = [cfg.model.embedding_dim or max(1, min(16, (len(v) + 1) // 2)) for v in vocab]
    classes, target_mean, target_std, outputs = None, 0.0, 1.0, 1
    if cfg.target.task == "regression":
        target = label.to_numpy(dtype=np.float64)
        target_mean, target_std = float(target.mean()), float(target.std()) or 1.0
    else:
        classes = sorted(label.unique().tolist())
        outputs = 1 if cfg.target.task == "binary" else len(classes)
    return NetSpec(
        task=cfg.target.task,
        numeric=list(feats.numeric),
        categorical=list(feats.categorical),
        classes=classes,
        median=median,
        mean=mean,
        std=std,
        vocab=vocab,
        target_mean=target_mean,
        target_std=target_std,
        embedding_dims=dims,
        hidden_layers=list(cfg.model.hidden_layers),
        dropout=cfg.model.dropout,
        outputs=outputs,
        constant=constant,
    )


def _check_labels(label: pd.Series, cfg: PipelineConfig, source: str) -> None:
    if len(label) < MIN_TRAINING_ROWS:
        raise TrainingDataError(
            f"{source}: only {len(label)} labelled rows (column '{cfg.target.column}'); "
            f"training needs at least {MIN_TRAINING_ROWS}"
        )
    if cfg.target.task == "regression":
        return
    classes = sorted(label.unique().tolist())
    if cfg.target.task == "binary" and len(classes) > 2:
        raise TrainingDataError(
            f"{source}: binary target '{cfg.target.column}' has {len(classes)} classes {classes[:10]}; "
            "use task multiclass or a positive_when rule"
        )
    if len(classes) < 2:
        raise TrainingDataError(
            f"{source}: every labelled row has the same class {classes} (target '{cfg.target.column}'); "
            "a classifier needs at least two classes. Widen the training window or check the label rule."
        )


# -- inference with the torch model ----------------------------------------------------------------


def outputs_to_scores(raw: torch.Tensor, spec: NetSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Network outputs -> (score [N], probabilities [N, C] or None), as the ONNX contract defines."""
    if spec.task == "binary":
        return torch.sigmoid(raw[:, 0]).numpy(), None
    if spec.task == "multiclass":
        proba = torch.softmax(raw, dim=1)
        return proba.max(dim=1).values.numpy(), proba.numpy()
    return (raw[:, 0] * spec.target_std + spec.target_mean).numpy(), None


def predict(net: TabularNet, spec: NetSpec, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference (torch) predictions of raw rows: the other side of the ONNX parity check."""
    numeric, codes = encode(frame, spec)
    net.eval()
    with torch.no_grad():
        raw = net(torch.from_numpy(numeric), torch.from_numpy(codes))
    return outputs_to_scores(raw, spec)


def load_run_model(tracking_uri: str, run_id: str, dest_dir: str | Path) -> tuple[TabularNet, NetSpec]:
    """Rebuild a trained network from its run's artifacts (weights loaded with weights_only=True)."""
    spec_path = tracking.download_run_artifact(tracking_uri, run_id, tracking.SPEC_ARTIFACT, dest_dir)
    weights_path = tracking.download_run_artifact(tracking_uri, run_id, tracking.WEIGHTS_ARTIFACT, dest_dir)
    spec = NetSpec.from_json(spec_path.read_text())
    net = TabularNet(spec)
    net.load_state_dict(torch.load(weights_path, weights_only=True))
    net.eval()
    return net, spec


# -- training ---------------------------------------------------------------------------------------


def _targets(label: pd.Series, spec: NetSpec) -> torch.Tensor:
    values = label_targets(label, spec.task, spec.classes)
    if spec.task == "binary":
        return torch.from_numpy(values.astype(np.float32)).unsqueeze(1)
    if spec.task == "multiclass":
        return torch.from_numpy(values.astype(np.int64))
    scaled = (values.astype(np.float64) - spec.target_mean) / spec.target_std
    return torch.from_numpy(scaled.astype(np.float32)).unsqueeze(1)


def _loss_fn(task: str) -> nn.Module:
    return {"binary": nn.BCEWithLogitsLoss, "multiclass": nn.CrossEntropyLoss}.get(task, nn.MSELoss)()


def _ensure_experiment(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        # MLflow keeps a deleted experiment's name taken and refuses runs in it. Restoring it here
        # would undo someone's decision; say what to do instead.
        raise TrainingDataError(
            f"MLflow experiment '{name}' (id {experiment.experiment_id}) is deleted, so no run can be logged "
            f"in it. Restore it (`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or "
            "purge it for good (`mlflow gc`) so a new one of that name is created, or set mlflow.experiment "
            "in the pipeline config to another name."
        )
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # a concurrent run created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _finished_attempt(
    client: Any,
    experiment_id: str,
    run_name: str,
    data_version: str,
    params: list[Param],
    code: dict[str, str],
) -> Any | None:
    """The FINISHED run of an earlier attempt of this task that trained what this one would, or None.

    An attempt can finish its run and fail afterwards (worker lost before its result was stored);
    training again would leave a duplicate finished run. The run counts only with its weights and spec
    logged and the same data version, params (config, row counts) and code version: a task cleared
    after a config change trains again.
    """
    if "'" in run_name + data_version:  # not expressible in MLflow's filter syntax: train again
        return None
    filter_string = (
        f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED' "
        f"and tags.data_version = '{data_version}'"
    )
    wanted = {p.key: p.value for p in params}
    for run in client.search_runs([experiment_id], filter_string=filter_string):
        same_code = all(run.data.tags.get(k) == v for k, v in code.items())
        if run.data.params != wanted or not same_code:
            continue
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        if {tracking.WEIGHTS_ARTIFACT, tracking.SPEC_ARTIFACT} <= logged:
            return run
    return None


def _known_class_rows(
    rows: pd.DataFrame, label: pd.Series, spec: NetSpec, column: str
) -> tuple[pd.DataFrame, pd.Series]:
    """The validation rows whose class the model has (all rows unless multiclass).

    A class only the validation split holds (a rare carrier) has no output to score, and the loss
    cannot take its rows; as the split is seeded, every retry would fail the same way.
    """
    if spec.task != "multiclass":
        return rows, label
    known = label.isin(spec.classes or []).to_numpy()
    if not known.any():
        raise TrainingDataError(
            f"training rows: none of the {len(label)} validation rows has a class of the training split "
            f"(target '{column}'); the validation loss needs some. Widen the training "
            "window or raise training.validation_fraction."
        )
    if not known.all():
        unseen = sorted(set(label[~known]))
        log.warning(
            "%d validation rows have classes %s that the training split lacks; they are left out of the "
            "validation loss",
            int((~known).sum()),
            unseen[:10],
        )
    return rows[known], label[known]


def _params(cfg: PipelineConfig, spec: NetSpec, train_rows: int, val_rows: int) -> list[Param]:
    """Everything that decides what is trained besides the data version and the code: also the key on
    which a retry reuses a finished run (:func:`_finished_attempt`), so the label rule belongs here."""
    values = {
        **{f"model.{k}": v for k, v in cfg.model.model_dump().items()},
        **{f"training.{k}": v for k, v in cfg.training.model_dump().items()},
        **{f"target.{k}": v for k, v in cfg.target.model_dump().items()},
        "task": spec.task,
        "classes": spec.classes,
        "features.numeric": ",".join(spec.numeric),
        "features.categorical": ",".join(spec.categorical),
        "embedding_dims": spec.embedding_dims,
        "train_rows": train_rows,
        "val_rows": val_rows,
    }
    return [Param(k, str(v)[:6000]) for k, v in sorted(values.items())]


def train(
    cfg: PipelineConfig,
    train_frame: pd.DataFrame,
    *,
    tracking_uri: str,
    data_version: str,
    trigger: str,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train on ``train_frame`` (curated rows) as one MLflow run; returns ids and summary numbers.

    Validation of the data happens before any run is created, so bad input leaves no junk runs.
    """
    started = time.perf_counter()
    rows, label = labelled_rows(train_frame, cfg)
    _check_labels(label, cfg, "training rows")
    m = cfg.model
    rng = np.random.default_rng(m.seed)
    if cfg.training.max_rows and len(rows) > cfg.training.max_rows:
        keep = np.sort(rng.choice(len(rows), cfg.training.max_rows, replace=False))
        rows, label = rows.iloc[keep], label.iloc[keep]
    val_idx, fit_idx = validation_split(rows, cfg.training.validation_fraction, rng)
    fit_rows, fit_label = rows.iloc[fit_idx], label.iloc[fit_idx]
    val_rows, val_label = rows.iloc[val_idx], label.iloc[val_idx]
    _check_labels(fit_label, cfg, "training rows (after the validation split)")
    spec = fit_spec(fit_rows, fit_label, cfg)
    val_rows, val_label = _known_class_rows(val_rows, val_label, spec, cfg.target.column)
    params = _params(cfg, spec, len(fit_rows), len(val_rows))
    code = tracking.version_tags()

    client = tracking.client(tracking_uri)
    with tracking.reachable(tracking_uri, f"start an MLflow run in experiment '{cfg.experiment_name}'"):
        experiment_id = _ensure_experiment(client, cfg.experiment_name)
        run_tags = {
            **code,
            **(tags or {}),
            "data_version": data_version,
            "trigger": trigger,
            "pipeline": cfg.name,
        }
        if run_name:
            tracking.end_killed_attempts(client, experiment_id, run_name)
            done = _finished_attempt(client, experiment_id, run_name, data_version, params, code)
            if done is not None:
                log.warning(
                    "MLflow run %s of an earlier attempt finished training: reusing it", done.info.run_id
                )
                history = client.get_metric_history(done.info.run_id, "val_loss")
                return {
                    "run_id": done.info.run_id,
                    "experiment_id": experiment_id,
                    "epochs_run": max((m.step for m in history), default=0),
                    "best_epoch": int(done.data.tags["best_epoch"]),
                    "best_val_loss": done.data.metrics["best_val_loss"],
                    "train_rows": len(fit_rows),
                    "seconds": round(time.perf_counter() - started, 3),
                }
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    run_id = run.info.run_id
    try:
        with tracking.reachable(tracking_uri, f"track training run {run_id}"):
            client.log_batch(run_id, params=params)
            summary = _fit(cfg, spec, (fit_rows, fit_label), (val_rows, val_label), client, run_id)
            client.set_terminated(run_id, "FINISHED")
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error if the server is gone
            client.set_terminated(run_id, "FAILED")
        raise
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        **summary,
        "train_rows": len(fit_rows),
        "seconds": round(time.perf_counter() - started, 3),
    }


def hide_categories(codes: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """``codes`` with each value replaced by the out-of-vocabulary code 0 with probability ``rate``.

    Serving meets values training never saw (a new destination, a new carrier). Code 0 stands for
    them, but only training rows with missing values would ever train its embedding: without
    hidden values it keeps its random initial vector, and an unseen value moves the score anywhere.
    Hidden values teach it the average category instead."""
    if not rate:
        return codes
    return codes.masked_fill(torch.rand(codes.shape, generator=generator) < rate, 0)


def _diverged(which: str, loss: float, epoch: int, learning_rate: float) -> str:
    return (
        f"the {which} loss is {loss} in epoch {epoch}: the network diverged or its inputs hold values "
        f"too extreme to scale; nothing is saved from this run. Check the numeric features for huge "
        f"values, or lower model.learning_rate ({learning_rate:g}), then train again."
    )


def _fit(
    cfg: PipelineConfig,
    spec: NetSpec,
    fit: tuple[pd.DataFrame, pd.Series],
    val: tuple[pd.DataFrame, pd.Series],
    client: Any,
    run_id: str,
) -> dict[str, Any]:
    m = cfg.model
    previous_threads, previous_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(m.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(m.seed)
        net = TabularNet(spec)
        x_num, x_cat = (torch.from_numpy(a) for a in encode(fit[0], spec))
        y = _targets(fit[1], spec)
        v_num, v_cat = (torch.from_numpy(a) for a in encode(val[0], spec))
        v_y = _targets(val[1], spec)
        v_true = label_targets(val[1], spec.task, spec.classes)
        loss_fn = _loss_fn(spec.task)
        optimizer = torch.optim.AdamW(net.parameters(), lr=m.learning_rate, weight_decay=m.weight_decay)
        order_gen = torch.Generator().manual_seed(m.seed)
        hide_gen = torch.Generator().manual_seed(m.seed + 1)  # its own stream: the data order stays
        primary = cfg.gate.primary_metric
        best = {"val_loss": float("inf"), "epoch": 0, "state": copy.deepcopy(net.state_dict())}
        epochs_run = 0
        for epoch in range(1, m.epochs + 1):
            net.train()
            total = 0.0
            for batch in torch.randperm(len(y), generator=order_gen).split(m.batch_size):
                optimizer.zero_grad()
                codes = hide_categories(x_cat[batch], m.unknown_category_rate, hide_gen)
                loss = loss_fn(net(x_num[batch], codes), y[batch])
                if not torch.isfinite(loss):
                    raise TrainingDataError(_diverged("training", loss.item(), epoch, m.learning_rate))
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            net.eval()
            with torch.no_grad():
                raw = net(v_num, v_cat)
                val_loss = float(loss_fn(raw, v_y))
            if not np.isfinite(val_loss):
                raise TrainingDataError(_diverged("validation", val_loss, epoch, m.learning_rate))
            score, proba = outputs_to_scores(raw, spec)
            metric = compute_metrics(spec.task, v_true, score, proba).get(primary)
            epochs_run = epoch
            now = int(time.time() * 1000)
            metrics = [
                Metric("train_loss", total / len(y), now, epoch),
                Metric("val_loss", val_loss, now, epoch),
            ]
            if metric is not None:
                metrics.append(Metric(f"val_{primary}", metric, now, epoch))
            client.log_batch(run_id, metrics=metrics)
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch, "state": copy.deepcopy(net.state_dict())}
            elif epoch - best["epoch"] >= m.early_stopping_patience:
                log.info("early stopping after epoch %d (best epoch %d)", epoch, best["epoch"])
                break
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_det)
    client.log_batch(
        run_id,
        metrics=[Metric("best_val_loss", best["val_loss"], int(time.time() * 1000), best["epoch"])],
        tags=[RunTag("best_epoch", str(best["epoch"]))],
    )
    with tempfile.TemporaryDirectory(prefix="mlops-train-") as tmp:
        torch.save(best["state"], Path(tmp) / "weights.pt")
        (Path(tmp) / "model_spec.json").write_text(spec.to_json())
        client.log_artifacts(run_id, tmp, "model")
    return {"epochs_run": epochs_run, "best_epoch": best["epoch"], "best_val_loss": best["val_loss"]}
