"""Row masks mirror GX's own counts; config expectations are checked when rules are built."""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pytest
from great_expectations import expectations as gxe
from great_expectations.core import ExpectationValidationResult

from mlops_tasks.config import PipelineConfig
from mlops_tasks.validation import (
    Rule,
    ValidationConfigError,
    bad_row_mask,
    build_rules,
    gx_error,
    render_html,
    required_where_declared,
    run_gx,
)

FRAME = pd.DataFrame(
    {
        "n": pd.array([1, 5, None, 12, 5], dtype="Int64"),
        "s": pd.array(["AA", "ZZ", None, "a1", "AA"], dtype="string"),
        "k": pd.array([1, 1, 2, None, 3], dtype="Int64"),
    }
)
RULES = [
    Rule("n not null", gxe.ExpectColumnValuesToNotBeNull(column="n"), True),
    Rule("n range", gxe.ExpectColumnValuesToBeBetween(column="n", min_value=1, max_value=10), True),
    Rule("n strict", gxe.ExpectColumnValuesToBeBetween(column="n", min_value=1, strict_min=True), True),
    Rule("s set", gxe.ExpectColumnValuesToBeInSet(column="s", value_set=["AA"]), True),
    Rule("s regex", gxe.ExpectColumnValuesToMatchRegex(column="s", regex="^[A-Z]+$"), True),
    Rule("n+s unique", gxe.ExpectCompoundColumnsToBeUnique(column_list=["n", "s"]), True),
    Rule("k unique", gxe.ExpectColumnValuesToBeUnique(column="k"), True),
    Rule("s length (GX fallback)", gxe.ExpectColumnValueLengthsToBeBetween(column="s", max_value=2), True),
    Rule(
        "n range where s is AA (a condition on another column)",
        gxe.ExpectColumnValuesToBeBetween(
            column="n", max_value=3, row_condition='s=="AA"', condition_parser="pandas"
        ),
        True,
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_row_mask_counts_what_gx_counts(rule: Rule):
    [result] = run_gx(FRAME, [rule])
    assert gx_error(result) is None
    assert int(bad_row_mask(FRAME, rule).sum()) == result.result["unexpected_count"]


@pytest.mark.parametrize(
    "rule",
    [
        Rule("n length", gxe.ExpectColumnValueLengthsToBeBetween(column="n", max_value=1), True),
        Rule("n regex", gxe.ExpectColumnValuesToMatchRegex(column="n", regex="^[0-9]$"), True),
    ],
    ids=lambda r: r.name,
)
def test_rules_reading_an_int_column_as_text_see_its_digits(rule: Rule):
    """Only 12 has two digits. GX once got int columns as float64 for every rule: "1.0" is 3
    characters and no digit string, so all 4 values broke both rules and good rows were quarantined."""
    [result] = run_gx(FRAME, [rule])
    assert result.result["unexpected_count"] == 1 == int(bad_row_mask(FRAME, rule).sum())


@pytest.mark.parametrize(
    "rule", [r for r in RULES if r.name in ("s regex", "s length (GX fallback)")], ids=str
)
def test_a_very_long_text_value_is_one_bad_row_not_a_memory_error(rule: Rule):
    """On arrow-backed strings GX's astype(str) built a numpy array of rows x the longest value: a
    20 MB value among 842 rows asked for 60 GiB and the whole gate failed naming no row."""
    long = pd.DataFrame({"s": pd.array(["AA"] * 800 + ["b" * 20_000_000], dtype=pd.StringDtype("pyarrow"))})
    [result] = run_gx(long, [rule])
    assert gx_error(result) is None
    mask = bad_row_mask(long, rule)
    assert result.result["unexpected_count"] == 1 == int(mask.sum()) and mask[-1]


def with_expectations(cfg: PipelineConfig, *expectations: dict) -> PipelineConfig:
    return cfg.model_copy(
        update={"validation": cfg.validation.model_validate({"expectations": list(expectations)})}
    )


def test_unknown_expectation_type_is_a_config_error(example_config: PipelineConfig):
    broken = with_expectations(example_config, {"type": "expect_magic"})
    with pytest.raises(ValidationConfigError, match=r"validation.expectations\[0\] \(expect_magic\): Great"):
        build_rules(broken)


def test_an_expectation_on_an_undeclared_column_is_a_config_error(example_config: PipelineConfig):
    broken = with_expectations(
        example_config, {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "origen"}}
    )
    with pytest.raises(
        ValidationConfigError,
        match=r"'flights_delay': validation.expectations\[0\] \(expect_column_values_to_not_be_null\): "
        r"kwarg 'column' names column\(s\) \['origen'\] that the data does not have; use one of .*'origin'",
    ):
        build_rules(broken)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"regex": "^[A-Z"}, "'^[A-Z'"), ({"regex_list": ["^A", "(B"]}, "'(B'")],
    ids=["regex", "regex_list"],
)
def test_an_invalid_regular_expression_is_a_config_error_not_a_failed_day(
    example_config: PipelineConfig, kwargs: dict, pattern: str
):
    broken = with_expectations(
        example_config,
        {
            "type": f"expect_column_values_to_match_{next(iter(kwargs))}",
            "kwargs": {"column": "dest", **kwargs},
        },
    )
    with pytest.raises(
        ValidationConfigError,
        match=rf"expectations\[0\].*kwarg '{next(iter(kwargs))}' is not a valid regular expression: {re.escape(pattern)}",
    ):
        build_rules(broken)


def test_every_column_an_expectation_names_is_checked(example_config: PipelineConfig):
    broken = with_expectations(
        example_config,
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "origin"}},
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": ["flight", "tailnum_"]}},
    )
    with pytest.raises(
        ValidationConfigError, match=r"expectations\[1\].*kwarg 'column_list' names .*\['tailnum_'\]"
    ):
        build_rules(broken)


def test_expectations_may_name_join_and_lineage_columns(example_config: PipelineConfig):
    cfg = with_expectations(
        example_config,
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "temp"}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "_source_file"}},
    )
    assert [r.kwargs["column"] for r in build_rules(cfg)[-2:]] == ["temp", "_source_file"]


def test_a_key_column_declared_nullable_is_still_required(example_config: PipelineConfig):
    """GX's uniqueness rules skip missing values: without a not-null rule, rows without a key (any
    number of them) would be curated, and nothing downstream could join them."""
    # every column declared nullable but flight: six of the seven key columns
    columns = [c.model_copy(update={"nullable": c.name != "flight"}) for c in example_config.data.columns]
    cfg = example_config.model_copy(
        update={"data": example_config.data.model_copy(update={"columns": columns})}
    )
    not_null = {r.name for r in build_rules(cfg) if r.expectation.expectation_type.endswith("not_be_null")}
    assert not_null == {f"{k} not null" for k in cfg.data.key}
    frame = pd.DataFrame({"flight": pd.array([1, None, None, 4], dtype="Int64")})
    [rule] = [r for r in build_rules(cfg) if r.name == "flight not null"]
    assert bad_row_mask(frame, rule).tolist() == [False, True, True, False]


@pytest.mark.parametrize(
    "expectation",
    [
        gxe.ExpectColumnValuesToNotBeNull(column="gone"),
        gxe.ExpectColumnMeanToBeBetween(column="gone", min_value=0),
    ],
    ids=["row rule", "table rule"],
)
def test_a_rule_gx_cannot_evaluate_reports_why(expectation):
    # GX 1.x keys exception_info by the id of the metric that raised.
    [result] = run_gx(FRAME, [Rule("r", expectation, True)])

    assert result.success is False
    assert gx_error(result) == 'Error: The column "gone" in BatchData does not exist.'


def test_an_expectation_level_exception_is_reported_too():
    flat = {"raised_exception": True, "exception_message": "TypeError: boom", "exception_traceback": "..."}

    assert gx_error(ExpectationValidationResult(success=False, exception_info=flat)) == "TypeError: boom"


def test_a_rule_gx_evaluated_has_no_error():
    [result] = run_gx(FRAME, [RULES[0]])

    assert gx_error(result) is None


def test_a_table_rule_on_the_column_list_sees_every_column():
    rule = Rule("order", gxe.ExpectTableColumnsToMatchOrderedList(column_list=["n", "s"]), False)

    [result] = run_gx(FRAME, [rule])

    assert result.success is False and result.result["observed_value"] == ["n", "s", "k"]


def test_html_report_escapes_values():
    report = {
        "pipeline": "p",
        "date": "2013-01-01",
        "passed": False,
        "message": "<b>",
        "rows": 1,
        "good_rows": 0,
        "bad_rows": 1,
        "bad_fraction": 1.0,
        "max_bad_row_fraction": 0.1,
        "malformed_lines": 0,
        "rejected_lines": 0,
        "rejected_files": [{"key": "k<script>", "reason": "r"}],
        "rules": [
            {
                "rule": "r",
                "level": "row",
                "success": False,
                "gx_unexpected_count": 1,
                "rows": 1,
                "observed": None,
                "examples": ["<img src=x>"],
                "error": None,
            }
        ],
    }
    page = render_html(report)
    assert (
        "<img" not in page and "&lt;img src=x&gt;" in page and "k&lt;script&gt;" in page and "FAILED" in page
    )


def test_curated_columns_declared_not_nullable_are_written_as_required(example_config: PipelineConfig):
    # flight and carrier are declared nullable: false; temp (weather) may be missing
    table = pa.table(
        {"flight": [1, 2], "carrier": ["AA", "UA"], "temp": [50.0, None]}
    ).replace_schema_metadata({"origin": "kept"})

    curated = required_where_declared(table, example_config)

    assert [f.nullable for f in curated.schema] == [False, False, True]
    assert curated.schema.metadata == {b"origin": b"kept"}
    assert curated.to_pydict() == table.to_pydict()


def test_a_declared_not_nullable_column_that_still_holds_a_null_stays_nullable(
    example_config: PipelineConfig,
):
    table = pa.table({"flight": [1, None]})

    assert required_where_declared(table, example_config).schema.field("flight").nullable
