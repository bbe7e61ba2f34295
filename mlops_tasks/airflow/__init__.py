"""The Airflow face of mlops_tasks: hooks, thin operators, assets, the DAG factory, notifiers, links."""
