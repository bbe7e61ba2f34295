"""Pipeline configs load typed, and every invalid value is reported with its file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_tasks.config import ConfigError, load_all, load_config, render_reference

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


def test_example_config_loads_with_typed_values() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.name == "flights_delay"
    assert cfg.target.positive_when.greater_than == 15
    assert "temp" in {c.name for c in cfg.data.all_columns()}
    assert cfg.dag_id("training") == "flights_delay_training"


def test_every_shipped_config_loads() -> None:
    assert [c.name for c in load_all(REPO / "configs")]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: pipeline config file does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
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


@pytest.mark.parametrize("prefix", ["../other", "/abs", "a/../../b", "a\\b"])
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


def test_committed_reference_is_up_to_date() -> None:
    assert (REPO / "docs" / "configuration.md").read_text() == render_reference()
