"""Landing scikit-learn's bundled data sets as days: names, synthetic days, CSV bytes."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlops_tasks.datasets import DatasetError, column_name, daily_csv, sklearn_frame, synthetic_days

START = dt.date(2024, 1, 1)


def test_column_names_become_identifiers() -> None:
    assert column_name("od280/od315_of_diluted_wines") == "od280_od315_of_diluted_wines"
    assert column_name("mean radius") == "mean_radius"


def test_wine_frame_has_a_row_key_features_and_class_names_as_target() -> None:
    frame = sklearn_frame("wine")

    assert list(frame.columns[:2]) == ["row_id", "alcohol"]
    assert frame["row_id"].is_unique
    assert sorted(frame["target"].unique()) == ["class_0", "class_1", "class_2"]


def test_unknown_data_set_is_refused_with_the_choices() -> None:
    with pytest.raises(DatasetError, match=r"'titanic' is not .* bundled .*'wine'"):
        sklearn_frame("titanic")


def test_synthetic_days_are_the_same_for_the_same_seed_and_differ_for_another() -> None:
    assert synthetic_days(50, START, 7, seed=1) == synthetic_days(50, START, 7, seed=1)
    assert synthetic_days(50, START, 7, seed=1) != synthetic_days(50, START, 7, seed=2)


def test_synthetic_days_cover_every_day_with_sizes_differing_by_at_most_one() -> None:
    sizes = pd.Series(synthetic_days(178, START, 30)).value_counts()

    assert sorted(sizes.index) == [START + dt.timedelta(days=i) for i in range(30)]
    assert sizes.max() - sizes.min() <= 1


def test_synthetic_days_refuse_zero_days() -> None:
    with pytest.raises(DatasetError, match="days must be at least 1"):
        synthetic_days(10, START, 0)


def test_daily_csv_sorts_each_day_by_key_and_is_byte_identical_on_repeat() -> None:
    frame = pd.DataFrame({"row_id": [3, 1, 2], "x": [0.5, 1.25, 2.0], "target": ["a", "b", "a"]})
    days = [START, START, START + dt.timedelta(days=1)]

    files = daily_csv(frame, days)

    assert files[START] == (b"row_id,x,target\n1,1.25,b\n3,0.5,a\n", 2)
    assert files == daily_csv(frame, days)
