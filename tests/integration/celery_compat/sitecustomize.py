"""Compatibility shim for the Celery test stack only (put on PYTHONPATH by tests/integration/test_celery.py).

apache-airflow-providers-celery 3.26.0 imports ``retry`` from ``celery.backends.database``, which
celery 5.7.0 removed (its DatabaseBackend now retries internally, ``result_backend_always_retry``),
so ``CeleryExecutor`` cannot even be imported with the pinned pair. Until constraints.txt pins a
matching pair, give the provider an identity ``retry`` decorator. Remove this directory then.
"""

import celery.backends.database as _database

if not hasattr(_database, "retry"):
    _database.retry = lambda fun: fun
