"""Type conversion of raw columns: bad values are flagged with a reason, never dropped."""

from __future__ import annotations

import pandas as pd

from mlops_tasks.ingestion import convert_column, rejected_copy_name


def raw(*values: object) -> pd.Series:
    return pd.Series(list(values), dtype=object)


def test_int_accepts_integral_text_and_flags_text_and_fractions():
    typed, bad, reason = convert_column(raw("1", " 2 ", "3.0", "abc", "1.5", "NA", ""), "int")
    assert typed.dtype == "Int64" and typed.tolist()[:3] == [1, 2, 3]
    assert bad.tolist() == [False, False, False, True, True, False, False] and reason == "is not an integer"
    assert typed.isna().tolist()[3:] == [True] * 4


def test_float_treats_nan_tokens_as_missing_and_inf_as_invalid():
    typed, bad, reason = convert_column(raw("1.5", "NaN", "inf", "-Infinity", "x"), "float")
    assert typed.dtype == "float64" and typed.iloc[0] == 1.5 and typed.iloc[1:].isna().all()
    assert bad.tolist() == [False, False, True, True, True] and reason == "is not a finite float"


def test_strings_keep_na_as_a_value_and_only_empty_is_missing():
    typed, bad, _ = convert_column(raw("NA", "", "EWR"), "category")
    assert (
        str(typed.dtype) == "string"
        and typed.tolist()[0] == "NA"
        and typed.isna().tolist() == [False, True, False]
    )
    assert not bad.any()


def test_bool_tokens_and_invalid_bool():
    typed, bad, reason = convert_column(raw("true", "N", "1", "maybe", None), "bool")
    assert typed.tolist()[:3] == [True, False, True] and bad.tolist() == [False, False, False, True, False]
    assert reason == "is not a boolean"


def test_timestamps_become_utc_and_naive_ones_are_taken_as_utc():
    typed, bad, _ = convert_column(
        raw("2013-01-01T10:00:00Z", "2013-01-01 05:00:00-05:00", "2013-01-01 10:00", "x"), "timestamp"
    )
    assert str(typed.dtype) == "datetime64[ns, UTC]"
    assert typed.iloc[0] == typed.iloc[1] == typed.iloc[2] and bad.tolist() == [False, False, False, True]


def test_parquet_typed_values_convert_without_text_parsing():
    typed, bad, _ = convert_column(pd.Series([1.0, 2.5, float("inf")]), "int")
    assert typed.tolist()[0] == 1 and bad.tolist() == [False, True, True]


def test_rejected_copy_name_is_key_safe():
    assert (
        rejected_copy_name("p/landing/date=2013-01-01/flights 1(copy).csv.gz")
        == "rejected_flights_1_copy_.csv.gz"
    )
