"""Pipeline configs load typed, and every invalid value is reported with its file and field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from mlops_tasks.config import (
    RESERVED_COLUMNS,
    ConfigError,
    PipelineConfig,
    config_paths,
    load_config,
    load_configs,
    load_pipeline,
    render_reference,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "flights_delay.yaml"


def write_variant(tmp_path: Path, **changes: object) -> Path:
    """The example config with dotted-path changes applied (value None deletes the key)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def write_mutated(tmp_path: Path, mutate: object, name: str = "variant.yaml") -> Path:
    """The example config changed by ``mutate(raw)`` (for changes dotted paths cannot say)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    mutate(raw)  # type: ignore[operator]
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_example_config_loads_with_typed_values() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.name == "flights_delay"
    assert cfg.target.positive_when.greater_than == 15
    assert "temp" in {c.name for c in cfg.data.all_columns()}
    assert cfg.dag_id("training") == "flights_delay_training"


def test_every_shipped_config_loads() -> None:
    assert [c.name for c in load_configs(config_paths(REPO / "configs")).values()]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: pipeline config file does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_is_one_line_naming_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nowner: [unclosed\nretries: 2\n")
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    assert str(failure.value) == (
        f"{path}: not valid YAML: while parsing a flow sequence; expected ',' or ']', but got ':' "
        "at line 3, column 8"
    )


def test_a_name_or_bucket_of_the_wrong_shape_is_explained_in_words(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"field 'name': must be a lowercase identifier: a letter a-z"):
        load_config(write_variant(tmp_path, name="Flights-Delay"))
    with pytest.raises(ConfigError, match=r"field 'storage.bucket': must be an S3 bucket name: 3-63 "):
        load_config(write_variant(tmp_path, **{"storage.bucket": "My_Bucket"}))


def test_a_yaml_boolean_key_names_its_mapping_and_says_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "on.yaml"
    path.write_text(EXAMPLE.read_text().replace("keys: [origin, time_hour]", "on: [origin, time_hour]", 1))
    with pytest.raises(
        ConfigError, match=r"field 'data.joins.0': a key reads as the boolean true .*quote the key"
    ):
        load_config(path)


def test_out_of_range_value_names_file_field_and_value(tmp_path: Path) -> None:
    path = write_variant(tmp_path, **{"model.epochs": -3})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "variant.yaml" in str(err.value)
    assert "field 'model.epochs'" in str(err.value)
    assert "(got -3)" in str(err.value)


def test_unknown_key_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    path = write_variant(tmp_path, **{"model.epoch": 3})
    with pytest.raises(ConfigError, match=r"field 'model\.epoch': Extra inputs are not permitted"):
        load_config(path)


def test_missing_required_section_is_named(tmp_path: Path) -> None:
    path = write_variant(tmp_path, target=None)
    with pytest.raises(ConfigError, match=r"field 'target': Field required"):
        load_config(path)


def test_feature_that_is_not_a_column_is_rejected(tmp_path: Path) -> None:
    path = write_variant(tmp_path, **{"features.numeric": ["distance", "no_such_column"]})
    with pytest.raises(ConfigError, match=r"no_such_column"):
        load_config(path)


def test_target_used_as_feature_is_a_label_leak(tmp_path: Path) -> None:
    path = write_variant(tmp_path, **{"features.numeric": ["distance", "dep_delay"]})
    with pytest.raises(ConfigError, match="label leak"):
        load_config(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "features.numeric",
            ["distance", "temp", "distance"],
            r"numeric features \['distance'\] are listed more",
        ),
        ("data.key", ["year", "month", "year"], r"key columns \['year'\] are listed more than once"),
    ],
)
def test_a_column_listed_twice_is_rejected(
    tmp_path: Path, field: str, value: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_variant(tmp_path, **{field: value}))


@pytest.mark.parametrize(
    "prefix", ["../other", "/abs", "a/../../b", "a\\b", "team//flights", "./flights", "a/./b"]
)
def test_prefix_path_traversal_is_rejected(tmp_path: Path, prefix: str) -> None:
    path = write_variant(tmp_path, **{"storage.prefix": prefix})
    with pytest.raises(ConfigError, match=r"field 'storage\.prefix'"):
        load_config(path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_evaluation_window_must_fit_in_training_window(tmp_path: Path) -> None:
    path = write_variant(tmp_path, **{"training.evaluation_days": 90})
    with pytest.raises(ConfigError, match="evaluation_days"):
        load_config(path)


def test_reference_documents_every_section() -> None:
    text = render_reference()
    for section in ("DataSpec", "ValidationSpec", "ModelSpec", "GateSpec", "InferenceSpec", "DriftSpec"):
        assert f"## `{section}`" in text
    assert "`max_bad_row_fraction`" in text


def test_reference_shows_each_fields_limits_next_to_its_type() -> None:
    text = render_reference()
    assert "| `epochs` | integer (>= 1, <= 1000) | 10 | Most passes" in text
    assert "| `learning_rate` | number (> 0, <= 1) | 0.001 |" in text
    assert "| `csv_delimiter` | string (1 character) |" in text
    assert "| `connection_id` | string (<= 250 characters) |" in text
    assert "| `embedding_dim` | integer (>= 1, <= 256) \\| null | null |" in text
    assert "| `name` | string (not empty) | required |" in text


def test_committed_reference_is_up_to_date() -> None:
    assert (REPO / "docs" / "configuration.md").read_text() == render_reference()


# -- mistakes that used to load and failed on the first run ------------------------------------------

WEATHER = "data.joins.0"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (
            {"data.source.encoding": "utf-9"},
            r"field 'data\.source\.encoding': encoding is not a known text codec",
        ),
        ({"data.source.encoding": "base64"}, r"'base64' is not a text encoding"),
        (
            {"validation.min_rows": 100, "validation.max_rows": 10},
            r"fields 'validation\.min_rows' \+ 'validation\.max_rows': min_rows \(100\) is greater than "
            r"max_rows \(10\)",
        ),
        (
            {f"{WEATHER}.columns.1.type": "string"},
            r"field 'data\.joins\.0\.columns\.1\.type': join 'weather': key column 'time_hour' is string in "
            r"the join's columns but timestamp in data",
        ),
        (
            {f"{WEATHER}.columns.2.name": "distance"},
            r"field 'data\.joins\.0\.columns\.2\.name': join 'weather': column 'distance' is already a column "
            r"of data\.columns",
        ),
        (
            {"data.columns.11.allowed": ["1", "2"]},
            r"field 'data\.columns\.11\.allowed': column 'hour': allowed only applies to category/string "
            r"columns, not int",
        ),
        (
            {"features.numeric": ["distance", "carrier"], "features.categorical": ["origin", "dest"]},
            r"field 'features\.numeric': 'carrier' \(category\) cannot be read as numbers by the model",
        ),
        (
            {"features.numeric": ["distance", "time_hour"]},
            r"field 'features\.numeric': 'time_hour' \(timestamp\) cannot be read as numbers",
        ),
        (
            {"target.column": "dest", "features.categorical": ["carrier", "origin"]},
            r"field 'target\.positive_when': positive_when compares numbers, but target column 'dest' is "
            r"category",
        ),
        (
            {
                "target": {"task": "regression", "column": "dest"},
                "features.categorical": ["carrier", "origin"],
                "gate": {"primary_metric": "rmse"},
            },
            r"field 'target\.task': regression needs a numeric target, but column 'dest' is category",
        ),
        ({"end_date": "2012-12-31"}, r"field 'end_date': 2012-12-31 is before start_date \(2013-01-01\)"),
        ({"training.schedule": "@dayly"}, r"field 'training\.schedule': schedule must be a 5-field cron"),
        ({"inference.schedule": "61 * * * *"}, r"field 'inference\.schedule': schedule is not a valid cron"),
        ({"drift.schedule": "0 0 * * * 30"}, r"field 'drift\.schedule': schedule must be a 5-field cron"),
        (
            {"drift.critical_columns": ["temp", "temp"]},
            r"field 'drift\.critical_columns': \['temp'\] listed more than once",
        ),
        (
            {"drift.min_rows": 60_000},
            r"fields 'drift\.min_rows' \+ 'drift\.sample_rows': min_rows \(60000\) is above sample_rows "
            r"\(20000\)",
        ),
        (
            {"drift.critical_columns": ["time_hour"]},
            r"field 'drift\.critical_columns': timestamp column\(s\) \['time_hour'\] have values that are new "
            r"every day",
        ),
        (
            {"features.categorical": ["carrier", "time_hour"]},
            r"field 'features\.categorical': timestamp column\(s\) \['time_hour'\]",
        ),
        (
            {"training.schedule": "0 0 30 2 *"},
            r"field 'training\.schedule': schedule '0 0 30 2 \*' never fires",
        ),
        (
            {"inference.schedule": "@weekly"},
            r"field 'inference\.schedule': schedule '@weekly' fires up to 7 days",
        ),
        (
            {"drift.schedule": "0 6 * * MON-FRI"},
            r"field 'drift\.schedule': schedule '0 6 \* \* MON-FRI' fires up to 3 days apart, but each run "
            r"processes one day",
        ),
        ({"inference.schedule": "@monthly"}, r"field 'inference\.schedule': schedule '@monthly' fires up to"),
        (
            {"inference.schedule": "@hourly"},
            r"field 'inference\.schedule': schedule '@hourly' fires more than once a day \(runs 1:00:00 apart\)",
        ),
        (
            {"drift.schedule": "0 */12 * * *"},
            r"field 'drift\.schedule': schedule '0 \*/12 \* \* \*' fires more than once",
        ),
        (
            {"data.columns.0.name": "score", "data.key": ["score", "month", "day", "carrier", "flight"]},
            r"field 'data\.key': columns \['score'\] are named like the columns batch inference adds",
        ),
        ({"gate.min_value": 80}, r"field 'gate\.min_value': 80\.0 is outside 0\.\.1, the range of roc_auc"),
        (
            {"data.columns.0.min": float("nan")},
            r"field 'data\.columns\.0\.min': Input should be a finite number",
        ),
        ({"model.seed": -1}, r"field 'model\.seed': Input should be greater than or equal to 0"),
        ({"mlflow.registered_model": "team/wine"}, r"field 'mlflow\.registered_model': String should match"),
        (
            {"mlflow.registered_model": 'it\'s "wine"'},
            r"field 'mlflow\.registered_model': a registered model name may hold ' or \" but not both",
        ),
        ({"storage.connection_id": "mlops s3"}, r"field 'storage\.connection_id': String should match"),
        (
            {
                "data.columns.9.type": "string",
                "features.numeric": ["distance", "dest"],
                "features.categorical": ["carrier"],
            },
            r"field 'features\.numeric': 'dest' \(string\) cannot be read as numbers by the model",
        ),
        (
            {"target": {"task": "binary", "column": "origin"}, "features.categorical": ["carrier", "dest"]},
            r"field 'target\.task': binary needs 2 classes, but target column 'origin' allows 3 values",
        ),
        (
            {"training.max_rows": 100},
            r"field 'training\.max_rows': 100 leaves fewer than 100 rows to train on.*use at least 113",
        ),
        ({"data.columns.9.allowed": []}, r"field 'data\.columns\.9\.allowed': List should have at least 1"),
        (
            {f"{WEATHER}.columns.2.name": "temp "},
            r"field 'data\.joins\.0\.columns\.2\.name': column name 'temp ' has whitespace around it; "
            r"write 'temp'",
        ),
        ({"data.source.csv_delimiter": "\n"}, r"csv_delimiter '\\n' cannot separate fields"),
    ],
    ids=[
        "unknown-encoding",
        "non-text-codec",
        "min-rows-above-max-rows",
        "join-key-type-differs",
        "join-column-clashes-with-main-column",
        "allowed-on-int",
        "category-as-numeric-feature",
        "timestamp-as-numeric-feature",
        "positive-when-on-category",
        "regression-on-category",
        "end-before-start",
        "schedule-typo",
        "cron-out-of-range",
        "cron-with-seconds",
        "critical-column-twice",
        "drift-min-rows-above-sample",
        "timestamp-as-critical-column",
        "timestamp-as-categorical-feature",
        "cron-that-never-fires",
        "weekly-inference",
        "drift-on-weekdays-only",
        "monthly-inference",
        "hourly-inference",
        "twice-daily-drift",
        "key-named-like-a-prediction-column",
        "gate-floor-as-percentage",
        "nan-threshold",
        "negative-seed",
        "mlflow-model-name-with-slash",
        "mlflow-model-name-with-both-quotes",
        "connection-id-with-space",
        "string-as-numeric-feature",
        "binary-target-with-three-values",
        "training-cap-below-the-minimum",
        "no-allowed-value",
        "name-with-trailing-space",
        "newline-as-delimiter",
    ],
)
def test_mistakes_that_would_fail_later_are_rejected_at_load(
    tmp_path: Path, changes: dict[str, object], error: str
) -> None:
    with pytest.raises(ConfigError, match=r"variant\.yaml: invalid pipeline config: .*" + error):
        load_config(write_variant(tmp_path, **changes))


@pytest.mark.parametrize("name", ["_source_line", "_day", "_source_file", "_ingest_error", "_join_error"])
def test_a_column_named_like_a_lineage_column_is_rejected(tmp_path: Path, name: str) -> None:
    path = write_mutated(tmp_path, lambda raw: raw["data"]["columns"].append({"name": name, "type": "int"}))
    with pytest.raises(
        ConfigError, match=rf"field 'data\.columns\.14\.name': column name '{name}' is reserved"
    ):
        load_config(path)


def test_the_reserved_names_cover_every_lineage_column_ingest_adds() -> None:
    from mlops_tasks.ingestion import LINEAGE_COLUMNS

    assert set(LINEAGE_COLUMNS) <= set(RESERVED_COLUMNS)


def test_a_config_without_a_row_key_is_rejected(tmp_path: Path) -> None:
    """The drift monitor and the shadow report join on data.key: without it they failed on every run."""
    path = write_mutated(tmp_path, lambda raw: raw["data"].pop("key"))
    with pytest.raises(ConfigError, match=r"field 'data\.key': Field required"):
        load_config(path)


REPEATED_GATE = "gate:\n  primary_metric: accuracy\n"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (REPEATED_GATE, r"not valid YAML: .*key 'gate' appears twice in one mapping"),
        ("", r"the pipeline config file is empty"),
        ("[" * 5000, r"not valid YAML"),
        ("? [a, b]\n: 1\n", r"not valid YAML: (?s:.*)found unhashable key"),
    ],
    ids=["repeated-key", "empty", "nested-too-deep", "list-as-key"],
)
def test_yaml_that_would_load_wrongly_or_crash_is_a_config_error(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(EXAMPLE.read_text() + text if text == REPEATED_GATE else text)
    with pytest.raises(ConfigError, match=r"p\.yaml: " + error):
        load_config(path)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "merged.yaml"
    path.write_text(EXAMPLE.read_text().replace("export:\n", "export:\n  <<: {parity_rows: 512}\n", 1))
    assert load_config(path).export.parity_rows == 512


def test_a_yaml_boolean_where_text_is_expected_says_to_quote_it(tmp_path: Path) -> None:
    path = write_variant(tmp_path, **{"data.columns.8.allowed": [False, "JFK", "LGA"]})
    with pytest.raises(
        ConfigError, match=r"\(got False\); YAML reads unquoted yes/no/on/off/true/false as booleans"
    ):
        load_config(path)


def test_two_joins_with_one_name_are_rejected(tmp_path: Path) -> None:
    def second_weather(raw: dict) -> None:
        raw["data"]["joins"].append({**raw["data"]["joins"][0], "file_pattern": "wx*"})

    with pytest.raises(ConfigError, match=r"field 'data\.joins': names \['weather'\] are used twice"):
        load_config(write_mutated(tmp_path, second_weather))


def test_a_category_and_a_string_join_key_match(tmp_path: Path) -> None:
    # ingest stores both as strings, so the join works
    cfg = load_config(write_variant(tmp_path, **{f"{WEATHER}.columns.0.type": "string"}))
    assert cfg.data.joins[0].columns[0].type == "string"


@pytest.mark.parametrize("schedule", ["*/15 * * * *", "0 6 * * MON-FRI", "@hourly", "@yearly", None])
def test_cron_expressions_airflow_presets_and_no_schedule_are_accepted(
    tmp_path: Path, schedule: str | None
) -> None:
    path = write_mutated(tmp_path, lambda raw: raw["training"].update(schedule=schedule))
    assert load_config(path).training.schedule == schedule


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16", "cp1252"])
def test_text_codecs_are_accepted(tmp_path: Path, encoding: str) -> None:
    assert (
        load_config(write_variant(tmp_path, **{"data.source.encoding": encoding})).data.source.encoding
        == encoding
    )


def test_two_pipelines_on_one_storage_location_are_rejected_naming_both_files(tmp_path: Path) -> None:
    write_mutated(tmp_path, lambda raw: None, "a.yaml")

    def other_name_same_prefix(raw: dict) -> None:
        raw["name"] = raw["mlflow"]["registered_model"] = "other"
        raw["storage"]["prefix"] = "flights_delay"

    write_mutated(tmp_path, other_name_same_prefix, "b.yaml")
    with pytest.raises(ConfigError) as err:
        load_configs(config_paths(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'b.yaml'}: fields 'storage.bucket' + 'storage.prefix'")
    assert "s3://mlops/flights_delay/" in message and str(tmp_path / "a.yaml") in message


@pytest.mark.parametrize(("first", "second"), [("shared", "shared/reports/b"), ("team/a/b", "team/a")])
def test_a_pipeline_inside_another_s_storage_area_is_rejected(
    tmp_path: Path, first: str, second: str
) -> None:
    """Nested, the outer pipeline's report links would serve the inner one's reports to whoever may
    read the outer pipeline, and its sweeps would see the inner one's objects."""
    write_mutated(tmp_path, lambda raw: raw["storage"].update(prefix=first), "a.yaml")

    def inside(raw: dict) -> None:
        raw["name"] = raw["mlflow"]["registered_model"] = "other"
        raw["storage"]["prefix"] = second

    write_mutated(tmp_path, inside, "b.yaml")
    with pytest.raises(ConfigError, match=f"s3://mlops/{second}/ overlaps s3://mlops/{first}/"):
        load_configs(config_paths(tmp_path))


def test_an_experiment_may_be_named_like_a_workspace_path(tmp_path: Path) -> None:
    for name in ("/Shared/flights_delay", "team-a/flights:v2"):
        assert load_config(write_variant(tmp_path, **{"mlflow.experiment": name})).experiment_name == name
    with pytest.raises(ConfigError, match=r"field 'mlflow\.experiment'"):
        load_config(write_variant(tmp_path, **{"mlflow.experiment": "  "}))


def test_two_pipelines_sharing_an_mlflow_model_are_rejected_unless_their_servers_differ(
    tmp_path: Path,
) -> None:
    """A copied config renamed but still naming the original's registered model would gate against
    and serve the other pipeline's champion."""
    write_mutated(tmp_path, lambda raw: None, "a.yaml")
    write_mutated(tmp_path, lambda raw: raw.update(name="flights_delay_v2"), "b.yaml")
    with pytest.raises(ConfigError) as err:
        load_configs(config_paths(tmp_path))
    assert str(err.value).startswith(
        f"{tmp_path / 'b.yaml'}: field 'mlflow.registered_model': MLflow registered model 'flights_delay' "
        f"(connection 'mlops_mlflow') is already used by {tmp_path / 'a.yaml'}"
    )

    def on_another_server(raw: dict) -> None:
        raw["name"] = "flights_delay_v2"
        raw["mlflow"]["connection_id"] = "mlops_mlflow_eu"

    write_mutated(tmp_path, on_another_server, "b.yaml")
    assert [c.name for c in load_configs(config_paths(tmp_path)).values()] == [
        "flights_delay",
        "flights_delay_v2",
    ]


def test_two_configs_with_one_pipeline_name_are_rejected_naming_both_files(tmp_path: Path) -> None:
    write_mutated(tmp_path, lambda raw: None, "a.yaml")
    write_mutated(tmp_path, lambda raw: raw["storage"].update(prefix="elsewhere"), "b.yaml")
    with pytest.raises(
        ConfigError, match=r"b\.yaml: field 'name': pipeline name 'flights_delay' is already used"
    ):
        load_configs(config_paths(tmp_path))


@pytest.mark.parametrize("schedule", ["0 6 * * *", "30 23 * * *", "@daily", "0 0 * * *", None])
def test_inference_and_drift_schedules_that_fire_once_a_day_are_accepted(
    tmp_path: Path, schedule: str | None
) -> None:
    path = write_mutated(
        tmp_path, lambda raw: [raw[s].update(schedule=schedule) for s in ("inference", "drift")]
    )
    cfg = load_config(path)
    assert (cfg.inference.schedule, cfg.drift.schedule) == (schedule, schedule)


def test_a_pipelines_tasks_load_its_config_whatever_the_other_configs_hold(tmp_path: Path) -> None:
    """Tasks find their config as the DAG file built it: by name even in a file named otherwise,
    unharmed by another file's mistake, and of two files claiming one name the accepted one."""
    write_mutated(tmp_path, lambda raw: None, "flights-delay.yaml")
    (tmp_path / "other.yaml").write_text("name: other\n")
    write_mutated(tmp_path, lambda raw: raw["storage"].update(bucket="team-b"), "flights_delay.yaml")
    cfg = load_pipeline("flights_delay", tmp_path)
    assert cfg.storage.bucket == "mlops"  # flights-delay.yaml comes first; flights_delay.yaml is rejected
    with pytest.raises(ConfigError, match=r"other\.yaml: invalid pipeline config"):
        load_pipeline("other", tmp_path)
    with pytest.raises(ConfigError, match=r"no pipeline named 'missing'"):
        load_pipeline("missing", tmp_path)


def test_a_missing_config_directory_is_an_error_naming_it_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops_tasks.config import CONFIG_DIR_ENV, require_config_dir

    assert require_config_dir(REPO / "configs") == REPO / "configs"
    typo = tmp_path / "cofnigs"
    monkeypatch.setenv(CONFIG_DIR_ENV, str(typo))
    with pytest.raises(ConfigError, match="does not exist") as err:
        require_config_dir()
    assert str(typo) in str(err.value) and "$MLOPS_TASKS_CONFIG_DIR" in str(err.value)
    (tmp_path / "file.yaml").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        require_config_dir(tmp_path / "file.yaml")
    # not set: the message says the default (next to the package) was used
    monkeypatch.delenv(CONFIG_DIR_ENV)
    monkeypatch.setattr("mlops_tasks.config.DEFAULT_CONFIG_DIR", typo)
    with pytest.raises(ConfigError, match=r"\$MLOPS_TASKS_CONFIG_DIR \(not set, so the default"):
        require_config_dir()


def test_a_config_dumped_and_loaded_again_is_the_same(example_config: PipelineConfig) -> None:
    """Defaults such as storage.prefix (None: the pipeline's name) go through the validators when a
    config is read back from its dump (tests, the UI, a config copied with model_dump)."""
    assert PipelineConfig.model_validate(example_config.model_dump()) == example_config


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (
            "start_date: 2013-01-01",
            "start_date: 2024-02-30",
            r"field 'start_date' \(line 8\): 2024-02-30 is not a real date \(day is out of range for month\)",
        ),
        (
            "start_date: 2013-01-01",
            "start_date: 2024-13-01",
            r"field 'start_date' \(line 8\): 2024-13-01 is not a real date \(month must be in 1\.\.12\)",
        ),
        ("end_date: 2013-12-31", "end_date: 2013-02-29", r"field 'end_date' \(line 9\): 2013-02-29 is not"),
        (
            "start_date: 2013-01-01",
            "start_date: 2013-01-01 24:00:00",
            r"field 'start_date' \(line 8\): 2013-01-01 24:00:00 is not a real date and time",
        ),
        (
            'regex: "^[A-Z]{3}$"}',
            'regex: "^[A-Z]{3}$", since: 2013-06-31}',
            r"field 'validation\.expectations\.0\.kwargs\.since' \(line 68\): 2013-06-31 is not a real date",
        ),
    ],
    ids=["30-february", "month-13", "end-date", "hour-24", "in-a-list"],
)
def test_an_impossible_date_names_its_field_and_line(tmp_path: Path, old: str, new: str, error: str) -> None:
    """PyYAML parses dates itself and fails on an impossible one: that was "not valid YAML" with no
    field and no line."""
    path = tmp_path / "dated.yaml"
    path.write_text(EXAMPLE.read_text().replace(old, new, 1))
    with pytest.raises(ConfigError, match=r"dated\.yaml: invalid pipeline config: " + error):
        load_config(path)


def test_an_impossible_date_merged_into_a_mapping_is_named_as_the_field_it_becomes(tmp_path: Path) -> None:
    path = tmp_path / "merged.yaml"
    text = EXAMPLE.read_text().replace("start_date: 2013-01-01\n", "")
    path.write_text(text + "dates: &dates {start_date: 2013-02-30}\n<<: *dates\n")
    line = len(text.splitlines()) + 1  # where the date is written
    with pytest.raises(ConfigError, match=rf"field 'start_date' \(line {line}\): 2013-02-30 is not a real"):
        load_config(path)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("retries: 2", "retries: yes", "retries"),
        ("epochs: 8", "epochs: true", "model.epochs"),
        ("min: 2013, max: 2013}", "min: on, max: 2013}", "data.columns.0.min"),
        ("hidden_layers: [128, 64]", "hidden_layers: [128, on]", "model.hidden_layers"),
    ],
)
def test_a_yaml_boolean_where_a_number_is_expected_is_refused(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    """pydantic reads True as 1: `epochs: true` trained one epoch, `retries: yes` retried once."""
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "p.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(
        ConfigError,
        match=rf"field '{re.escape(field)}': Input should be a number, not a boolean.*YAML reads unquoted "
        r"yes/no/on/off/true/false as booleans: write a number",
    ):
        load_config(path)


def number_fields(model: BaseModel, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of every number (or list of numbers) field of ``model`` and of the models in it, set or not."""
    for name, field in type(model).model_fields.items():
        value, here = getattr(model, name), (*path, name)
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, BaseModel) for v in items):
            for i, item in enumerate(items):
                yield from number_fields(item, (*here, i) if isinstance(value, list) else here)
        elif {int, float} & set(flat_types(field.annotation)):
            yield here


def flat_types(annotation: object) -> list[object]:
    return [annotation, *(t for arg in get_args(annotation) for t in flat_types(arg))]


def test_no_number_field_of_any_section_takes_a_boolean(example_config: PipelineConfig) -> None:
    """Every number field, including ones added later, refuses true/false: the rule is on the base model."""
    paths = list(number_fields(example_config))
    assert ("retries",) in paths and ("model", "hidden_layers") in paths and ("gate", "min_value") in paths
    for path in paths:
        raw = example_config.model_dump()
        node = raw
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = [True] if isinstance(node[path[-1]], list) else True
        with pytest.raises(ValidationError) as err:
            PipelineConfig.model_validate(raw)
        assert [(e["loc"], e["type"]) for e in err.value.errors()] == [(path, "bool_for_number")]


def test_every_shipped_and_example_config_still_loads() -> None:
    for path in [EXAMPLE, *sorted((REPO / "configs" / "examples").glob("*.yaml"))]:
        assert load_config(path).name


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (
            {"target.column": "targt"},
            r"field 'target\.column': 'targt' is not a column of data\.columns or a join",
        ),
        (
            {"gate.primary_metric": "rmse"},
            r"field 'gate\.primary_metric': binary pipelines \(target\.task\) cannot gate on rmse, a regression "
            r"error; use one of roc_auc, pr_auc, log_loss, accuracy, f1",
        ),
        (
            {"target": {"task": "regression", "column": "dep_delay"}},
            r"field 'gate\.primary_metric': regression pipelines \(target\.task\) gate on rmse or mae, not roc_auc",
        ),
        (
            {"features.numeric": ["distance", "dep_delay"]},
            r"fields 'target\.column' \+ 'features\.numeric': target column 'dep_delay' is also a feature",
        ),
        (
            {"features.categorical": ["carrier", "nope"]},
            r"field 'features\.categorical': features \['nope'\]",
        ),
        (
            {"drift.critical_columns": ["nope"]},
            r"field 'drift\.critical_columns': \['nope'\] are not columns",
        ),
        (
            {"training.evaluation_days": 90},
            r"fields 'training\.evaluation_days' \+ 'training\.window_days': evaluation_days \(90\) must be",
        ),
        ({"data.key": ["year", "nope"]}, r"field 'data\.key': key columns \['nope'\] are not declared"),
        ({"target.task": "multiclass"}, r"field 'target\.positive_when': positive_when only applies to task"),
        (
            {"data.columns.9.min": 1},
            r"field 'data\.columns\.9\.min': column 'dest': min/max only apply to int/float columns, not category",
        ),
        (
            {"data.columns.1.min": 12, "data.columns.1.max": 1},
            r"fields 'data\.columns\.1\.min' \+ 'data\.columns\.1\.max': column 'month': min \(12\.0\) is greater",
        ),
        (
            {f"{WEATHER}.keys": ["origin", "nope"]},
            r"field 'data\.joins\.0\.keys': join 'weather': key column 'nope' is not a main column",
        ),
    ],
    ids=[
        "target-not-a-column",
        "classifier-gating-on-rmse",
        "regression-gating-on-roc-auc",
        "label-leak",
        "unknown-categorical-feature",
        "unknown-critical-column",
        "evaluation-longer-than-window",
        "key-not-a-column",
        "positive-when-on-multiclass",
        "min-on-a-category",
        "min-above-max",
        "join-key-not-a-main-column",
    ],
)
def test_a_rule_across_fields_names_the_fields_first(
    tmp_path: Path, changes: dict[str, object], error: str
) -> None:
    """A model validator's error is located at its model (or nowhere, at the top level): the
    message still starts with the path of the field(s) to fix."""
    with pytest.raises(ConfigError, match=r"variant\.yaml: invalid pipeline config: " + error):
        load_config(write_variant(tmp_path, **changes))
