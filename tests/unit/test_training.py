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
            "month": 3,
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
            "precip": rng.uniform(0, 0.3, n),
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
    month, gust = spec.numeric.index("month"), spec.numeric.index("wind_gust")
    assert (spec.std[month], spec.median[gust], spec.std[gust]) == (1.0, 0.0, 1.0)
    assert "'month' is constant" in caplog.text and "'wind_gust' is empty" in caplog.text


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
