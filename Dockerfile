# The one image of the production-shaped stack (docker-compose.yaml) and of Kubernetes deployments
# (docs/deployment.md): Airflow 3.3.2 with mlops_tasks installed against the repo's lock file, so
# every component, every Celery worker and the MLflow server run exactly the tested versions.
FROM apache/airflow:3.3.2-python3.11

# constraints.txt locks torch to the CPU build (torch==2.13.0+cpu), which lives on PyTorch's index.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

COPY --chown=airflow:root pyproject.toml README.md constraints.txt /opt/mlops-tasks/
COPY --chown=airflow:root mlops_tasks /opt/mlops-tasks/mlops_tasks

RUN pip install --no-cache-dir --extra-index-url "${PIP_EXTRA_INDEX_URL}" \
        --constraint /opt/mlops-tasks/constraints.txt \
        "apache-airflow==${AIRFLOW_VERSION}" \
        /opt/mlops-tasks \
        apache-airflow-providers-celery \
        apache-airflow-providers-postgres \
        psycopg2-binary \
        redis

# DAGs, plugins and pipeline configs are mounted (compose) or baked/ConfigMapped (Kubernetes).
ENV MLOPS_TASKS_CONFIG_DIR=/opt/airflow/configs
# glibc gives every thread that allocates its own malloc arena; a scoring task runs half a dozen
# (prefetch, scorers, writer, uploads), and with one arena each its peak memory grew with the rows
# it scored (1.13x for 10x the rows; 1.05x with 2 arenas, docs/benchmarks.md (c)).
ENV MALLOC_ARENA_MAX=2
