"""Every pipeline in configs/ (or $MLOPS_TASKS_CONFIG_DIR) becomes its training, batch inference and
drift monitor DAGs. Parsing imports only Airflow, pydantic and yaml: tests/unit/test_dag_parse_cost.py
keeps it that way."""

from mlops_tasks.airflow.dag_factory import build_dags
from mlops_tasks.config import load_all

for _config in load_all():
    globals().update(build_dags(_config))
