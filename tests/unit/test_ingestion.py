"""Type conversion of raw columns: bad values are flagged with a reason, never dropped."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlops_tasks.ingestion import convert_column, rejected_copy_name


def raw(*values: object) -> pd.Series:
    return pd.Series(list(values), dtype=object)


def test_int_accepts_integral_text_and_flags_text_and_fractions():
    typed, bad, reason = convert_column(raw("1", " 2 ", "3.0", "abc", "1.5", "NA", ""), "int")
    assert typed.dtype == "Int64" and typed.tolist()[:3] == [1, 2, 3]
    assert (
        bad.tolist() == [False, False, False, True, True, False, False]
        and reason == "is not a 64-bit integer"
    )
    assert typed.isna().tolist()[3:] == [True] * 4


def test_float_treats_nan_tokens_as_missing_and_inf_as_invalid():
    typed, bad, reason = convert_column(raw("1.5", "NaN", "inf", "-Infinity", "x"), "float")
    assert typed.dtype == "float64" and typed.iloc[0] == 1.5 and typed.iloc[1:].isna().all()
    assert bad.tolist() == [False, False, True, True, True] and reason == "is not a finite float"


def test_strings_keep_na_as_a_value_and_only_empty_is_missing():
    typed, bad, _ = convert_column(raw("NA", "", "EWR", "   ", " JFK\t"), "category")
    assert str(typed.dtype) == "string" and typed.tolist()[0] == "NA"
    assert typed.isna().tolist() == [False, True, False, True, False]
    assert typed.tolist()[4] == "JFK"  # padded, it would be a category of its own and join nothing
    assert not bad.any()
    parquet_typed, _, _ = convert_column(pd.Series(["LGA ", " "], dtype="string[pyarrow]"), "string")
    assert parquet_typed.tolist()[0] == "LGA" and parquet_typed.isna().tolist() == [False, True]


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


def test_naive_timestamps_are_times_in_the_pipelines_zone_and_a_dst_gap_or_repeat_is_flagged():
    """Weather exported in New York local time joined the flights of another hour (5 hours off)."""
    from zoneinfo import ZoneInfo

    new_york = ZoneInfo("America/New_York")
    text = raw("2013-01-01 05:00", "2013-01-01T10:00:00Z", "2013-11-03 01:30", "2013-03-10 02:30", "x")
    typed, bad, reason = convert_column(text, "timestamp", new_york)
    assert typed.iloc[0] == typed.iloc[1] == pd.Timestamp("2013-01-01T10:00:00Z")
    assert bad.tolist() == [False, False, True, True, True]  # 01:30 twice that night, 02:30 never
    assert reason.endswith("(a time in America/New_York that exists once)")
    parquet = pd.Series(pd.to_datetime(["2013-01-01 05:00"]))  # a naive timestamp column
    assert convert_column(parquet, "timestamp", new_york)[0].iloc[0] == pd.Timestamp("2013-01-01T10:00:00Z")


@pytest.mark.parametrize("order", [1, -1], ids=["aware first", "naive first"])
def test_hour_only_offsets_are_aware_and_do_not_shift_naive_values_in_the_same_column(order: int):
    # PostgreSQL writes "+05"; a date alone ends in "-02" but is naive; RFC 3339 allows a lower-case z.
    texts = [
        "2013-01-01 05:00:00+05",
        "2013-01-01 06:00:00",
        "2013-01-02",
        "2013-01-01t07:30:00-0130",
        "2013-01-01T10:00:00z",
    ]
    expected = [
        "2013-01-01T00:00Z",
        "2013-01-01T06:00Z",
        "2013-01-02T00:00Z",
        "2013-01-01T09:00Z",
        "2013-01-01T10:00Z",
    ]

    typed, bad, _ = convert_column(raw(*texts[::order]), "timestamp")

    assert typed.tolist() == [pd.Timestamp(e) for e in expected[::order]] and not bad.any()


@pytest.mark.parametrize(
    "zoned",
    [
        "2013-01-01T05:00:00-05:00[America/New_York]",
        "2013-01-01T05:00:00-05:00 EST",
        "2013-01-01T05:00:00-5:00",
    ],
    ids=["java zone id", "zone name after the offset", "one-digit offset hour"],
)
def test_unusual_zone_text_never_shifts_the_naive_values_after_it(zoned: str):
    # pandas 2.3 gives the naive values after such a value its offset: 10:00 became 15:00.
    typed, _, _ = convert_column(raw(zoned, "2013-01-01 10:00", "2013-01-01T11:00:00"), "timestamp")

    assert typed.tolist()[1:] == [pd.Timestamp("2013-01-01T10:00Z"), pd.Timestamp("2013-01-01T11:00Z")]


def test_parquet_typed_values_convert_without_text_parsing():
    typed, bad, _ = convert_column(pd.Series([1.0, 2.5, float("inf")]), "int")
    assert typed.tolist()[0] == 1 and bad.tolist() == [False, True, True]


def test_int_text_is_parsed_exactly_beyond_float_precision():
    typed, bad, _ = convert_column(
        raw("9007199254740993", "9007199254740992", "9223372036854775807", "9007199254740993.0", "1e3"), "int"
    )
    assert typed.tolist() == [9007199254740993, 9007199254740992, 2**63 - 1, 9007199254740993, 1000]
    assert not bad.any()


def test_int_text_outside_int64_is_flagged_not_rounded():
    typed, bad, reason = convert_column(
        raw("9223372036854775808", "-9223372036854775809", "1e19", "-9223372036854775808"), "int"
    )
    assert bad.tolist() == [True, True, True, False] and reason == "is not a 64-bit integer"
    assert typed.isna().tolist() == [True, True, True, False] and typed.iloc[3] == -(2**63)


def test_parquet_integers_pass_through_without_float():
    typed, bad, _ = convert_column(pd.Series([9007199254740993, None], dtype="Int64"), "int")
    assert typed.iloc[0] == 9007199254740993 and typed.isna().tolist() == [False, True] and not bad.any()
    typed, bad, _ = convert_column(pd.Series([2**64 - 1, 9007199254740993], dtype="UInt64"), "int")
    assert bad.tolist() == [True, False] and typed.isna().tolist() == [True, False]
    assert typed.iloc[1] == 9007199254740993 and typed.dtype == "Int64"


def test_typed_integers_one_and_zero_are_booleans_and_other_numbers_are_flagged():
    typed, bad, reason = convert_column(pd.Series([1, 0, 2]), "bool")
    assert typed.tolist()[:2] == [True, False] and bad.tolist() == [False, False, True]
    for series in (pd.Series([1.5, float("nan")]), pd.Series(pd.to_datetime(["2013-01-01", None]))):
        typed, bad, reason = convert_column(series, "bool")
        assert typed.isna().all() and bad.tolist() == [True, False] and reason == "is not a boolean"


def test_a_0_1_column_with_a_null_as_pandas_writes_it_is_boolean():
    """pandas keeps such a column as floats: 1.0 in parquet, "1.0" in its CSV. Every row was
    flagged "is not a boolean" and quarantined."""
    for series in (pd.Series([1.0, 0.0, float("nan")]), raw("1.0", "0.0", None, "2.0")):
        typed, bad, _ = convert_column(series, "bool")
        assert typed.tolist()[:3] == [True, False, pd.NA] and not bad[:3].any()
    assert bad.tolist()[3]  # "2.0" is a number, not a boolean


def test_whole_floats_become_integer_text_in_text_columns():
    """An int column with a null arrives as floats: its category text must be "101", as the same
    value reads from CSV, or a join on it matches nothing and a duplicate key goes unseen."""
    for kind in ("category", "string"):
        typed, bad, _ = convert_column(pd.Series([101.0, float("nan"), 2.5]), kind)
        assert typed.tolist() == ["101", pd.NA, "2.5"] and not bad.any()


def test_text_timestamps_past_what_nanoseconds_hold_are_flagged_with_the_range():
    """9999-12-31 ("no end") is valid ISO 8601: the reason must not say it is not."""
    typed, bad, reason = convert_column(raw("2013-01-01T10:00:00Z", "9999-12-31T00:00:00Z", "x"), "timestamp")
    assert bad.tolist() == [False, True, True] and typed.isna().tolist() == [False, True, True]
    assert reason == "is not an ISO 8601 timestamp within 1677-09-21..2262-04-11"


def test_numbers_in_a_timestamp_column_are_flagged_not_read_as_nanoseconds():
    typed, bad, reason = convert_column(pd.Series([1357034400.0, None]), "timestamp")
    assert typed.isna().all() and bad.tolist() == [True, False]
    assert reason == "is a number, not a timestamp (its epoch unit is unknown)"
    typed, bad, reason = convert_column(pd.Series([True, None], dtype="boolean"), "timestamp")
    assert typed.isna().all() and bad.tolist() == [True, False] and reason == "is not a timestamp"


def test_typed_timestamps_of_any_unit_become_utc_and_out_of_range_ones_are_flagged():
    naive = pd.Series([dt.datetime(2013, 1, 1, 10), dt.datetime(3000, 1, 1), None], dtype="datetime64[us]")
    typed, bad, reason = convert_column(naive, "timestamp")
    assert str(typed.dtype) == "datetime64[ns, UTC]" and typed.iloc[0] == pd.Timestamp("2013-01-01T10:00Z")
    assert bad.tolist() == [False, True, False] and "outside the timestamp range" in reason
    aware = pd.Series(pd.to_datetime(["2013-01-01 05:00"]).tz_localize("America/New_York"))
    assert convert_column(aware, "timestamp")[0].iloc[0] == pd.Timestamp("2013-01-01T10:00Z")


def test_bytes_that_are_not_utf8_are_flagged_in_text_columns():
    typed, bad, reason = convert_column(raw(b"AA", b"\xff", None), "category")
    assert typed.tolist()[0] == "AA" and typed.isna().tolist() == [False, True, True]
    assert bad.tolist() == [False, True, False] and reason == "is not valid UTF-8 text"
    _, bad, _ = convert_column(raw(b"12", b"\xff"), "int")
    assert bad.tolist() == [False, True]


def test_rejected_copy_name_is_key_safe():
    assert (
        rejected_copy_name("p/landing/date=2013-01-01/flights 1(copy).csv.gz")
        == "rejected_flights_1_copy_.csv.gz"
    )


def test_float_text_reads_back_every_float_exactly():
    """17 significant digits (what repr writes) name one float: pandas' fast parser is off by a bit
    for about one value in seven of these, the data stage is not."""
    import random

    rng = random.Random(7)
    floats = [rng.uniform(-1e3, 1e3) for _ in range(2_000)] + [0.30000000000000004, 2.2250738585072014e-308]
    typed, bad, _ = convert_column(raw(*map(repr, floats), "-0", "+.5"), "float")
    assert not bad.any()
    assert typed.tolist()[: len(floats)] == floats and typed.tolist()[-2:] == [0.0, 0.5]


def test_int_text_too_long_for_int_or_decimal_is_a_bad_value_not_an_error():
    """int() refuses more than 4300 digits and Decimal() an exponent beyond 10**18: such a value is
    no int64, flagged like any other, instead of failing the whole day."""
    typed, bad, reason = convert_column(
        raw(
            "9" * 5000,
            "-" + "9" * 5000,
            "0" * 5000 + "7",
            "1e99999999999999999999",
            "1e-99999999999999999999",
            "0.0e99999999999999999999",
            "1" + "0" * 5000 + "e-5000",
        ),
        "int",
    )
    assert (
        bad.tolist() == [True, True, False, True, True, False, False] and reason == "is not a 64-bit integer"
    )
    assert (
        typed.tolist()[2] == 7 and typed.tolist()[5:] == [0, 1] and typed.isna().tolist()[:2] == [True, True]
    )
