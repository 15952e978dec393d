"""Queue backends for the contract suite: memory, SQLite (a file per test) and PostgreSQL
(a schema per test in the database of ``HEAPRELAY_TEST_PG_URL``)."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.register_assert_rewrite("heaprelay.testing.queue_contract")

from heaprelay.queue.base import Queue  # noqa: E402
from heaprelay.queue.memory import MemoryQueue  # noqa: E402
from heaprelay.testing.queue_contract import QueueFactory  # noqa: E402

BACKENDS = [
    "memory",
    pytest.param(
        "sqlite",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("heaprelay.queue.sqlite") is None,
            reason="heaprelay.queue.sqlite is not written yet",
        ),
    ),
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def queue_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueFactory]:
    backend: str = request.param
    if backend == "memory":
        yield memory_factory()
    elif backend == "sqlite":
        yield sqlite_factory(tmp_path)
    else:
        pg_url: str = request.getfixturevalue("pg_url")
        schemas: list[str] = []
        yield postgres_factory(pg_url, schemas)
        asyncio.run(drop_schemas(pg_url, schemas))


def memory_factory() -> QueueFactory:
    current: list[MemoryQueue] = []

    async def factory(*, fresh: bool = True) -> Queue:
        if fresh or not current:
            current.append(MemoryQueue())
        return current[-1]

    return factory


def sqlite_factory(tmp_path: Path) -> QueueFactory:
    from heaprelay.queue.sqlite import SQLiteQueue

    paths: list[Path] = []

    async def factory(*, fresh: bool = True) -> Queue:
        if fresh or not paths:
            paths.append(tmp_path / f"queue-{len(paths)}.db")
        return await SQLiteQueue.open(paths[-1])

    # SQLite wakes waiters of the same process only (one relay per file); the lead decides
    # whether separate api/worker processes on one SQLite file need more.
    factory.cross_handle_wakeups = False  # type: ignore[attr-defined]
    return factory


def postgres_factory(url: str, schemas: list[str]) -> QueueFactory:
    from heaprelay.queue.postgres import PostgresQueue

    async def factory(*, fresh: bool = True) -> Queue:
        if fresh or not schemas:
            schemas.append(f"contract_{uuid.uuid4().hex[:12]}")
        return await PostgresQueue.open(url, schema=schemas[-1])

    return factory


async def drop_schemas(url: str, schemas: list[str]) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
