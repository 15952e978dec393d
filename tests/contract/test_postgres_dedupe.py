"""PostgreSQL: two claimers checking the same messageId in two open transactions at once.

The contract suite's concurrent test mostly sees one claim finish before the other starts.
Here the first claimer is held inside its transaction, after it has remembered the messageId
and before it commits (an outside transaction holds a lock on the job row it is about to
lease); the second claimer then checks the same messageId under another key, and must wait
for the first (the conflict on "seen") and then find its job a duplicate.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from heaprelay.queue.postgres import PostgresQueue
from heaprelay.testing.queue_contract import LEASE, T0, job, normalised, ns

pytestmark = pytest.mark.postgres


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_a_claim_waits_for_another_claims_entry_then_skips_its_duplicate(
    pg_url: str,
) -> None:
    async def main() -> None:
        name = f"dedupe_{uuid.uuid4().hex[:12]}"
        first = await PostgresQueue.open(pg_url, schema=name)
        second = await PostgresQueue.open(pg_url, schema=name)
        blocker = await psycopg.AsyncConnection.connect(pg_url)
        watcher = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)

        async def blocked_by(pid: int, query: str) -> int | None:
            """The backend waiting for a lock that ``pid`` holds, running ``query``."""
            cur = await watcher.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE %s = ANY(pg_blocking_pids(pid)) AND query LIKE %s",
                [pid, "%" + query + "%"],
            )
            row = await cur.fetchone()
            return int(row[0]) if row else None

        async def wait_blocked(pid: int, query: str, what: str) -> int:
            found: list[int] = []

            async def check() -> bool:
                got = await blocked_by(pid, query)
                if got is not None:
                    found.append(got)
                return got is not None

            await until(check, what)
            return found[0]

        try:
            await first.append(
                [job(1, key="a", message_id="m"), job(2, key="b", message_id="m")], now=T0
            )
            # Hold job 1's row: the first claim will block when it leases it, after its
            # dedupe check has remembered "m" (uncommitted).
            await blocker.execute(
                f'SELECT id FROM "{name}".jobs WHERE order_key = %s FOR UPDATE', ["a"]
            )
            one = asyncio.ensure_future(first.claim("w1", limit=1, lease_seconds=LEASE, now=T0))
            first_pid = await wait_blocked(
                blocker.info.backend_pid, "UPDATE jobs SET state = 'leased'", "claim 1 to block"
            )
            # The second claim cannot own key a (the first does): it takes key b, and its
            # dedupe check of "m" must wait for the first claim's entry.
            two = asyncio.ensure_future(second.claim("w2", limit=1, lease_seconds=LEASE, now=T0))
            await wait_blocked(first_pid, "INSERT INTO seen", "claim 2 to wait for claim 1")
            assert not two.done()
            await blocker.rollback()
            got_one, got_two = await asyncio.wait_for(asyncio.gather(one, two), 20)
            assert (ns(got_one), ns(got_two)) == ([1], [])
            stats = normalised(await first.stats())
            assert stats["by_state"] == {"leased": 1, "skipped": 1}
            assert stats["by_reason"] == {"duplicate": 1}
        finally:
            await blocker.close()
            await watcher.close()
            await first.close()
            await second.close()
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    asyncio.run(main())
