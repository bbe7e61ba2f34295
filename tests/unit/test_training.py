"""Training data handling on tiny frames: window split, preprocessing statistics, clear refusals."""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import pytest

from mlops_tasks import training
from mlops_tasks.config import PipelineConfig

UNREACHABLE = "http://127.0.0.1:9"  # never contacted: bad data is refused before MLflow is


def tiny_rows(n: int = 200, days: int = 10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = dt.date(2013, 3, 1)
    return pd.DataFrame(
        {
            "day": rng.integers(1, 28, n),
            "hour": rng.integers(5, 23, n),
            "minute": rng.integers(0, 59, n),
            "distance": rng.uniform(100, 2500, n),
            "temp": rng.normal(40, 10, n),
            "dewp": rng.normal(30, 10, n),
            "humid": rng.uniform(20, 100, n),
            "wind_dir": rng.uniform(0, 360, n),
            "wind_speed": rng.uniform(0, 30, n),
            "wind_gust": np.nan,
            "precip": 0.0,
            "pressure": rng.normal(1015, 8, n),
            "visib": rng.uniform(1, 10, n),
            "carrier": rng.choice(["UA", "AA", "DL"], n),
            "origin": rng.choice(["EWR", "JFK", "LGA"], n),
            "dest": rng.choice(["ATL", "ORD", "LAX", "BOS"], n),
            "dep_delay": rng.normal(10, 30, n),
            "_day": [start + dt.timedelta(days=int(i) % days) for i in range(n)],
        }
    )


def test_split_window_holds_out_the_last_evaluation_days(example_config: PipelineConfig) -> None:
    rows = tiny_rows(days=10)  # 2013-03-01 .. 2013-03-10, evaluation_days = 7
    train, evaluation = training.split_window(rows, example_config)
    assert sorted(set(evaluation["_day"])) == [dt.date(2013, 3, d) for d in range(4, 11)]
    assert sorted(set(train["_day"])) == [dt.date(2013, 3, d) for d in range(1, 4)]


def test_split_window_refuses_a_window_with_no_training_days(example_config: PipelineConfig) -> None:
    rows = tiny_rows(days=5)
    with pytest.raises(training.TrainingDataError, match="no training rows left"):
        training.split_window(rows, example_config)


def test_constant_feature_is_not_scaled_and_empty_feature_is_imputed_with_zero(
    example_config: PipelineConfig, caplog: pytest.LogCaptureFixture
) -> None:
    rows = tiny_rows()
    rows, label = training.labelled_rows(rows, example_config)
    with caplog.at_level(logging.WARNING, logger="mlops_tasks.training"):
        spec = training.fit_spec(rows, label, example_config)
    precip, gust = spec.numeric.index("precip"), spec.numeric.index("wind_gust")
    assert (spec.std[precip], spec.median[gust], spec.std[gust]) == (1.0, 0.0, 1.0)
    assert "'precip' is constant" in caplog.text and "'wind_gust' is empty" in caplog.text


def test_a_feature_whose_spread_has_no_float32_reciprocal_is_treated_as_constant(
    example_config: PipelineConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """A std of 1e-40 trained, then failed the export's parity check with an unexplained inf."""
    rows = tiny_rows()
    rows["distance"] = np.random.default_rng(1).normal(0, 1, len(rows)) * 1e-40
    rows, label = training.labelled_rows(rows, example_config)
    with caplog.at_level(logging.WARNING, logger="mlops_tasks.training"):
        spec = training.fit_spec(rows, label, example_config)
    assert "distance" in spec.constant and spec.std[spec.numeric.index("distance")] == 1.0
    assert "'distance' is constant" in caplog.text


def test_rows_without_a_day_are_refused_not_trained_on(example_config: PipelineConfig) -> None:
    """A row without its day passed as a training row (an evaluation day's too)."""
    rows = tiny_rows(days=10)
    rows.loc[[3, 7], "_day"] = None
    rows.loc[9, "_day"] = "n/a"
    with pytest.raises(
        training.TrainingDataError, match=r"'_day' of 3 of the 200 training rows holds no date"
    ):
        training.split_window(rows, example_config)


def test_a_feature_of_a_huge_spread_is_scaled_by_it_not_overflowed_away(
    example_config: PipelineConfig,
) -> None:
    rows = tiny_rows()
    rows["distance"] = np.random.default_rng(1).normal(0, 1, len(rows)) * 1e20
    rows, label = training.labelled_rows(rows, example_config)
    spec = training.fit_spec(rows, label, example_config)
    distance = spec.numeric.index("distance")
    assert 1e19 < spec.std[distance] < 1e21 and "distance" not in spec.constant


def test_encode_maps_unseen_and_missing_categories_to_the_oov_slot(example_config: PipelineConfig) -> None:
    rows = tiny_rows()
    spec = training.fit_spec(*training.labelled_rows(rows, example_config), example_config)
    probe = rows.head(3).copy()
    probe["carrier"] = ["ZZ", None, "UA"]
    probe["temp"] = [np.nan, 40.0, 40.0]
    numeric, codes = training.encode(probe, spec)
    carrier = spec.categorical.index("carrier")
    assert codes[:, carrier].tolist() == [0, 0, spec.vocab[carrier].index("UA") + 1]
    temp = spec.numeric.index("temp")
    assert numeric[0, temp] == pytest.approx((spec.median[temp] - spec.mean[temp]) / spec.std[temp], rel=1e-6)


def test_single_class_training_data_is_refused_with_a_clear_error(example_config: PipelineConfig) -> None:
    rows = tiny_rows()
    rows["dep_delay"] = 0.0  # nobody is late
    with pytest.raises(training.TrainingDataError, match="same class.*at least two classes"):
        training.train(example_config, rows, tracking_uri=UNREACHABLE, data_version="d", trigger="test")


def test_too_few_rows_are_refused_with_a_clear_error(example_config: PipelineConfig) -> None:
    with pytest.raises(training.TrainingDataError, match="only 20 labelled rows"):
        training.train(
            example_config, tiny_rows(n=20), tracking_uri=UNREACHABLE, data_version="d", trigger="t"
        )


def test_net_spec_round_trips_through_json(example_config: PipelineConfig) -> None:
    spec = training.fit_spec(*training.labelled_rows(tiny_rows(), example_config), example_config)
    assert training.NetSpec.from_json(spec.to_json()) == spec


def test_hide_categories_hides_the_configured_share_the_same_way_for_a_seed() -> None:
    import torch

    codes = torch.randint(1, 9, (20_000, 3))

    def hidden(seed: int, rate: float) -> torch.Tensor:
        return training.hide_categories(codes, rate, torch.Generator().manual_seed(seed))

    once, again = hidden(1, 0.05), hidden(1, 0.05)
    assert torch.equal(once, again) and not torch.equal(once, hidden(2, 0.05))
    share = (once == 0).float().mean(dim=0)  # each column on its own
    assert ((share > 0.045) & (share < 0.055)).all()
    assert torch.equal(once[once != 0], codes[once != 0])  # the rest untouched
    assert hidden(1, 0.0) is codes


def test_infinite_feature_values_are_fitted_as_missing(example_config: PipelineConfig) -> None:
    """One inf made the mean inf and every scaled row NaN: the model never trained."""
    rows, label = training.labelled_rows(tiny_rows(), example_config)
    with_nan, with_inf = rows.copy(), rows.copy()
    with_nan.loc[with_nan.index[[3, 7]], "temp"] = np.nan
    with_inf.loc[with_inf.index[[3, 7]], "temp"] = [np.inf, -np.inf]

    spec = training.fit_spec(with_inf, label, example_config)

    assert spec == training.fit_spec(with_nan, label, example_config)
    assert np.isfinite(spec.mean).all() and np.isfinite(spec.std).all()
    assert np.isfinite(training.encode(with_inf, spec)[0]).all()


def test_a_non_finite_loss_stops_training_with_a_clear_error(example_config: PipelineConfig) -> None:
    import dataclasses

    rows, label = training.labelled_rows(tiny_rows(), example_config)
    spec = training.fit_spec(rows, label, example_config)
    broken = dataclasses.replace(spec, mean=[np.inf] * len(spec.numeric))  # every scaled value NaN

    # Raised in the first batch, before anything is logged: no tracking client is needed.
    with pytest.raises(training.TrainingDataError, match=r"training loss is nan in epoch 1.*learning_rate"):
        training._fit(example_config, broken, (rows, label), (rows, label), client=None, run_id="r")


def test_a_constant_or_empty_feature_gets_zero_weights_so_its_value_does_not_move_scores(
    example_config: PipelineConfig,
) -> None:
    """Its random first-layer weights would get no gradient in training (its centred value is always
    0) and, when the feed varies again at serving, move the scores by chance."""
    rows = tiny_rows()  # precip is constant, wind_gust all NaN
    spec = training.fit_spec(*training.labelled_rows(rows, example_config), example_config)
    net = training.TabularNet(spec)
    precip, gust = spec.numeric.index("precip"), spec.numeric.index("wind_gust")

    assert spec.constant == ["wind_gust", "precip"]
    assert not net.mlp[0].weight[:, [precip, gust]].any() and net.mlp[0].weight[:, precip + 1].all()
    score, _ = training.predict(net, spec, rows)
    varied, _ = training.predict(net, spec, rows.assign(precip=np.arange(len(rows)) % 3 / 10, wind_gust=30.0))
    np.testing.assert_array_equal(score, varied)


def test_a_spec_of_an_older_run_without_constant_features_loads() -> None:
    import json

    spec = training.NetSpec.from_json(
        json.dumps(
            {
                "format": training.SPEC_FORMAT,
                "task": "binary",
                "numeric": ["x"],
                "categorical": [],
                "classes": ["0", "1"],
                "median": [0.0],
                "mean": [0.0],
                "std": [1.0],
                "vocab": [],
                "target_mean": 0.0,
                "target_std": 1.0,
                "embedding_dims": [],
                "hidden_layers": [4],
                "dropout": 0.0,
                "outputs": 1,
            }
        )
    )
    assert spec.constant == []


def test_validation_rows_of_a_class_the_training_split_lacks_are_left_out(
    example_config: PipelineConfig,
) -> None:
    """Such a class has no output of the model: CrossEntropyLoss failed on its index (IndexError)."""
    import dataclasses

    rows = tiny_rows()
    spec = training.fit_spec(*training.labelled_rows(rows, example_config), example_config)
    spec = dataclasses.replace(spec, task="multiclass", classes=["AA", "DL", "UA"], outputs=3)
    val_label = pd.Series(["AA", "OO", "UA", "OO"], dtype="string")
    val_rows = rows.head(4)

    kept_rows, kept_label = training._known_class_rows(val_rows, val_label, spec, "carrier")

    assert kept_label.tolist() == ["AA", "UA"] and kept_rows.index.tolist() == [0, 2]
    with pytest.raises(
        training.TrainingDataError,
        match=r"none of the 2 validation rows has a class.*'carrier'.*validation_fraction",
    ):
        training._known_class_rows(val_rows.head(2), pd.Series(["OO", "9E"], dtype="string"), spec, "carrier")


def test_training_stops_early_and_keeps_the_weights_of_its_best_epoch(
    example_config: PipelineConfig, tmp_path
) -> None:
    """Labels of pure noise: the validation loss bottoms out early, so with a patience of 2 training
    stops 2 epochs after its best one, and the saved weights are that epoch's, not the last one's
    (recomputed from the artifact, against the history logged to a real MLflow store)."""
    import torch
    from mlflow.tracking import MlflowClient

    from tests.conftest import tune

    cfg = tune(example_config, "model", {"epochs": 40, "early_stopping_patience": 2, "learning_rate": 0.01})
    rows, label = training.labelled_rows(tiny_rows(300), cfg)
    spec = training.fit_spec(rows, label, cfg)
    fit, val = (rows.iloc[:240], label.iloc[:240]), (rows.iloc[240:], label.iloc[240:])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id

    result = training._fit(cfg, spec, fit, val, client, run_id)

    assert result["epochs_run"] - result["best_epoch"] == 2 and result["epochs_run"] < 40
    history = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert sorted(history) == list(range(1, result["epochs_run"] + 1))
    assert min(history, key=history.get) == result["best_epoch"]
    net = training.TabularNet(spec)
    net.load_state_dict(torch.load(client.download_artifacts(run_id, "model/weights.pt", str(tmp_path))))
    net.eval()
    with torch.no_grad():
        x_num, x_cat = (torch.from_numpy(a) for a in training.encode(val[0], spec))
        saved = float(training._loss_fn(spec.task)(net(x_num, x_cat), training._targets(val[1], spec)))
    assert saved == pytest.approx(history[result["best_epoch"]], rel=1e-5)
    assert history[result["epochs_run"]] > saved


def test_early_stopping_holds_out_whole_days_not_rows_of_every_day() -> None:
    """Rows of one day share its weather and events: drawn at random from every day, the validation
    rows were days the model trained on, and the validation loss kept falling."""
    import numpy as np

    days = pd.Series(pd.date_range("2013-01-01", periods=40).repeat(100).date)
    rows = pd.DataFrame({"_day": days.astype(str), "x": range(4000)})

    held, fit = training.validation_split(rows, 0.1, np.random.default_rng(0))
    assert len(held) == 400 and rows["_day"].iloc[held].nunique() == 4  # four whole days
    assert set(rows["_day"].iloc[fit]).isdisjoint(rows["_day"].iloc[held])
    again, _ = training.validation_split(rows, 0.1, np.random.default_rng(0))
    assert again.tolist() == held.tolist()  # seeded
    other, _ = training.validation_split(rows, 0.1, np.random.default_rng(1))
    assert other.tolist() != held.tolist()  # drawn at random, not the latest days
    held, fit = training.validation_split(rows, 0.25, np.random.default_rng(1))
    assert rows["_day"].iloc[held].nunique() == 10 and len(held) + len(fit) == 4000


def test_a_window_too_short_to_hold_out_three_days_splits_rows_at_random() -> None:
    """One or two held-out days are too noisy a loss to stop on: short windows split by rows."""
    import numpy as np

    days = pd.Series(pd.date_range("2013-01-01", periods=20).repeat(50).date)
    rows = pd.DataFrame({"_day": days.astype(str), "x": range(1000)})

    held, fit = training.validation_split(rows, 0.1, np.random.default_rng(0))
    assert (len(held), len(fit)) == (100, 900)
    assert rows["_day"].iloc[held].nunique() > 3  # rows from many days, not two whole days
    assert np.array_equal(np.sort(np.concatenate([held, fit])), np.arange(1000))
