"""The walkthrough of docs/new-pipeline.md as a test: a second pipeline, added with one YAML file
(configs/examples/wine_cultivar.yaml, a multiclass task) and its landed data (scikit-learn's wine set
over 30 synthetic days), goes through the unchanged training and batch inference DAGs. Then the DAG
of your own that docs/operators.md shows, copied from the page, scores another day with the champion.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mlops_tasks import stack
from mlops_tasks.config import load_pipeline
from mlops_tasks.datasets import seed_sklearn_landing
from mlops_tasks.storage import partition_prefix
from tests.conftest import REPO, make_store
from tests.e2e.conftest import run_dag

pytestmark = pytest.mark.slow

WALKTHROUGH_CONFIG = REPO / "configs" / "examples" / "wine_cultivar.yaml"
OPERATORS_DOC = REPO / "docs" / "operators.md"
FIRST_DAY = dt.date(2024, 1, 1)
DAYS = 30


@pytest.fixture(scope="module")
def wine_pipeline(
    tmp_path_factory: pytest.TempPathFactory, airflow_db: None, s3_endpoint: str, mlflow_server: str
) -> Iterator[dict]:
    """The documented steps up to the first run: the YAML in a config dir of its own, connections to the
    session's S3 endpoint and MLflow server, 30 days of wine rows landed; then training for 2024-01-29
    (window 2024-01-01..28) and batch inference of 2024-01-30, each once for the module."""
    config_dir = tmp_path_factory.mktemp("wine-configs")
    shutil.copy(WALKTHROUGH_CONFIG, config_dir / WALKTHROUGH_CONFIG.name)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLOPS_TASKS_CONFIG_DIR", str(config_dir))
        for key, value in stack.connection_env(s3_endpoint, mlflow_server).items():
            env.setenv(key, value)
        cfg = load_pipeline("wine_cultivar")
        store = make_store(s3_endpoint, cfg.storage.bucket)
        landed = seed_sklearn_landing(store, cfg, "wine", FIRST_DAY, DAYS)
        training = run_dag("wine_cultivar_training", "2024-01-29")
        inference = run_dag("wine_cultivar_batch_inference", "2024-01-30")
        yield {
            "cfg": cfg,
            "store": store,
            "mlflow": mlflow_server,
            "landed": landed,
            "training": training,
            "inference": inference,
        }


def test_the_walkthrough_config_lands_thirty_days_of_wine_rows(wine_pipeline: dict) -> None:
    assert wine_pipeline["landed"] == {
        "days": 30,
        "objects": 30,
        "rows": 178,
        "bytes": wine_pipeline["landed"]["bytes"],
        "first": "2024-01-01",
        "last": "2024-01-30",
    }


def test_training_dag_registers_a_multiclass_champion(wine_pipeline: dict) -> None:
    from mlops_tasks.registry import champion_info

    assert wine_pipeline["training"].state == "success"
    champion = champion_info(wine_pipeline["cfg"], tracking_uri=wine_pipeline["mlflow"])
    assert champion is not None
    assert champion["data_version"]


def test_batch_inference_publishes_a_probability_per_cultivar(wine_pipeline: dict) -> None:
    from mlops_tasks.inference import read_predictions

    assert wine_pipeline["inference"].state == "success"
    predictions = read_predictions(wine_pipeline["store"], wine_pipeline["cfg"], dt.date(2024, 1, 30))

    assert len(predictions) > 0
    assert {"row_id", "prediction", "score", "model_version"} <= set(predictions.columns)
    probabilities = ["probability_class_0", "probability_class_1", "probability_class_2"]
    assert set(probabilities) <= set(predictions.columns)
    assert set(predictions["prediction"]) <= {"class_0", "class_1", "class_2"}
    assert predictions[probabilities].sum(axis=1).round(4).eq(1.0).all()
    assert (predictions[probabilities].max(axis=1) - predictions["score"]).abs().max() < 1e-6


def documented_dag(doc: Path, file_name: str) -> str:
    """The python block of ``doc`` whose docstring names ``file_name``."""
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(f'"""dags/{file_name}')]
    return block


def test_the_documented_rescore_dag_scores_a_day_with_the_champion(
    wine_pipeline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from mlops_tasks.inference import read_predictions
    from mlops_tasks.registry import champion_info

    (tmp_path / "wine_cultivar_rescore.py").write_text(
        documented_dag(OPERATORS_DOC, "wine_cultivar_rescore.py")
    )
    from airflow import settings

    # the DAG file in a dags folder of its own: dag.test() serializes it from the dags-folder bundle
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(tmp_path))
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    day = dt.date(2024, 1, 29)  # landed, not scored yet: the training window ended the day before
    cfg, store = wine_pipeline["cfg"], wine_pipeline["store"]
    # as production data comes: the cultivar is not known yet (the config's label column is nullable)
    landed = partition_prefix(cfg.prefix, "landing", day) + "wine.csv"
    unlabelled = pd.read_csv(io.BytesIO(store.get_bytes(landed))).drop(columns=["target"])
    store.put_bytes(landed, unlabelled.to_csv(index=False).encode())
    run = bag.dags["wine_cultivar_rescore"].test(
        logical_date=dt.datetime(2024, 2, 1, tzinfo=dt.UTC), run_conf={"day": day.isoformat()}
    )

    assert run.state == "success"
    predictions = read_predictions(store, cfg, day)
    champion = champion_info(cfg, tracking_uri=wine_pipeline["mlflow"])
    curated = store.read_manifest(partition_prefix(cfg.prefix, "curated", day))
    assert len(predictions) == curated["rows"] == len(unlabelled) > 0
    assert set(predictions["model_version"].astype(str)) == {str(champion["version"])}
