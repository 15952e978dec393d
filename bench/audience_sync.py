"""Audience syncs of a big membership file: ``python bench/audience_sync.py``.

For ``--members`` users (default 100,000) it writes a CSV membership file, then on a fresh
SQLite queue (a temporary file) and, when ``--pg-url`` or ``HEAPRELAY_TEST_PG_URL`` names a
PostgreSQL server, on a fresh schema there (dropped after), times:

- baseline: ``queue.append`` of the same identify jobs the first sync enqueues (what storing
  the updates costs the queue at all, without reading a snapshot or writing one);
- sync 1: the first sync (every member ``true``: diff against an empty snapshot, enqueue,
  snapshot written, one transaction);
- sync 2: ``--churn`` (default 10 %) of the members left and as many new ones entered;
- sync 3: the same member set again (nothing to send).

Reading the file is timed on its own. Prints seconds per step and the jobs it enqueued.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from heaprelay.audiences import read_members, sync_members
from heaprelay.audiences.sync import update_jobs
from heaprelay.config import Config, Destination, Source
from heaprelay.queue.base import Queue
from heaprelay.transform import DestinationSettings

SOURCE = Source("web", "wk", (Destination("heap", DestinationSettings(app_id="1")),))
CONFIG = Config(sources=(SOURCE,))


async def steps(queue: Any, base: Queue, members: dict[str, dict[str, Any]], churn: float) -> None:
    now = time.time()
    jobs = update_jobs(SOURCE, "baseline", 1, sorted(members), [], members, now)
    started = time.perf_counter()
    await base.append(jobs, now=now)
    print(f"  baseline append   {time.perf_counter() - started:7.2f} s  {len(jobs):>9,} jobs")
    users = sorted(members)
    k = int(len(users) * churn)
    second = {u: members[u] for u in users[k:]}
    second.update({f"new-{i}": {} for i in range(k)})
    for label, member_set in (
        ("sync 1 (first)", members),
        ("sync 2 (churn)", second),
        ("sync 3 (same)", second),
    ):
        started = time.perf_counter()
        result = await sync_members(
            queue,
            queue,
            CONFIG,
            name="Bench",
            source="web",
            key=None,
            members=member_set,
            now=time.time(),
        )
        took = time.perf_counter() - started
        print(
            f"  {label:<17} {took:7.2f} s  {result.jobs:>9,} jobs  "
            f"({len(result.entered):,} entered, {len(result.left):,} left, "
            f"{result.unchanged:,} unchanged)"
        )


async def sqlite_run(folder: Path, members: dict[str, dict[str, Any]], churn: float) -> None:
    from heaprelay.queue.sqlite import SQLiteQueue

    print("SQLite")
    queue = await SQLiteQueue.open(folder / "audiences.db")
    base = await SQLiteQueue.open(folder / "baseline.db")
    try:
        await steps(queue, base, members, churn)
    finally:
        await queue.close()
        await base.close()


async def postgres_run(url: str, members: dict[str, dict[str, Any]], churn: float) -> None:
    import psycopg

    from heaprelay.queue.postgres import PostgresQueue

    print("PostgreSQL")
    schemas = [f"bench_aud_{uuid.uuid4().hex[:8]}", f"bench_base_{uuid.uuid4().hex[:8]}"]
    queue = await PostgresQueue.open(url, schema=schemas[0])
    base = await PostgresQueue.open(url, schema=schemas[1])
    try:
        await steps(queue, base, members, churn)
    finally:
        await queue.close()
        await base.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for schema in schemas:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--churn", type=float, default=0.10)
    parser.add_argument("--pg-url", default=os.environ.get("HEAPRELAY_TEST_PG_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        file = folder / "members.csv"
        with file.open("w") as f:
            f.write("user_id,plan\n")
            for i in range(args.members):
                f.write(f"user-{i:07d},{'pro' if i % 3 else 'free'}\n")
        started = time.perf_counter()
        members = read_members(file)
        print(f"read {len(members):,} members from CSV: {time.perf_counter() - started:.2f} s")
        asyncio.run(sqlite_run(folder, members, args.churn))
        if args.pg_url:
            asyncio.run(postgres_run(args.pg_url, members, args.churn))
        else:
            print("PostgreSQL: skipped (no --pg-url / HEAPRELAY_TEST_PG_URL)")


if __name__ == "__main__":
    main()
