"""A PostgreSQL database of a test's own on the test server, dropped afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg


@contextlib.contextmanager
def own_database(server_url: str, prefix: str = "heaprelay_test") -> Iterator[str]:
    """Create ``<prefix>_<random>`` on the server of ``server_url`` (the user needs CREATEDB)
    and yield its URL; drop it at the end, closing whatever still uses it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(server_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
