"""The FastAPI app behind the Airflow UI plugin ("ML models" view)."""
