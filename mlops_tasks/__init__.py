"""mlops_tasks: a production-grade ML model lifecycle on Apache Airflow 3."""

__version__ = "0.1.0"
