"""Every pipeline in configs/ (or $MLOPS_TASKS_CONFIG_DIR) becomes its training, batch inference and
drift monitor DAGs; a config that cannot be built becomes an error DAG saying why, and the others
still load. Parsing imports Airflow (whose s3:// asset URIs load the Amazon provider and boto3),
pydantic and yaml, and no ML library: tests/unit/test_dag_parse_cost.py keeps it that way."""

from mlops_tasks.airflow.dag_factory import build_all_dags

globals().update(build_all_dags())
