"""Lineage records over the real S3 endpoint: what assemble_record lists, and what read_record refuses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from mlops_tasks import lineage
from mlops_tasks.config import PipelineConfig
from mlops_tasks.errors import DataError
from mlops_tasks.storage import ObjectStore, partition_prefix, publish_manifest
from mlops_tasks.versioning import create_data_version

from .test_model_stage import lineage_record
from .test_versioning import curate

DAY = dt.date(2013, 1, 1)


def stage(store: ObjectStore, cfg: PipelineConfig, day: dt.date, files: list[str]) -> None:
    """The staging manifest ingest publishes: ``source_files`` are the landing files it read."""
    landing = partition_prefix(cfg.prefix, "landing", day)
    publish_manifest(
        store,
        partition_prefix(cfg.prefix, "staging", day),
        [],
        day=day.isoformat(),
        source_files=[{"key": landing + name} for name in files],
    )


def upstream(cfg: PipelineConfig, data_version: dict[str, Any]) -> dict[str, Any]:
    """The LineageOperator's ``upstream``: the results of the training run's tasks."""
    return {
        "data_version": data_version,
        "training": {"run_id": "r1"},
        "export": {"onnx_artifact_uri": "mlflow-artifacts:/1/r1/artifacts/model/model.onnx"},
        "decision": {"promote": True, "reason": "promoted: no champion yet"},
        "registration": {"model_name": cfg.registered_model_name, "version": 1, "promoted": True},
    }


def write_lineage(store: ObjectStore, cfg: PipelineConfig, data_version: dict[str, Any]) -> bytes:
    """Run the lineage task of run1 (again): assemble, write; the stored bytes."""
    record = lineage.assemble_record(store, cfg, airflow_run_id="run1", **upstream(cfg, data_version))
    return store.get_bytes(store.key_of(lineage.write_record(store, cfg, record)))


def test_a_rerun_lineage_task_lists_the_landing_files_of_its_data_version(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    cfg = example_config
    stage(store, cfg, DAY, ["flights_a.csv"])
    curate(store, cfg, DAY, [1, 2])
    version = create_data_version(store, cfg, [DAY])
    first = write_lineage(store, cfg, version)
    # Later a file lands late and the next training run ingests and validates the day again.
    stage(store, cfg, DAY, ["flights_a.csv", "flights_late.csv"])
    curate(store, cfg, DAY, [1, 2, 3])

    again = write_lineage(store, cfg, version)  # run1's lineage task cleared / retried

    assert again == first  # before the fix: flights_late.csv, which the model never saw, was added
    landing = store.uri(partition_prefix(cfg.prefix, "landing", DAY))
    assert lineage.read_record(store, cfg, 1)["landing_files"] == [landing + "flights_a.csv"]


def test_a_models_lineage_keeps_the_validation_report_of_its_data_after_the_day_is_validated_again(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    """Each validation writes its report under a name of its own, which the curated manifest and so
    the data version record; the day's `validation.json` is only the latest."""
    import io

    import pandas as pd

    from mlops_tasks import example
    from mlops_tasks.ingestion import ingest_day
    from mlops_tasks.validation import validate_day

    cfg, day = example_config, dt.date(2013, 3, 1)
    example.seed_landing(store, cfg, day, day)
    ingest_day(store, cfg, day)
    first = validate_day(store, cfg, day)
    version = create_data_version(store, cfg, [day])
    late = pd.read_csv(io.BytesIO(example.landing_csv("flights", day)[0])).head(50).assign(flight=9000)
    late["flight"] += late.index
    store.put_bytes(
        partition_prefix(cfg.prefix, "landing", day) + "flights_late.csv", late.to_csv(index=False).encode()
    )
    ingest_day(store, cfg, day)
    again = validate_day(store, cfg, day)  # the next training run's, after the late file

    write_lineage(store, cfg, version)
    [linked] = lineage.read_record(store, cfg, 1)["validation_reports"]
    assert linked == first["report_json_uri"] != again["report_json_uri"]
    assert store.get_json(store.key_of(linked))["good_rows"] == version["rows"] < again["good_rows"]
    latest = partition_prefix(cfg.prefix, "reports/validation", day) + "validation.json"
    assert store.get_json(latest)["good_rows"] == again["good_rows"]


def recorded_before_landing_files(store: ObjectStore, key: str) -> None:
    old = store.get_json(key)
    del old["landing_files"]
    store.put_json(key, old)


def deleted(store: ObjectStore, key: str) -> None:
    store.delete([key])


@pytest.mark.parametrize("damage", [recorded_before_landing_files, deleted], ids=["old_record", "no_record"])
def test_a_data_version_without_recorded_landing_files_falls_back_to_the_staging_manifests(
    store: ObjectStore, example_config: PipelineConfig, damage: Callable[[ObjectStore, str], None]
) -> None:
    cfg = example_config
    stage(store, cfg, DAY, ["flights_a.csv"])
    curate(store, cfg, DAY, [1, 2])
    version = create_data_version(store, cfg, [DAY])
    damage(store, store.key_of(version["record_uri"]))
    stage(store, cfg, DAY, ["flights_a.csv", "flights_b.csv"])

    record = lineage.assemble_record(store, cfg, **upstream(cfg, version))

    landing = store.uri(partition_prefix(cfg.prefix, "landing", DAY))
    assert record["landing_files"] == [landing + "flights_a.csv", landing + "flights_b.csv"]


def valid_record(**overrides: Any) -> dict[str, Any]:
    return lineage_record(**{"model_version": "3", **overrides})


def without(key: str) -> dict[str, Any]:
    record = valid_record()
    del record[key]
    return record


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        ([valid_record()], "a lineage record is a JSON object, got list"),
        (without("gate"), r"missing keys \['gate'\]"),
        (valid_record(gate={"promote": True}), r"missing keys \['gate.reason'\]"),
        (
            valid_record(validation_reports=["s3://b/p/reports/validation/validation.json"]),
            r"validation_reports \('s3://b/p/reports/validation/validation.json' is not "
            r"\.\.\./date=YYYY-MM-DD/<file>\)",
        ),
        (valid_record(landing_files=[{"key": "x"}]), "landing_files .a list of other things than strings"),
        (valid_record(training_window="2013"), r"training_window \(str, expected dict\)"),
        (valid_record(model_version="4"), "it is the record of v4, not of v3"),
    ],
    ids=["list", "no_gate", "no_gate_reason", "undated_report", "landing_not_uris", "window_str", "other_v"],
)
@pytest.mark.parametrize("version", [3, None], ids=["by_version", "latest"])
def test_a_malformed_stored_record_is_an_error_naming_its_object(
    store: ObjectStore, example_config: PipelineConfig, stored: Any, says: str, version: int | None
) -> None:
    key = lineage.record_key(example_config, example_config.registered_model_name, 3)
    store.put_json(key, stored)

    with pytest.raises(lineage.LineageError, match=says) as raised:
        lineage.read_record(store, example_config, version)

    assert str(raised.value).startswith(f"lineage record {store.uri(key)}: ")
    assert isinstance(raised.value, DataError)  # the UI's and the CLI's one-line errors, not a 500


def test_a_well_formed_stored_record_reads_back_as_written(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    uri = lineage.write_record(store, example_config, valid_record())
    assert lineage.read_record(store, example_config, "3") == store.get_json(store.key_of(uri))


def test_a_version_without_a_record_is_named_with_the_versions_that_have_one(
    store: ObjectStore, example_config: PipelineConfig
) -> None:
    cfg = example_config
    stage(store, cfg, DAY, ["flights_a.csv"])
    curate(store, cfg, DAY, [1, 2])
    write_lineage(store, cfg, create_data_version(store, cfg, [DAY]))  # v1's record

    with pytest.raises(
        FileNotFoundError, match=r"model 'flights_delay' has no lineage record of v7 \(records: v1,"
    ):
        lineage.read_record(store, cfg, 7)
