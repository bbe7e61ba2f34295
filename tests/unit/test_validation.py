"""Row masks mirror GX's own counts; config expectations are checked when rules are built."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest
from great_expectations import expectations as gxe

from mlops_tasks.config import PipelineConfig
from mlops_tasks.validation import (
    Rule,
    ValidationConfigError,
    bad_row_mask,
    build_rules,
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
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_row_mask_counts_what_gx_counts(rule: Rule):
    [result] = run_gx(FRAME, [rule])
    assert int(bad_row_mask(FRAME, rule).sum()) == result.result["unexpected_count"]


def test_unknown_expectation_type_is_a_config_error(example_config: PipelineConfig):
    broken = example_config.model_copy(
        update={
            "validation": example_config.validation.model_validate(
                {"expectations": [{"type": "expect_magic"}]}
            )
        }
    )
    with pytest.raises(ValidationConfigError, match=r"validation.expectations\[0\] \(expect_magic\): Great"):
        build_rules(broken)


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
