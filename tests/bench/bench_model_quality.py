"""Model quality: our PyTorch model (as served: exported ONNX) vs scikit-learn HistGradientBoosting.

Temporal splits of the example (train on whole months, evaluate on the next month), the features of
configs/flights_delay.yaml, the same rows for both models; HGB treats the categorical features as
categorical. Target: our ROC AUC within 0.01 of HGB's.

Unseen categories, side by side: our model trained as configured and with no values hidden as
unknown (``model.unknown_category_rate`` 0), each scoring the evaluation rows with their destination
replaced by one the model never saw: the share of rows whose score lies within the range of their
scores over the 20 most frequent known destinations, and both models' ROC AUC.
Model settings can be overridden to tune:

    .venv/bin/python tests/bench/bench_model_quality.py [--epochs 8 --lr 0.002 --hidden 128,64 ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlops_tasks import export, tracking, training
from mlops_tasks.config import PipelineConfig, load_config
from mlops_tasks.evaluation import OnnxModel, label_targets, labelled_rows
from tests.conftest import EXAMPLE_CONFIG
from tests.model_frames import example_rows, local_tracking_server

SPLITS = {
    "Jan-Feb -> Mar": ((1, 2), 3),
    "Jan-Apr -> May": ((1, 4), 5),
    "Jun-Jul -> Aug": ((6, 7), 8),
}


def month_range(first: int, last: int) -> tuple[dt.date, dt.date]:
    end = dt.date(2013, last + 1, 1) - dt.timedelta(days=1) if last < 12 else dt.date(2013, 12, 31)
    return dt.date(2013, first, 1), end


def hgb_auc(cfg: PipelineConfig, train: pd.DataFrame, evaluation: pd.DataFrame) -> tuple[float, float]:
    """ROC AUC of HistGradientBoosting on the same features (categoricals as categorical) and fit seconds."""
    feats = cfg.features

    def matrix(frame: pd.DataFrame, vocab: dict[str, list[str]]) -> np.ndarray:
        cols = [pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64) for c in feats.numeric]
        for c in feats.categorical:
            codes = pd.Categorical(frame[c].astype("string"), categories=vocab[c]).codes.astype(np.float64)
            cols.append(np.where(codes < 0, np.nan, codes))
        return np.column_stack(cols)

    vocab = {c: sorted(train[c].dropna().astype(str).unique()) for c in feats.categorical}
    train_rows, train_label = labelled_rows(train, cfg)
    eval_rows, eval_label = labelled_rows(evaluation, cfg)
    mask = [False] * len(feats.numeric) + [True] * len(feats.categorical)
    model = HistGradientBoostingClassifier(categorical_features=mask, random_state=0)
    started = time.perf_counter()
    model.fit(matrix(train_rows, vocab), label_targets(train_label, "binary", ["0", "1"]))
    seconds = time.perf_counter() - started
    score = model.predict_proba(matrix(eval_rows, vocab))[:, 1]
    return roc_auc_score(label_targets(eval_label, "binary", ["0", "1"]), score), seconds


def ours_auc(
    cfg: PipelineConfig, train: pd.DataFrame, evaluation: pd.DataFrame, uri: str
) -> tuple[float, float, dict]:
    """ROC AUC of our model through the production path (train -> export -> onnxruntime scoring), and
    the share of evaluation rows whose score with an unseen destination lies within the range of
    their scores over the 20 most frequent known ones."""
    run = training.train(cfg, train, tracking_uri=uri, data_version="bench", trigger="bench")
    export.export_run(cfg, run["run_id"], tracking_uri=uri, sample_frame=evaluation)
    with tempfile.TemporaryDirectory() as tmp:
        path = tracking.download_run_artifact(uri, run["run_id"], tracking.ONNX_ARTIFACT, tmp)
        model = OnnxModel(path, cfg)
        rows, label = labelled_rows(evaluation, cfg)
        score, _ = model.score(rows)
        known = [model.score(rows.assign(dest=d))[0] for d in train["dest"].value_counts().index[:20]]
        unseen = model.score(rows.assign(dest="unseen airport"))[0]
    inside = float(np.mean((unseen >= np.min(known, axis=0)) & (unseen <= np.max(known, axis=0))))
    return roc_auc_score(label_targets(label, "binary", model.classes), score), inside, run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--hidden", help="comma-separated hidden layer widths")
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--unknown-category-rate", type=float)
    parser.add_argument("--splits", nargs="*", choices=list(SPLITS), default=list(SPLITS))
    args = parser.parse_args()
    base = load_config(EXAMPLE_CONFIG)
    overrides = {
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "hidden_layers": [int(h) for h in args.hidden.split(",")] if args.hidden else None,
        "dropout": args.dropout,
        "batch_size": args.batch_size,
        "weight_decay": args.weight_decay,
        "early_stopping_patience": args.patience,
        "unknown_category_rate": args.unknown_category_rate,
    }
    model = base.model.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    cfg = base.model_copy(update={"model": model})
    print(f"model settings: {model.model_dump()}")
    header = f"{'split':<16}{'train rows':>11}{'eval rows':>10}{'ours AUC':>10}{'HGB AUC':>9}{'diff':>8}"
    header += f"{'ours s':>8}{'epochs':>7}{'HGB s':>7}{'AUC, 0 hidden':>15}{'unseen inside, as set / 0':>27}"
    lines = [header, "-" * len(header)]
    none_hidden = cfg.model_copy(update={"model": model.model_copy(update={"unknown_category_rate": 0.0})})
    with local_tracking_server() as uri:
        for name in args.splits:
            (first, last), eval_month = SPLITS[name]
            train = example_rows(*month_range(first, last))
            evaluation = example_rows(*month_range(eval_month, eval_month))
            ours, inside, run = ours_auc(cfg, train, evaluation, uri)
            bare, bare_inside, _ = ours_auc(none_hidden, train, evaluation, uri)
            hgb, hgb_seconds = hgb_auc(cfg, train, evaluation)
            lines.append(
                f"{name:<16}{len(train):>11}{len(evaluation):>10}{ours:>10.4f}{hgb:>9.4f}{ours - hgb:>+8.4f}"
                f"{run['seconds']:>8.1f}{run['epochs_run']:>7}{hgb_seconds:>7.1f}{bare:>15.4f}"
                f"{inside:>18.0%} / {bare_inside:.0%}"
            )
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
