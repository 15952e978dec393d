"""PostgreSQL: the queue's wake-up listener (LISTEN on the schema's channel) is one connection
per queue handle, however many delivery loops wait at once, and it is closed with the queue."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from heaprelay.queue.postgres import PostgresQueue

pytestmark = pytest.mark.postgres


async def listeners(url: str, channel: str) -> int:
    """Backends of this cluster that ran LISTEN on ``channel`` (their last query)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = %s", [f'LISTEN "{channel}"']
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


def test_concurrent_waiters_share_one_listen_connection(pg_url: str) -> None:
    async def main() -> None:
        name = f"listen_{uuid.uuid4().hex[:12]}"
        queue = await PostgresQueue.open(pg_url, schema=name)
        try:
            # Eight delivery loops start waiting at the same moment on a fresh handle.
            await asyncio.gather(*(queue.wait_for_work(0.3) for _ in range(8)))
            assert await listeners(pg_url, queue.channel) == 1
            await asyncio.gather(*(queue.wait_for_work(0.1) for _ in range(8)))
            assert await listeners(pg_url, queue.channel) == 1
        finally:
            await queue.close()
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        assert await listeners(pg_url, queue.channel) == 0

    asyncio.run(main())


def test_waiters_return_at_their_timeout_when_the_listener_cannot_connect(pg_url: str) -> None:
    async def main() -> None:
        name = f"listen_{uuid.uuid4().hex[:12]}"
        queue = await PostgresQueue.open(pg_url, schema=name)
        try:
            good = queue.url
            queue.url = "postgresql://nobody@127.0.0.1:1/none"  # the listener's next connect fails
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(*(queue.wait_for_work(0.2) for _ in range(3)))
            assert loop.time() - started < 10  # returned (the timeout), did not raise
            queue.url = good
            await queue.wait_for_work(0.1)
            assert await listeners(pg_url, queue.channel) == 1
        finally:
            await queue.close()
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    asyncio.run(main())
