"""PostgreSQL and Redis on loopback for the scale-out and fault tests: a throwaway database per use.

Also ``worker_hostname``: Airflow's ``[core] hostname_callable`` for Celery workers started by the
tests. Both workers run on this one machine, so the default (the FQDN) would not tell them apart.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def worker_hostname() -> str:
    """The ``MLOPS_WORKER_NAME`` of the worker's environment (set per worker by the test)."""
    return os.environ["MLOPS_WORKER_NAME"]


@contextmanager
def postgres_database(prefix: str = "mlops_test") -> Iterator[str]:
    """CREATE a fresh database, yield its SQLAlchemy URL (``postgresql://``), DROP it on exit."""
    import psycopg2

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def redis_database() -> Iterator[str]:
    """An empty Redis db number (one not used by anyone else right now), FLUSHDB'd on exit."""
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        if client.dbsize() == 0 and client.set("mlops-tests-lock", "1", nx=True):
            break
        client.close()
    else:
        raise RuntimeError(f"no empty Redis database on {REDIS_HOST}:{REDIS_PORT} (1..15 all in use)")
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
    finally:
        client.flushdb()
        client.close()
