"""Ingest + validate over the real S3 endpoint: every kind of bad input lands in quarantine with a
clear reason, good rows are never lost, and reruns are byte-identical."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlops_tasks import example, inference, ingestion, validation
from mlops_tasks.config import PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.ingestion import ingest_day
from mlops_tasks.storage import ObjectStore, partition_prefix
from mlops_tasks.validation import StagedDataMissingError, ValidationGateError, validate_day

DAY = dt.date(2013, 1, 1)
HEADER = "id,delay,carrier,origin,time_hour"
GOOD = [
    "1,-3,AA,EWR,2013-01-01T10:00:00Z",
    "2,0,UA,JFK,2013-01-01T10:00:00Z",
    "3,25,AA,EWR,2013-01-01T11:00:00Z",
    "4,7.5,UA,JFK,2013-01-01T11:00:00Z",
]
WEATHER = "origin,time_hour,temp\nEWR,2013-01-01T10:00:00Z,39.0\nJFK,2013-01-01T10:00:00Z,38.5\n"


@pytest.fixture
def cfg() -> PipelineConfig:
    """A small pipeline shaped like the example: typed columns, a key, a weather join, extras."""
    return PipelineConfig.model_validate(
        {
            "name": "tiny",
            "start_date": "2013-01-01",
            "data": {
                "source": {"file_pattern": "flights*"},
                "key": ["id"],
                "columns": [
                    {"name": "id", "type": "int", "nullable": False, "min": 1, "max": 1000},
                    {"name": "delay", "type": "float", "nullable": False, "min": -120, "max": 1440},
                    {"name": "carrier", "type": "category", "nullable": False, "allowed": ["AA", "UA"]},
                    {"name": "origin", "type": "category", "nullable": False},
                    {"name": "time_hour", "type": "timestamp", "nullable": False},
                ],
                "joins": [
                    {
                        "name": "weather",
                        "file_pattern": "weather*",
                        "keys": ["origin", "time_hour"],
                        "columns": [
                            {"name": "origin", "type": "category"},
                            {"name": "time_hour", "type": "timestamp"},
                            {"name": "temp", "type": "float", "min": -30, "max": 120},
                        ],
                    }
                ],
            },
            "validation": {
                "max_bad_row_fraction": 0.5,
                "min_rows": 1,
                "max_rows": 20,
                "expectations": [
                    {
                        "type": "expect_column_values_to_match_regex",
                        "kwargs": {"column": "origin", "regex": "^[A-Z]{3}$"},
                    },
                    {
                        "type": "expect_column_value_lengths_to_be_between",
                        "kwargs": {"column": "origin", "min_value": 3, "max_value": 3},
                    },
                ],
            },
            "target": {"task": "binary", "column": "delay", "positive_when": {"greater_than": 15}},
            "features": {"numeric": ["temp"], "categorical": ["carrier", "origin"]},
        }
    )


def land(store: ObjectStore, cfg: PipelineConfig, name: str, data: bytes | str, day: dt.date = DAY) -> str:
    key = partition_prefix(cfg.prefix, "landing", day) + name
    store.put_bytes(key, data.encode() if isinstance(data, str) else data)
    return key


def csv(*lines: str, header: str = HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


def flights_parquet(**columns: object) -> bytes:
    """A two-row parquet file of the main table (ids 5, 6); ``columns`` replace the defaults."""
    table = {
        "id": [5, 6],
        "delay": [1.0, 2.0],
        "carrier": ["AA", "UA"],
        "origin": ["EWR", "JFK"],
        "time_hour": ["2013-01-01T10:00:00Z"] * 2,
    }
    buffer = io.BytesIO()
    pq.write_table(pa.table({**table, **columns}), buffer)
    return buffer.getvalue()


def variant(cfg: PipelineConfig, name: str | None = None, **columns: dict) -> PipelineConfig:
    """``cfg`` under another pipeline name (its own prefix) and/or with some main columns changed."""
    data = cfg.model_dump()
    data["name"] = name or data["name"]
    for column in data["data"]["columns"]:
        column.update(columns.get(column["name"], {}))
    return PipelineConfig.model_validate(data)


def read_partition(store: ObjectStore, cfg: PipelineConfig, area: str, prefix: str = "") -> pd.DataFrame:
    manifest = store.read_manifest(partition_prefix(cfg.prefix, area, DAY))
    keys = [p["key"] for p in manifest["parts"] if p["key"].rsplit("/", 1)[-1].startswith(prefix)]
    return pd.concat([pd.read_parquet(io.BytesIO(store.get_bytes(k))) for k in keys], ignore_index=True)


def curated(store: ObjectStore, cfg: PipelineConfig) -> pd.DataFrame:
    return read_partition(store, cfg, "curated")


def quarantined(store: ObjectStore, cfg: PipelineConfig) -> pd.DataFrame:
    return read_partition(store, cfg, "quarantine", "rows")


def malformed_lines(store: ObjectStore, cfg: PipelineConfig) -> pd.DataFrame:
    manifest = store.read_manifest(partition_prefix(cfg.prefix, "quarantine", DAY))
    [part] = [p["key"] for p in manifest["parts"] if "malformed_lines" in p["key"]]
    return pd.read_json(io.BytesIO(store.get_bytes(part)), lines=True)


def report(store: ObjectStore, result: dict) -> dict:
    return store.get_json(store.key_of(result["report_json_uri"]))


def run(store: ObjectStore, cfg: PipelineConfig) -> tuple[dict, dict]:
    return ingest_day(store, cfg, DAY), validate_day(store, cfg, DAY)


# -- rows ---------------------------------------------------------------------------------------


def test_malformed_csv_lines_are_quarantined_verbatim_with_their_line_number(store, cfg):
    land(store, cfg, "flights.csv", csv(GOOD[0], "2,0,UA", GOOD[2], GOOD[3]))
    ingested, validated = run(store, cfg)
    assert ingested["malformed_lines"] == 1
    line = malformed_lines(store, cfg).iloc[0]
    assert (line["line"], line["raw"], line["reason"]) == (3, "2,0,UA", "3 fields, the header has 5")
    assert curated(store, cfg)["id"].tolist() == [1, 3, 4]
    assert validated["passed"] and report(store, validated)["malformed_lines"] == 1


def test_lines_of_only_spaces_or_tabs_are_blank_lines_not_malformed_ones(store, cfg):
    """An editor's trailing whitespace line holds no record: counted as a malformed line it would
    count against the gate, while the rejected-file count already reads it as blank."""
    land(store, cfg, "flights.csv", csv(GOOD[0], "   ", GOOD[1], "\t", " , ,, ,", ",,", GOOD[2]) + "  \n")
    ingested, _ = run(store, cfg)
    # ",," is a record of empty fields, too few of them: malformed, as before
    assert ingested["malformed_lines"] == 1 and malformed_lines(store, cfg)["line"].tolist() == [7]
    # a line of the header's field count is a row of empty values, quarantined by the rules
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3] and quarantined(store, cfg)[
        "_source_line"
    ].tolist() == [6]


def test_a_stray_quote_costs_its_own_line_and_the_lines_after_it_still_ingest(store, cfg):
    rows = [
        GOOD[0],
        '2,0,UA,JFK,"2013-01-01T10:00:00Z',  # its quote runs into a quoted field of the next line
        '3,25,"AA",EWR,2013-01-01T11:00:00Z',
        GOOD[3],
        '5,1,AA,EWR,"2013-01-01T10:00:00Z',  # its quote is never closed
        "6,1,AA,EWR,2013-01-01T10:00:00Z",
        "7,1,UA,JFK,2013-01-01T11:00:00Z",
    ]
    land(store, cfg, "flights.csv", csv(*rows))

    ingested, validated = run(store, cfg)

    lines = malformed_lines(store, cfg)
    assert lines["line"].tolist() == [3, 6] and lines["raw"].tolist() == [rows[1], rows[4]]
    assert all("parsing resumed on the next line" in reason for reason in lines["reason"])
    got = curated(store, cfg)
    assert got["id"].tolist() == [1, 3, 4, 6, 7] and got["_source_line"].tolist() == [2, 4, 5, 7, 8]
    assert ingested["malformed_lines"] == 2 and validated["passed"]


def test_a_stray_quote_pair_costs_the_opening_line_and_splices_no_rows(store, cfg):
    """A quote opened in one line's field and closed in a field lines later: read as one quoted
    field, the lines between vanished into a column the config drops, and the record took the
    closing line's values (a flight with another flight's origin and time)."""
    rows = [g + ",n" for g in GOOD] + ["5,1,AA,EWR,2013-01-01T10:00:00Z,n"]
    rows[1] = GOOD[1] + ',"N14228'  # opened, in the undeclared note column
    rows[4] = '5,1,AA,EWR,2013-01-01T10:00:00Z,N24211"'  # closed, three lines later
    land(store, cfg, "flights.csv", csv(*rows, header=HEADER + ",note"))

    ingested, validated = run(store, cfg)

    [line] = malformed_lines(store, cfg).to_dict("records")
    assert (line["line"], line["raw"]) == (3, rows[1])
    assert line["reason"].startswith("a quote opened on this line is closed 3 line(s) later")
    got = curated(store, cfg)
    assert got["id"].tolist() == [1, 3, 4, 5] and got["_source_line"].tolist() == [2, 4, 5, 6]
    assert ingested["malformed_lines"] == 1 and validated["passed"]


def test_a_carriage_return_inside_a_line_costs_that_line_and_shifts_no_line_numbers(store, cfg):
    """Lines are numbered as editors and `grep -n` number them (by LF): a bare CR used to split its
    line into two malformed fragments and move every later row's line number by one."""
    rows = [GOOD[0], GOOD[1] + "\rpasted", GOOD[2], GOOD[3]]
    land(store, cfg, "flights.csv", csv(*rows).replace("\n", "\r\n"))

    ingested, _ = run(store, cfg)

    [line] = malformed_lines(store, cfg).to_dict("records")
    assert (line["line"], line["raw"]) == (3, rows[1])
    assert "a carriage return (CR) inside an unquoted field" in line["reason"]
    got = curated(store, cfg)
    assert got["id"].tolist() == [1, 3, 4] and got["_source_line"].tolist() == [2, 4, 5]
    assert ingested["malformed_lines"] == 1


def test_a_file_whose_lines_end_in_a_bare_carriage_return_ingests(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD).replace("\n", "\r"))

    ingested, _ = run(store, cfg)

    assert ingested["malformed_lines"] == 0
    assert curated(store, cfg)["_source_line"].tolist() == [2, 3, 4, 5]


def test_quoted_fields_may_hold_delimiters_and_newlines(store, cfg):
    rows = [g + ',""' for g in GOOD]
    rows[1] = GOOD[1] + ',"a note, on\ntwo lines"'
    land(store, cfg, "flights.csv", csv(*rows, header=HEADER + ",note"))

    ingested, _ = run(store, cfg)

    got = curated(store, cfg)
    assert got["id"].tolist() == [1, 2, 3, 4] and got["_source_line"].tolist() == [2, 3, 5, 6]
    assert ingested["malformed_lines"] == 0


def test_a_field_longer_than_the_csv_modules_default_limit_is_one_field_not_bad_lines(store, cfg):
    rows = [g + ',""' for g in GOOD]
    rows[1] = GOOD[1] + ',"' + "a long note\n" * 20_000 + '"'  # 240 kB over 20,001 lines
    land(store, cfg, "flights.csv", csv(*rows, header=HEADER + ",note"))

    ingested, validated = run(store, cfg)

    assert ingested["malformed_lines"] == 0 and validated["good_rows"] == 4
    assert curated(store, cfg)["_source_line"].tolist() == [2, 3, 20_004, 20_005]


def test_a_byte_order_mark_before_a_quoted_header_is_not_part_of_the_first_name(store, cfg):
    header = ",".join(f'"{name}"' for name in HEADER.split(","))
    land(store, cfg, "flights.csv", ("\ufeff" + csv(*GOOD, header=header)).encode())

    ingested, _ = run(store, cfg)

    assert ingested["rejected_files"] == [] and curated(store, cfg)["id"].tolist() == [1, 2, 3, 4]


def test_curated_parquet_stores_the_columns_declared_not_nullable_as_required(store, cfg):
    land(store, cfg, "flights.csv", csv(GOOD[0], "2,,UA,JFK,2013-01-01T10:00:00Z", *GOOD[2:]))
    run(store, cfg)
    [part] = store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY))["parts"]

    schema = pq.read_schema(io.BytesIO(store.get_bytes(part["key"])))

    required = [f.name for f in schema if not f.nullable]
    assert required == ["id", "delay", "carrier", "origin", "time_hour"]  # the missing delay was quarantined
    assert schema.field("temp").nullable


def test_curated_parquet_is_cut_into_row_groups_that_inference_maps_whole(store, cfg, monkeypatch):
    # the real size is 64Ki rows; two rows per group show the cut on a four-row day
    monkeypatch.setattr(validation, "CURATED_ROW_GROUP_ROWS", 2)
    land(store, cfg, "flights.csv", csv(*GOOD))
    run(store, cfg)
    [part] = store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY))["parts"]

    metadata = pq.read_metadata(io.BytesIO(store.get_bytes(part["key"])))
    units = inference.plan_parts(
        store, cfg.model_copy(update={"inference": cfg.inference.model_copy(update={"part_rows": 2})}), DAY
    )

    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [2, 2]
    assert [(u["row_groups"], u["row_offset"], u["rows"]) for u in units] == [([0], 0, 2), ([1], 0, 2)]


def test_a_big_day_is_curated_as_several_files_in_row_order(store, cfg, monkeypatch):
    # the real size is 2M rows; three rows per file show the cut on a four-row day
    monkeypatch.setattr(validation, "CURATED_FILE_ROWS", 3)
    land(store, cfg, "flights.csv", csv(*GOOD))
    _, validated = run(store, cfg)
    manifest = store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY))

    assert sorted(p["rows"] for p in manifest["parts"]) == [1, 3] and manifest["rows"] == 4
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4]
    assert validated["passed"]


def test_wrong_type_keeps_the_row_and_quarantines_it_with_the_reason(store, cfg):
    land(store, cfg, "flights.csv", csv(GOOD[0], "2,abc,UA,JFK,2013-01-01T10:00:00Z", *GOOD[2:]))
    _, validated = run(store, cfg)
    bad = quarantined(store, cfg)
    assert bad["id"].tolist() == [2]
    assert "ingest: delay: 'abc' is not a finite float" in list(bad["_reasons"][0])
    assert curated(store, cfg)["id"].tolist() == [1, 3, 4] and validated["bad_rows"] == 1


def test_integer_text_too_long_to_parse_is_a_bad_value_and_the_day_still_ingests(store, cfg):
    huge = ["9" * 5000, "1e99999999999999999999"]  # beyond int()'s 4300 digits / Decimal's exponent
    land(store, cfg, "flights.csv", csv(*GOOD, *(f"{v},1,AA,EWR,2013-01-01T10:00:00Z" for v in huge)))

    ingested, validated = run(store, cfg)

    bad = quarantined(store, cfg)
    assert ingested["rows"] == 6 and bad["_source_line"].tolist() == [6, 7] and bad["id"].isna().all()
    assert f"ingest: id: '{'9' * 36}...' is not a 64-bit integer" in list(bad["_reasons"][0])
    assert "ingest: id: '1e99999999999999999999' is not a 64-bit integer" in list(bad["_reasons"][1])
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4] and validated["bad_rows"] == 2


def test_inf_is_an_invalid_float_and_nan_a_missing_value(store, cfg):
    land(
        store,
        cfg,
        "flights.csv",
        csv("1,inf,AA,EWR,2013-01-01T10:00:00Z", "2,NaN,UA,JFK,2013-01-01T10:00:00Z", *GOOD[2:]),
    )
    run(store, cfg)
    reasons = dict(zip(*(quarantined(store, cfg)[c] for c in ("id", "_reasons")), strict=True))
    assert "ingest: delay: 'inf' is not a finite float" in list(reasons[1])
    assert list(reasons[2]) == ["delay not null"]
    assert curated(store, cfg)["id"].tolist() == [3, 4]


def test_out_of_range_value_is_quarantined(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD[:3], "4,5000,UA,JFK,2013-01-01T11:00:00Z"))
    _, validated = run(store, cfg)
    assert list(quarantined(store, cfg)["_reasons"][0]) == ["delay between -120.0 and 1440.0"]
    assert "delay between -120.0 and 1440.0" in validated["failed_rules"]
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3]


def test_unknown_category_is_quarantined(store, cfg):
    land(store, cfg, "flights.csv", csv("1,-3,ZZ,EWR,2013-01-01T10:00:00Z", *GOOD[1:]))
    _, validated = run(store, cfg)
    assert list(quarantined(store, cfg)["_reasons"][0]) == ["carrier in allowed values"]
    rule = next(r for r in report(store, validated)["rules"] if r["rule"] == "carrier in allowed values")
    assert rule["examples"] == ["ZZ"]


def test_duplicate_keys_quarantine_every_copy(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD, "4,8,UA,JFK,2013-01-01T11:00:00Z"))
    run(store, cfg)
    bad = quarantined(store, cfg)
    assert bad["id"].tolist() == [4, 4] and all(list(r) == ["key id unique"] for r in bad["_reasons"])
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3]


def test_identical_copies_of_rows_are_kept_once_and_disagreeing_ones_quarantined(store, cfg):
    """An overlapping extract sent again: its copies agree, so they are one row (all of them were
    quarantined, and the rows lost); copies that disagree still go to quarantine."""
    land(store, cfg, "flights_a.csv", csv(*GOOD[:3]))
    land(store, cfg, "flights_b.csv", csv(*GOOD[1:], "3,99,AA,EWR,2013-01-01T11:00:00Z"))

    ingested, validated = run(store, cfg)

    assert curated(store, cfg)["id"].tolist() == [1, 2, 4]
    assert quarantined(store, cfg)["id"].tolist() == [3, 3]  # 25 or 99 minutes late: unknown
    assert any(
        w.startswith("2 row(s) repeating another row's key ['id'] and every value were kept once")
        for w in ingested["warnings"]
    )
    assert validated["passed"]


def test_gx_counts_equal_the_row_split_for_every_row_rule(store, cfg):
    rows = [
        "1,abc,AA,EWR,2013-01-01T10:00:00Z",
        "2,5000,ZZ,JFK,2013-01-01T10:00:00Z",
        "2,1,AA,JFKX,2013-01-01T11:00:00Z",
        "3,,UA,ewr,2013-01-01T11:00:00Z",
        *[f"{i},1,AA,EWR,2013-01-01T10:00:00Z" for i in range(10, 18)],
    ]
    land(store, cfg, "flights.csv", csv(*rows))
    _, validated = run(store, cfg)
    row_rules = [r for r in report(store, validated)["rules"] if r["level"] == "row"]
    assert len([r for r in row_rules if r["rows"]]) == 7  # ingest, not null, between, set, key, regex, length
    assert all(r["gx_unexpected_count"] == r["rows"] for r in row_rules)


# -- whole files --------------------------------------------------------------------------------


def assert_rejected(store, cfg, ingested: dict, key: str, data: bytes, *phrases: str) -> None:
    [rejected] = ingested["rejected_files"]
    assert rejected["key"] == key and all(p in rejected["reason"] for p in phrases)
    manifest = store.read_manifest(partition_prefix(cfg.prefix, "quarantine", DAY))
    [copy] = [r["copy"] for r in manifest["rejected_files"]]
    assert store.get_bytes(copy) == data
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4]


def test_a_header_that_differs_from_a_declared_column_in_case_rejects_its_file(store, cfg):
    """Not dropped as an extra column while the declared one fills with nulls (temp is optional)."""
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    data = WEATHER.replace("temp", "Temp ").encode()
    key = land(store, cfg, "weather.csv", data)
    ingested, _ = run(store, cfg)
    [rejected] = ingested["rejected_files"]
    assert rejected["key"] == key
    assert (
        "has the column 'Temp' where the config declares 'temp': column names are case-sensitive"
        in (rejected["reason"])
    )


def test_missing_required_column_rejects_the_file_and_others_still_ingest(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    data = csv("9,1,AA,EWR", header="id,delay,carrier,origin").encode()
    key = land(store, cfg, "flights_b.csv", data)
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, data, key, "required column 'time_hour'")


def test_a_declared_column_repeated_in_a_file_rejects_it_naming_the_column(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    data = csv("9,1,AA,EWR,2013-01-01T10:00:00Z,2", header=HEADER + ",delay").encode()
    key = land(store, cfg, "flights_b.csv", data)
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, data, "has the column 'delay' more than once in its header")

    table = pa.Table.from_arrays(
        [
            pa.array([7]),
            pa.array([1.0]),
            pa.array(["AA"]),
            pa.array(["EWR"]),
            pa.array(["x"]),
            pa.array(["y"]),
        ],
        names=["id", "delay", "carrier", "origin", "time_hour", "time_hour"],
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.delete([key])
    parquet_key = land(store, cfg, "flights_b.parquet", buffer.getvalue())
    ingested, _ = run(store, cfg)
    assert_rejected(
        store, cfg, ingested, parquet_key, buffer.getvalue(), "has the column 'time_hour' more than once"
    )


def test_repeated_columns_the_config_does_not_declare_are_dropped_like_other_extra_columns(store, cfg):
    """Spreadsheet exports end lines with empty columns; a repeated note column is no ambiguity
    either: neither is read, so the file is not rejected (its rows were lost before)."""
    land(store, cfg, "flights.csv", csv(*(g + ",," for g in GOOD), header=HEADER + ",,"))
    weather = "\n".join(line + ",a,b" for line in WEATHER.splitlines()).replace("temp,a,b", "temp,note,note")
    land(store, cfg, "weather.csv", weather + "\n")
    ingested, validated = run(store, cfg)
    assert ingested["rejected_files"] == [] and validated["good_rows"] == 4
    assert any("flights.csv: extra columns [''] were dropped" in w for w in ingested["warnings"])
    assert any("weather.csv: extra columns ['note'] were dropped" in w for w in ingested["warnings"])


def test_extra_column_is_dropped_with_a_warning(store, cfg):
    land(store, cfg, "flights.csv", csv(*(g + ",x" for g in GOOD), header=HEADER + ",tailnum"))
    ingested, validated = run(store, cfg)
    assert any("extra columns ['tailnum'] were dropped" in w for w in ingested["warnings"])
    assert "tailnum" not in curated(store, cfg).columns and validated["bad_rows"] == 0


def test_empty_file_is_rejected(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    key = land(store, cfg, "flights_b.csv", "\n \n")
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, b"\n \n", "is empty")


def test_zero_byte_object_is_rejected(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    key = land(store, cfg, "flights_b.csv", b"")
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, b"", "zero-byte object")


def test_wrong_file_extension_is_rejected(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    key = land(store, cfg, "flights_b.xlsx", b"PK\x03\x04")
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, b"PK\x03\x04", "unsupported file extension")


def test_csv_whose_first_line_is_blank_is_rejected(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    data = ("\n" + csv("9,1,AA,EWR,2013-01-01T10:00:00Z")).encode()
    key = land(store, cfg, "flights_b.csv", data)
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, data, key, "no column names on line 1")


def test_parquet_text_column_with_non_utf8_bytes_is_rejected_naming_the_column(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    data = flights_parquet(carrier=pa.array([b"AA", b"\xff\xfe"], pa.binary()))
    key = land(store, cfg, "flights_b.parquet", data)
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, data, key, "column 'carrier'", "not valid UTF-8", "row 2")


def test_parquet_string_column_with_non_utf8_bytes_is_rejected_naming_the_column(store, cfg):
    """A STRING (not binary) column whose writer stored bytes that are no UTF-8: pyarrow reads it,
    and would fail only converting it, with a message naming neither file nor column."""
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    data = flights_parquet(carrier=pa.array([b"AA", b"U\xffA"], pa.binary()).view(pa.string()))
    key = land(store, cfg, "flights_b.parquet", data)
    ingested, _ = run(store, cfg)
    assert_rejected(store, cfg, ingested, key, data, key, "column 'carrier'", "not valid UTF-8", "row 2")


def test_a_value_that_is_not_utf8_is_quarantined_naming_its_line_and_column(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    data = csv("9,1,AA,EWR,2013-01-01T10:00:00Z").encode() + "10,1,AA,Zürich,2013-01-01T10:00:00Z\n".encode(
        "latin-1"
    )
    key = land(store, cfg, "flights_b.csv", data)
    ingested, _ = run(store, cfg)
    assert ingested["rejected_files"] == []
    [row] = quarantined(store, cfg).to_dict("records")
    assert (row["_source_file"], row["_source_line"]) == (key, 3)
    assert row["_ingest_error"] == "origin: b'Z\\xfcrich' is not valid UTF-8 text"


def test_ten_times_larger_day_fails_the_gate_with_a_clear_message(store, cfg):
    rows = [f"{i},1,AA,EWR,2013-01-01T10:00:00Z" for i in range(1, 201)]
    land(store, cfg, "flights.csv", csv(*rows))
    ingest_day(store, cfg, DAY)
    with pytest.raises(ValidationGateError) as failure:
        validate_day(store, cfg, DAY)
    message = str(failure.value)
    assert "table rule 'row count between 1 and 20' failed (observed 200)" in message
    assert failure.value.result["report_html_uri"] in message and "\n" not in message
    assert store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY)) is None
    assert report(store, failure.value.result)["passed"] is False


def test_integers_beyond_float_precision_are_kept_exactly_from_csv_and_parquet(store, cfg):
    cfg = variant(cfg, id={"max": None})
    land(
        store,
        cfg,
        "flights_a.csv",
        csv(*(f"{9007199254740992 + i},1,AA,EWR,2013-01-01T10:00:00Z" for i in (1, 0))),
    )
    ids = pa.array([9007199254740995, 9007199254740994], pa.int64())
    land(store, cfg, "flights_b.parquet", flights_parquet(id=ids))
    _, validated = run(store, cfg)
    got = curated(store, cfg)
    assert got["id"].tolist() == [9007199254740993, 9007199254740992, 9007199254740995, 9007199254740994]
    assert validated["bad_rows"] == 0 and validated["failed_rules"] == []


def test_epoch_numbers_in_a_parquet_timestamp_column_are_quarantined_whatever_else_landed(store, cfg):
    """Not read as nanoseconds after 1970, and flagged the same alone and next to a CSV file."""
    cfg = cfg.model_copy(
        update={"validation": cfg.validation.model_copy(update={"max_bad_row_fraction": 1.0})}
    )
    beside = variant(cfg, "tiny_beside")
    epochs = flights_parquet(time_hour=[1357034400.0, 1357038000.5])
    land(store, cfg, "flights_p.parquet", epochs)
    land(store, beside, "flights_p.parquet", epochs)
    land(store, beside, "flights_c.csv", csv(*GOOD[2:]))
    run(store, cfg)
    run(store, beside)
    for pipeline in (cfg, beside):
        bad = quarantined(store, pipeline)
        assert bad["id"].tolist() == [5, 6] and bad["time_hour"].isna().all()
        for value, reasons in zip(["1357034400.0", "1357038000.5"], bad["_reasons"], strict=True):
            assert (
                f"ingest: time_hour: {value} is a number, not a timestamp (its epoch unit is unknown)"
                in list(reasons)
            )
    assert curated(store, cfg).empty and curated(store, beside)["id"].tolist() == [3, 4]


def test_parquet_timestamps_in_a_zone_pandas_does_not_know_ingest_as_the_instants_they_are(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    hours = pa.array(
        [dt.datetime(2013, 1, 1, 10), dt.datetime(2013, 1, 1, 11)], pa.timestamp("us", tz="UTC+5")
    )
    land(store, cfg, "flights_b.parquet", flights_parquet(time_hour=hours))
    _, validated = run(store, cfg)
    got = curated(store, cfg)
    assert got["id"].tolist() == [1, 2, 3, 4, 5, 6] and validated["bad_rows"] == 0
    assert got["time_hour"].iloc[4:].tolist() == [
        pd.Timestamp("2013-01-01 10:00", tz="UTC"),
        pd.Timestamp("2013-01-01 11:00", tz="UTC"),
    ]


def test_spark_int96_timestamps_beyond_2262_are_quarantined_not_wrapped_to_other_dates(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    hours = pa.table(
        {
            "id": [5, 6],
            "delay": [1.0, 2.0],
            "carrier": ["AA", "UA"],
            "origin": ["EWR", "JFK"],
            "time_hour": pa.array(
                [dt.datetime(9999, 12, 31), dt.datetime(2013, 1, 1, 10)], pa.timestamp("us")
            ),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(hours, buffer, use_deprecated_int96_timestamps=True)
    land(store, cfg, "flights_b.parquet", buffer.getvalue())
    run(store, cfg)
    bad = quarantined(store, cfg)
    assert bad["id"].tolist() == [5]
    assert any("time_hour" in reason and "9999-12-31" in reason for reason in bad["_reasons"][0])
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4, 6]


def test_bool_parquet_column_in_a_timestamp_column_quarantines_its_rows_and_the_day_ingests(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    land(store, cfg, "flights_b.parquet", flights_parquet(time_hour=[True, False]))
    ingested, validated = run(store, cfg)
    bad = quarantined(store, cfg)
    assert ingested["rows"] == 6 and bad["id"].tolist() == [5, 6]
    assert "ingest: time_hour: True is not a timestamp" in list(bad["_reasons"][0])
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4] and validated["bad_rows"] == 2


def test_lists_in_a_parquet_text_column_quarantine_their_rows_instead_of_becoming_text(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    land(store, cfg, "flights_b.parquet", flights_parquet(carrier=[["AA"], None], origin=[["EWR"], ["JFK"]]))

    _, validated = run(store, cfg)

    bad = quarantined(store, cfg)
    assert bad["id"].tolist() == [5, 6] and bad["origin"].isna().all()
    assert (
        "ingest: carrier: ['AA'] is not text (a list, struct or map); origin: ['EWR'] is not text (a list, "
        "struct or map)" in list(bad["_reasons"][0])
    )
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4] and validated["bad_rows"] == 2


def test_too_many_bad_rows_fail_the_gate(store, cfg):
    land(store, cfg, "flights.csv", csv(*(f"{i},,AA,EWR,2013-01-01T10:00:00Z" for i in range(1, 4)), GOOD[3]))
    ingest_day(store, cfg, DAY)
    with pytest.raises(ValidationGateError, match=r"3 of 4 rows \(75.00%\).*'delay not null' \(3 rows\)"):
        validate_day(store, cfg, DAY)
    assert len(quarantined(store, cfg)) == 3


def test_malformed_lines_count_as_bad_records_in_the_gate(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD, *(f"{i},0,UA" for i in range(10, 15))))
    ingest_day(store, cfg, DAY)

    with pytest.raises(ValidationGateError) as failure:
        validate_day(store, cfg, DAY)

    result = failure.value.result
    assert (result["rows"], result["bad_rows"], result["malformed_lines"]) == (4, 0, 5)
    assert result["bad_fraction"] == round(5 / 9, 6)
    assert (
        "the bad share 55.56% is above the limit of 50.00%; 0 of 4 rows (0.00%) broke row rules; "
        "5 malformed CSV line(s) from flights.csv (5) were quarantined too, so 5 of 9 landed records "
        "(55.56%) are bad."
    ) in str(failure.value)


def test_the_lines_of_a_rejected_file_count_as_bad_records_in_the_gate(store, cfg):
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    rows = [f"{i},1,AA,EWR" for i in range(10, 15)]
    land(store, cfg, "flights_b.csv", csv(*rows, header="id,delay,carrier,origin"))  # no time_hour
    ingest_day(store, cfg, DAY)

    with pytest.raises(ValidationGateError) as failure:
        validate_day(store, cfg, DAY)

    result = failure.value.result
    assert (result["rows"], result["rejected_lines"], result["bad_fraction"]) == (4, 5, round(5 / 9, 6))
    assert "1 rejected file(s) with 5 line(s): flights_b.csv (5) were quarantined too" in str(failure.value)


@pytest.mark.parametrize(
    ("name", "encode", "lines"),
    [
        ("flights_b.csv", lambda text: text.replace("\n", "\r").encode(), 30),  # CR-only line endings
        ("flights_b.csv", lambda text: gzip.compress(text.encode(), mtime=0), 30),  # gzip bytes, .csv name
        ("flights_b.csv.gz", lambda text: gzip.compress(text.replace("\n", "\r\n").encode(), mtime=0), 30),
    ],
)
def test_a_rejected_file_counts_its_rows_as_the_reader_would_split_them(store, cfg, name, encode, lines):
    """30 rows without the required time_hour column: counted by LF only, CR-ended lines were 0 rows
    and gzip bytes under a .csv name their stray newline bytes, and a day that lost 30 of 34 rows
    passed the gate."""
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    text = "\n".join(["id,delay,carrier,origin", *(f"{i},1,AA,EWR" for i in range(10, 10 + lines))]) + "\n"
    land(store, cfg, name, encode(text))
    ingest_day(store, cfg, DAY)

    with pytest.raises(ValidationGateError) as failure:
        validate_day(store, cfg, DAY)

    result = failure.value.result
    assert (result["rows"], result["rejected_lines"]) == (4, lines)
    assert f"1 rejected file(s) with {lines} line(s): {name} ({lines})" in str(failure.value)


def test_truncated_utf16_or_misnamed_rejected_files_count_their_rows_and_say_what_they_are(store, cfg):
    """A truncated upload counted as 1 lost row (a day missing half its rows passed), a UTF-16 export
    as every byte pair's line, and its reason did not say it was UTF-16."""
    rows = [f"{i},1,AA,EWR,2013-01-01T10:00:00Z" for i in range(10, 310)]
    whole = gzip.compress(csv(*rows).encode(), mtime=0)
    land(store, cfg, "flights.csv", csv(*GOOD))
    land(store, cfg, "flights_cut.csv.gz", whole[: len(whole) * 6 // 10])
    land(store, cfg, "flights_utf16.csv", csv(*rows[:20]).encode("utf-16"))
    land(store, cfg, "flights_named.txt", csv(*rows[:7]))
    ingested = ingest_day(store, cfg, DAY)

    reasons = {r["key"].rsplit("/", 1)[-1]: r["reason"] for r in ingested["rejected_files"]}
    assert "is UTF-16 text (its byte order mark says so), not utf-8" in reasons["flights_utf16.csv"]
    manifest = store.read_manifest(partition_prefix(cfg.prefix, "staging", DAY))
    lines = {r["key"].rsplit("/", 1)[-1]: r["lines"] for r in manifest["rejected_files"]}
    assert (lines["flights_utf16.csv"], lines["flights_named.txt"]) == (20, 7)
    assert 100 < lines["flights_cut.csv.gz"] < 300  # the rows the cut file still holds
    with pytest.raises(ValidationGateError):
        validate_day(store, cfg, DAY)


def test_a_byte_that_is_not_utf8_costs_its_value_not_the_whole_file(store, cfg):
    """A Windows-1252 quote (0x92) in one field rejected all of the file's rows; in a column the
    config drops it costs nothing, in a declared one only its row."""
    rows = [g + ",ok" for g in GOOD]
    text = csv(*rows, header=HEADER + ",note").encode()
    text = text.replace(b"2,0,UA,JFK,2013-01-01T10:00:00Z,ok", b"2,0,UA,JFK,2013-01-01T10:00:00Z,crew\x92s")
    text = text.replace(b"3,25,AA,", b"3,25,A\x92,")
    land(store, cfg, "flights.csv", text)

    ingested, validated = run(store, cfg)

    assert ingested["rejected_files"] == [] and validated["passed"]
    assert curated(store, cfg)["id"].tolist() == [1, 2, 4]
    [reason] = quarantined(store, cfg)["_ingest_error"].tolist()
    assert reason.startswith("carrier: ") and reason.endswith("is not valid UTF-8 text")


def test_a_rejected_file_whose_quoted_fields_span_lines_counts_its_records(store, cfg):
    """Counted by physical lines, 2 records with multi-line comments were 5 bad rows: a day that
    should pass failed the gate."""
    land(
        store,
        cfg,
        "flights_a.csv",
        csv(*GOOD, *(f"{i},1,AA,EWR,2013-01-01T10:00:00Z" for i in range(10, 16))),
    )
    commented = 'id,delay,carrier,origin,comment\n11,1,AA,EWR,"late\ncrew\nswap"\n12,1,AA,EWR,"a\nb"\n'
    land(store, cfg, "flights_b.csv", commented)  # no time_hour column: rejected
    ingest_day(store, cfg, DAY)

    result = validate_day(store, cfg, DAY)

    assert (result["passed"], result["rejected_lines"]) == (True, 2)


def test_a_day_with_only_files_of_no_table_has_no_data(store, cfg):
    """A writer's _SUCCESS marker alone was a day of 0 rows, whose validation gate failed the run."""
    land(store, cfg, "_SUCCESS", b"")
    land(store, cfg, "README.md", "about this folder")

    result = ingest_day(store, cfg, DAY)

    assert (result["status"], result["rows"]) == ("no_data", 0)
    assert sum("matches no file_pattern" in w for w in result["warnings"]) == 2


def test_a_rerun_that_fails_the_gate_withdraws_the_days_earlier_curated_data(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD))
    run(store, cfg)
    earlier = store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY))
    land(store, cfg, "flights.csv", csv(*(g.replace(",AA,", ",ZZ,").replace(",UA,", ",ZZ,") for g in GOOD)))
    ingest_day(store, cfg, DAY)

    with pytest.raises(ValidationGateError) as failure:
        validate_day(store, cfg, DAY)

    assert store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY)) is None
    assert not any(store.exists(p["key"]) for p in earlier["parts"])
    assert quarantined(store, cfg)["id"].tolist() == [1, 2, 3, 4]
    assert (
        "Curated data was not written and the curated partition an earlier run published for the day "
        "was withdrawn." in str(failure.value)
    )


def test_the_gate_message_names_the_files_and_the_columns_of_the_bad_rows(store, cfg):
    cfg = cfg.model_copy(
        update={"validation": cfg.validation.model_copy(update={"max_bad_row_fraction": 0.1})}
    )
    land(store, cfg, "flights_a.csv", csv("1,abc,AA,EWR,2013-01-01T10:00:00Z", GOOD[1]))
    land(
        store,
        cfg,
        "flights_b.csv",
        csv("3,xyz,AA,EWR,2013-01-01T11:00:00Z", "4,,UA,JFK,2013-01-01T11:00:00Z"),
    )
    land(store, cfg, "weather.csv", "origin,time_hour,temp\nEWR,2013-01-01T10:00:00Z,hot\n")
    ingest_day(store, cfg, DAY)

    with pytest.raises(ValidationGateError) as failure:
        validate_day(store, cfg, DAY)

    message = str(failure.value)
    assert "'delay not null' (3 rows) from flights_b.csv (2), flights_a.csv (1)" in message
    assert (
        "'values convert to their types' (2 rows) in column(s) delay (2), weather.temp (1) from "
        "flights_a.csv (1), flights_b.csv (1)"
    ) in message
    assert "\n" not in message
    rule = next(
        r
        for r in report(store, failure.value.result)["rules"]
        if r["rule"] == "values convert to their types"
    )
    assert rule["columns"] == {"delay": 2, "weather.temp": 1}


def test_the_gate_message_names_columns_whose_names_have_spaces_and_signs(store, cfg):
    data = cfg.model_dump()
    data["data"]["columns"].append({"name": "dep time", "type": "int"})
    data["data"]["joins"][0]["columns"][2]["name"] = "temp (°F)"
    data["features"]["numeric"] = ["temp (°F)"]
    data["validation"]["max_bad_row_fraction"] = 0.1
    cfg = PipelineConfig.model_validate(data)
    header = HEADER + ",dep time"
    land(store, cfg, "flights.csv", csv(GOOD[0] + ",soon", GOOD[1] + ",517", header=header))
    land(store, cfg, "weather.csv", "origin,time_hour,temp (°F)\nJFK,2013-01-01T10:00:00Z,hot\n")
    ingest_day(store, cfg, DAY)

    with pytest.raises(ValidationGateError) as failure:
        validate_day(store, cfg, DAY)

    assert "in column(s) dep time (1), weather.temp (°F) (1) from flights.csv (2)" in str(failure.value)


# -- formats and layout -------------------------------------------------------------------------


def test_gzip_csv_ingests(store, cfg):
    land(store, cfg, "flights.csv.gz", gzip.compress(csv(*GOOD).encode(), mtime=0))
    ingested, _ = run(store, cfg)
    assert ingested["rows"] == 4 and curated(store, cfg)["id"].tolist() == [1, 2, 3, 4]


def test_parquet_input_ingests_with_types(store, cfg):
    frame = pd.read_csv(io.StringIO(csv(*GOOD)))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    land(store, cfg, "flights.parquet", buffer.getvalue())
    run(store, cfg)
    got = curated(store, cfg)
    assert (
        got["delay"].tolist() == [-3.0, 0.0, 25.0, 7.5]
        and str(got["time_hour"].dtype) == "datetime64[ns, UTC]"
    )
    assert got["_source_line"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("index", ["id", "carrier"], ids=["required column", "optional column"])
def test_a_named_pandas_index_in_parquet_is_a_data_column(store, cfg, index):
    """``df.set_index(name).to_parquet()`` stores the index as the column ``name``: it is data. Only
    an unnamed index (``__index_level_0__``) is pandas' bookkeeping, dropped without a warning."""
    cfg = variant(cfg, carrier={"nullable": True})
    frame = pd.read_parquet(io.BytesIO(flights_parquet()))
    named, unnamed = io.BytesIO(), io.BytesIO()
    frame.set_index(index).to_parquet(named)
    frame.set_index(pd.Index([7, 8])).assign(id=[7, 8]).to_parquet(unnamed)  # not a RangeIndex
    assert "__index_level_0__" in pq.read_schema(io.BytesIO(unnamed.getvalue())).names
    land(store, cfg, "flights_a.parquet", named.getvalue())
    land(store, cfg, "flights_b.parquet", unnamed.getvalue())
    land(store, cfg, "weather.csv", WEATHER)

    ingested, validated = run(store, cfg)

    assert ingested["rejected_files"] == [] and ingested["warnings"] == []
    got = curated(store, cfg)
    assert got["id"].tolist() == [5, 6, 7, 8] and got["carrier"].tolist() == ["AA", "UA"] * 2
    assert validated["bad_rows"] == 0


def test_several_files_per_day_are_combined_in_file_then_line_order(store, cfg):
    land(store, cfg, "flights_b.csv", csv(*GOOD[2:]))
    land(store, cfg, "flights_a.csv", csv(*GOOD[:2]))
    land(store, cfg, "weather.csv", WEATHER)
    ingested, _ = run(store, cfg)
    got = curated(store, cfg)
    assert ingested["files"] == 3 and got["id"].tolist() == [1, 2, 3, 4]
    assert (
        got["_source_file"].str.rsplit("/", n=1).str[-1].tolist()
        == ["flights_a.csv"] * 2 + ["flights_b.csv"] * 2
    )
    assert got["temp"].tolist()[:2] == [39.0, 38.5] and got["temp"].isna().tolist()[2:] == [True, True]


def test_weather_rows_repeating_a_key_and_its_values_join_once(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD))
    land(store, cfg, "weather.csv", WEATHER)
    land(store, cfg, "weather_copy.csv", WEATHER)  # landed twice
    ingested, validated = run(store, cfg)
    assert any("2 row(s) repeating another row's key" in w for w in ingested["warnings"])
    assert curated(store, cfg)["temp"].tolist()[:2] == [39.0, 38.5] and validated["bad_rows"] == 0


def test_a_join_that_matches_few_or_no_rows_says_so_in_the_warnings(store, cfg):
    """Weather keys in lower case (another export): every flight got null weather and the day
    passed without a word."""
    land(store, cfg, "flights.csv", csv(*GOOD))
    land(store, cfg, "weather.csv", WEATHER.replace("EWR", "ewr").replace("JFK", "jfk"))
    ingested, validated = run(store, cfg)
    assert (
        "join 'weather': 0 of 4 rows found a weather row on origin+time_hour; the others get null weather "
        "columns. 2 of the 2 weather rows matched no row: compare the key values of both files (case, "
        "time zone, format)."
    ) in ingested["warnings"]
    assert curated(store, cfg)["temp"].isna().all() and validated["passed"]
    land(store, cfg, "weather.csv", WEATHER)
    assert any("2 of 4 rows found a weather row" in w for w in run(store, cfg)[0]["warnings"])


def test_weather_copies_of_a_key_that_disagree_quarantine_the_rows_they_join(store, cfg):
    """Which of 39.0 and 99.0 was EWR's temperature at 10:00 is unknown (a correction file beside
    the original, a broken export): the flight joining it is quarantined, naming both copies,
    instead of being curated with whichever copy came first."""
    land(store, cfg, "flights.csv", csv(*GOOD))
    land(store, cfg, "weather.csv", WEATHER)
    fix = land(store, cfg, "weather_fix.csv", "origin,time_hour,temp\nEWR,2013-01-01T10:00:00Z,99.0\n")
    ingested, validated = run(store, cfg)

    assert any(
        "1 key(s) ['origin', 'time_hour'] have copies that disagree" in w for w in ingested["warnings"]
    )
    assert curated(store, cfg)["id"].tolist() == [2, 3, 4]
    assert validated["bad_rows"] == 1
    [reason] = quarantined(store, cfg)["_reasons"].tolist()[0]
    assert "weather: 2 rows of key origin='EWR', time_hour='2013-01-01T10:00:00+00:00' disagree" in reason
    assert f"weather.csv line 2, {fix} line 2" in reason


def test_side_rows_without_a_complete_join_key_are_quarantined_and_counted(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD))
    weather = (
        WEATHER
        + "EWR,2013-01-01 11:00 o'clock,41.0\n,2013-01-01T11:00:00Z,40.0\nJFK,2013-01-01T11:00:00Z,40.0\n"
    )
    key = land(store, cfg, "weather.csv", weather)

    ingested, validated = run(store, cfg)

    assert ingested["malformed_lines"] == 2
    assert f"{key}: 2 row(s) without a complete key ['origin', 'time_hour'] cannot be joined" in " ".join(
        ingested["warnings"]
    )
    lines = malformed_lines(store, cfg)
    assert lines["source_file"].tolist() == [key, key] and lines["line"].tolist() == [4, 5]
    assert lines["reason"].tolist() == [
        "join 'weather': no complete key ['origin', 'time_hour'] (weather: time_hour: "
        '"2013-01-01 11:00 o\'clock" is not an ISO 8601 timestamp within 1677-09-21..2262-04-11); '
        "it joins no row",
        "join 'weather': no complete key ['origin', 'time_hour'] (origin missing); it joins no row",
    ]
    assert json.loads(lines["raw"][0]) == {
        "origin": "EWR",
        "time_hour": "2013-01-01 11:00 o'clock",
        "temp": "41.0",
    }
    # counted as bad records like malformed lines: 2 of 4 rows + 2 lost
    assert (validated["malformed_lines"], validated["bad_fraction"]) == (2, round(2 / 6, 6))
    assert (
        "2 side-table row(s) without a complete join key from weather.csv (2) were quarantined too, so 2 of "
        "6 landed records (33.33%) are bad"
    ) in validated["message"]
    temp = curated(store, cfg)["temp"]  # EWR 11:00 has no weather: its only row had no usable key
    assert temp.isna().tolist() == [False, False, True, False] and temp.dropna().tolist() == [
        39.0,
        38.5,
        40.0,
    ]


def test_side_rows_without_a_key_in_a_parquet_side_file_are_quarantined_with_their_values(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD))
    buffer = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "origin": ["EWR", None],
                "time_hour": pa.array([dt.datetime(2013, 1, 1, 10), dt.datetime(2013, 1, 1, 11)]),
                "temp": [39.0, 41.5],
            }
        ),
        buffer,
    )
    key = land(store, cfg, "weather.parquet", buffer.getvalue())

    ingested, validated = run(store, cfg)

    [line] = malformed_lines(store, cfg).to_dict("records")
    assert (line["source_file"], line["line"]) == (key, 2) and "(origin missing)" in line["reason"]
    assert json.loads(line["raw"]) == {"origin": None, "time_hour": "2013-01-01T11:00:00", "temp": "41.5"}
    assert validated["malformed_lines"] == 1 and curated(store, cfg)["temp"].tolist()[0] == 39.0


def test_a_join_whose_only_file_was_rejected_names_it_in_the_warning(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD))
    key = land(store, cfg, "weather.csv", b"\xff\xfe")
    ingested = ingest_day(store, cfg, DAY)
    assert (
        f"join 'weather': its file(s) ['{key}'] were rejected (see rejected_files); its columns are null"
        in (ingested["warnings"])
    )
    assert not any("no file matching" in w for w in ingested["warnings"])

    other = variant(cfg, "tiny_no_weather")
    land(store, other, "flights.csv", csv(*GOOD))
    assert ingest_day(store, other, DAY)["warnings"] == [
        "join 'weather': no file matching 'weather*'; its columns are null"
    ]


def test_rerun_is_byte_identical(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD, "5,abc,AA,EWR,2013-01-01T10:00:00Z", "6,1"))
    land(store, cfg, "weather.csv", WEATHER)
    land(store, cfg, "flights_x.csv", b"")

    def snapshot() -> dict[str, bytes]:
        return {
            o.key: store.get_bytes(o.key) for o in store.list(cfg.prefix + "/") if "/landing/" not in o.key
        }

    run(store, cfg)
    first = snapshot()
    run(store, cfg)
    assert snapshot() == first and len(curated(store, cfg)) == 4


def test_training_plans_again_a_curated_day_whose_landing_files_were_added_or_replaced(store, cfg):
    day_before, missing = DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1)
    land(store, cfg, "flights.csv", csv(*GOOD[:2]))
    land(store, cfg, "weather.csv", WEATHER)
    land(store, cfg, "notes.txt", "routed nowhere: not recorded, not compared")
    land(store, cfg, "flights.csv", csv(*GOOD), day=day_before)  # landed, not curated
    run(store, cfg)
    recorded = store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY))["landing_files"]
    assert [f["key"].rsplit("/", 1)[-1] for f in recorded] == ["flights.csv", "weather.csv"]

    def plan() -> ingestion.IngestionPlan:
        return ingestion.plan_ingestion(store, cfg, [day_before, DAY, missing])

    unchanged = plan()
    assert (unchanged.todo, unchanged.curated, unchanged.missing) == ([day_before], [DAY], [missing])
    land(store, cfg, "notes.txt", "edited, still routed nowhere")
    assert plan().curated == [DAY]

    late = land(store, cfg, "flights_late.csv", csv(GOOD[2]))
    assert plan().todo == [day_before, DAY]
    assert plan().changed == [{"day": DAY, "added": [late], "changed": []}]
    run(store, cfg)  # what the training DAG then does: the late rows are curated
    assert sorted(curated(store, cfg)["id"]) == [1, 2, 3] and plan().todo == [day_before]

    corrected = land(store, cfg, "flights.csv", csv(*GOOD[:2], GOOD[3]))  # same name, new bytes
    assert plan().changed == [{"day": DAY, "added": [], "changed": [corrected]}]
    run(store, cfg)
    assert sorted(curated(store, cfg)["id"]) == [1, 2, 3, 4]

    store.delete([late])  # landing retention: the curated day stays as it is
    assert plan().curated == [DAY] and plan().todo == [day_before]
    land(store, cfg, "flights.csv", csv(*GOOD))  # and another correction: ingesting would lose id 3
    kept = plan()
    assert kept.todo == [day_before] and kept.curated == [DAY]
    assert kept.kept == [{"day": DAY, "added": [], "changed": [corrected], "removed": [late]}]


def test_a_rejected_file_replaced_under_another_name_gets_its_day_ingested_again(store, cfg):
    """The rejection says what to fix; the fixed file lands under a new name and the rejected one
    goes. The removed file gave no rows, so ingesting again loses none: the day is not "kept"."""
    land(store, cfg, "flights.csv", csv(*GOOD[:2]))
    rejected = land(store, cfg, "flights_late.csv", csv(*GOOD[2:], header=HEADER.upper()))
    ingested, _ = run(store, cfg)
    assert [r["key"] for r in ingested["rejected_files"]] == [rejected]
    assert sorted(curated(store, cfg)["id"]) == [1, 2]

    fixed = land(store, cfg, "flights_late_fixed.csv", csv(*GOOD[2:]))
    store.delete([rejected])
    plan = ingestion.plan_ingestion(store, cfg, [DAY])
    assert (plan.todo, plan.kept) == ([DAY], [])
    assert plan.changed == [{"day": DAY, "added": [fixed], "changed": []}]
    run(store, cfg)
    assert sorted(curated(store, cfg)["id"]) == [1, 2, 3, 4]


def test_a_landing_file_removed_between_listing_and_reading_is_a_retryable_error_saying_so(store, cfg):
    """Another process (retention, a re-upload) removes a file after the day was listed."""
    removed = land(store, cfg, "flights_b.csv", csv(GOOD[1]))
    land(store, cfg, "flights.csv", csv(GOOD[0]))

    class RemovedMeanwhile(type(store)):
        def list(self, prefix: str) -> list:
            listed = super().list(prefix)
            if prefix.endswith("/landing/date=2013-01-01/") and self.exists(removed):
                self.delete([removed])
            return listed

    meanwhile = RemovedMeanwhile(store.settings)
    with pytest.raises(ingestion.LandingChangedError, match="flights_b.csv was listed but removed before"):
        ingestion.ingest_day(meanwhile, cfg, DAY)
    assert not isinstance(ingestion.LandingChangedError("x"), DataError)  # the task retries it
    assert ingestion.ingest_day(store, cfg, DAY)["rows"] == 1  # the retry lists the day again


def test_folder_markers_in_landing_are_not_files_even_for_a_catch_all_pattern(store, cfg):
    source = cfg.data.source.model_copy(update={"file_pattern": "*"})
    catch_all = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": source})})
    land(store, catch_all, "", b"")  # the day's folder, as the S3 console's "Create folder" makes it
    land(store, catch_all, "sub/", b"")
    land(store, catch_all, "flights.csv", csv(*GOOD))
    run(store, catch_all)
    plan = ingestion.plan_ingestion(store, catch_all, [DAY])
    assert (plan.todo, plan.curated, plan.changed) == ([], [DAY], [])


def test_a_day_curated_before_landing_files_were_recorded_is_not_compared(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD))
    run(store, cfg)
    partition = partition_prefix(cfg.prefix, "curated", DAY)
    manifest = store.read_manifest(partition)
    del manifest["landing_files"]
    store.put_json(partition + "_SUCCESS", manifest)
    land(store, cfg, "flights_late.csv", csv("9,1,AA,EWR,2013-01-01T10:00:00Z"))
    plan = ingestion.plan_ingestion(store, cfg, [DAY])
    assert (plan.todo, plan.curated) == ([], [DAY])


def restage_concurrently(store: ObjectStore, cfg: PipelineConfig, name: str, *lines: str) -> None:
    """Another run of the ingest step for the day, with a late landing file: a new staging manifest,
    and the parts it replaces deleted."""
    land(store, cfg, name, csv(*lines))
    ingest_day(store, cfg, DAY)


@pytest.mark.parametrize("step", ["read_staged", "run_gx"], ids=["while the data is read", "later"])
def test_validation_starts_again_when_a_concurrent_ingest_restages_the_day(store, cfg, monkeypatch, step):
    """Read the data part (gone, read_staged) or the malformed-lines part (gone, after GX): either
    way the result is the new staging's, as if validation had started after that ingest."""
    land(store, cfg, "flights_a.csv", csv(*GOOD, "9,0,UA"))
    ingest_day(store, cfg, DAY)
    real, restaged = getattr(validation, step), []

    def racing(*args):
        if not restaged:
            restaged.append(step)
            restage_concurrently(store, cfg, "flights_b.csv", "10,0,UA", "11,1,AA,EWR,2013-01-01T10:00:00Z")
        return real(*args)

    monkeypatch.setattr(validation, step, racing)
    validated = validate_day(store, cfg, DAY)

    assert restaged and validated["passed"] and validated["malformed_lines"] == 2
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4, 11]
    assert malformed_lines(store, cfg)["raw"].tolist() == ["9,0,UA", "10,0,UA"]


def test_a_validation_of_staging_that_a_later_ingest_and_validation_replaced_publishes_the_new_day(
    store, cfg, monkeypatch
):
    """Training's and inference's validations of one day run at once. A has read staging (no part
    of it is read again later) when a late file is ingested and B validates and publishes the new
    staging; A, finishing last, must not put the older, smaller day back over B's."""
    land(store, cfg, "flights_a.csv", csv(*GOOD))
    ingest_day(store, cfg, DAY)
    real, restaged = validation.run_gx, []

    def racing(*args):
        if not restaged:
            restaged.append(1)
            restage_concurrently(store, cfg, "flights_b.csv", "11,1,AA,EWR,2013-01-01T10:00:00Z")
            restaged.append(validate_day(store, cfg, DAY))  # B, all the way to its curated manifest
        return real(*args)

    monkeypatch.setattr(validation, "run_gx", racing)
    validated = validate_day(store, cfg, DAY)

    assert validated == restaged[1] and validated["good_rows"] == 5
    assert curated(store, cfg)["id"].tolist() == [1, 2, 3, 4, 11]
    report = store.get_json(partition_prefix(cfg.prefix, "reports/validation", DAY) + "validation.json")
    assert report["good_rows"] == 5


@pytest.mark.parametrize(
    "late",
    [["11,1,AA,EWR,2013-01-01T10:00:00Z"], [f"{i},1,XX,EWR,2013-01-01T10:00:00Z" for i in (11, 12, 13)]],
    ids=["passing", "failing"],
)
def test_a_validation_overtaken_after_its_quarantine_went_up_leaves_the_day_as_the_newer_one_made_it(
    store, cfg, monkeypatch, late
):
    """B (a late file: a good row, or a bad one that fails the day and withdraws curated) runs while
    A, on the older staging, is between its quarantine and its curated publish: A's curated
    manifest, written over B's or where B left none, and the day's latest report must be B's."""
    land(store, cfg, "flights_a.csv", csv(*GOOD[:2]))
    ingest_day(store, cfg, DAY)
    real, overtaken = validation.render_html, []

    def racing(report):
        if not overtaken:
            overtaken.append(1)
            restage_concurrently(store, cfg, "flights_b.csv", *late)
            try:
                overtaken.append(validate_day(store, cfg, DAY))
            except ValidationGateError as failed:
                overtaken.append(failed.result)
        return real(report)

    monkeypatch.setattr(validation, "render_html", racing)
    newer = None
    try:
        newer = validate_day(store, cfg, DAY)
    except ValidationGateError as failed:
        newer = failed.result

    assert newer == overtaken[1]
    latest = store.get_json(partition_prefix(cfg.prefix, "reports/validation", DAY) + "validation.json")
    assert (latest["rows"], latest["passed"]) == (2 + len(late), newer["passed"])
    if newer["passed"]:
        assert curated(store, cfg)["id"].tolist() == [1, 2, 11]
    else:
        assert store.read_manifest(partition_prefix(cfg.prefix, "curated", DAY)) is None


def test_validation_gives_up_with_a_clear_message_when_staging_keeps_being_replaced(store, cfg, monkeypatch):
    land(store, cfg, "flights.csv", csv(*GOOD))
    ingest_day(store, cfg, DAY)
    real, runs = validation.read_staged, []

    def racing(*args):
        runs.append(1)
        restage_concurrently(
            store, cfg, f"flights_{len(runs)}.csv", f"{10 + len(runs)},1,AA,EWR,2013-01-01T10:00:00Z"
        )
        return real(*args)

    monkeypatch.setattr(validation, "read_staged", racing)
    with pytest.raises(validation.StagingReplacedError) as failure:
        validate_day(store, cfg, DAY)

    message = str(failure.value)
    assert len(runs) == validation.STAGING_ATTEMPTS and "\n" not in message
    assert message.startswith(
        f"Validation of 'tiny' for {DAY} could not read s3://{store.bucket}/tiny/staging/"
    )
    assert (
        "staging was replaced by a concurrent ingest run of the same day (3 time(s) while it was validated)"
        in message
    )
    assert "rerun it once that ingest has finished" in message
    for area in ("curated", "quarantine"):  # nothing published
        assert store.read_manifest(partition_prefix(cfg.prefix, area, DAY)) is None


def test_a_staging_part_gone_behind_an_unchanged_manifest_is_reported_as_damage(store, cfg):
    land(store, cfg, "flights.csv", csv(*GOOD))
    ingest_day(store, cfg, DAY)
    [part] = store.read_manifest(partition_prefix(cfg.prefix, "staging", DAY))["data_parts"]
    store.delete([part])
    with pytest.raises(validation.StagingReplacedError, match="the staging partition is damaged"):
        validate_day(store, cfg, DAY)


def test_day_without_landing_files_is_no_data(store, cfg):
    assert ingest_day(store, cfg, DAY)["status"] == "no_data"
    with pytest.raises(StagedDataMissingError, match="ingest has not staged 2013-01-01"):
        validate_day(store, cfg, DAY)


def test_example_day_quarantines_cancelled_flights(store, example_config):
    day = dt.date(2013, 1, 1)
    prefix = partition_prefix(example_config.prefix, "landing", day)
    store.put_bytes(prefix + "flights.csv", example.flights_on(day).to_csv(index=False).encode())
    store.put_bytes(prefix + "weather.csv", example.weather_on(day).to_csv(index=False).encode())
    ingested = ingest_day(store, example_config, day)
    validated = validate_day(store, example_config, day)
    cancelled = example.flights_on(day)["dep_time"].isna()
    assert ingested["rows"] == 842 and validated["passed"]
    manifest = store.read_manifest(partition_prefix(example_config.prefix, "quarantine", day))
    bad = pd.read_parquet(io.BytesIO(store.get_bytes(manifest["parts"][0]["key"])))
    assert len(bad) == cancelled.sum() == 4
    assert all({"dep_time not null", "dep_delay not null"} <= set(r) for r in bad["_reasons"])
    assert validated["good_rows"] == 842 - 4
