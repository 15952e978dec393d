#!/usr/bin/env python3
"""Audiences over stored events: how long a rule takes to evaluate on a large history.

    .venv/bin/python bench/audiences.py [--backend sqlite,postgresql] [--events 1000000]
        [--users 100000] [--pg-url URL]

Per backend: ``--events`` track events of ``--users`` users (and one identify with traits a
user) are written straight into a fresh store through ``Queue.append(history=...)`` (not
through HTTP), in appends of 10,000; then the rule "Order Completed at least 2 times within
30 days, plan = pro", the same without the trait, and "Product Viewed at least 3 times in
60 days" (40 % of the history) are each evaluated three times with the store's SQL
(``history_members``). Printed next to them, two baselines: the same member set computed by
brute force in Python over the events held in memory, and the rule without the trait counted
by a full scan of the table (SQLite: unary ``+`` on the columns; PostgreSQL: index scans off); both
checked equal. Also the store's bytes per stored
event (SQLite: the growth of the file after a checkpoint, traits included; PostgreSQL:
``pg_total_relation_size`` of the history and the traits tables after ``VACUUM ANALYZE``).
Goal: under 10 s an evaluation on each backend. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from heaprelay.queue.base import HistoryEvent, MemberQuery, Queue, trait_matches

DAY = 86400.0
NOW = 1_780_000_000.0
EVENTS = ("Order Completed", "Product Viewed", "Product Viewed", "Cart Viewed", "Signed In")
CHUNK = 10_000


def history(events: int, users: int, seed: int = 15) -> list[HistoryEvent]:
    """Identifies (one a user, plan pro or free) then track events over the last 60 days."""
    rng = random.Random(seed)
    out = [
        HistoryEvent("web", f"user-{u:06d}", "", NOW - 90 * DAY, orjson.dumps({"plan": plan}))
        for u in range(users)
        for plan in [rng.choice(("pro", "free", "free"))]
    ]
    for _ in range(events):
        user = f"user-{rng.randrange(users):06d}"
        ts = NOW - rng.random() * 60 * DAY
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))  # as the SDKs make them
        out.append(HistoryEvent("web", user, rng.choice(EVENTS), ts, None, message_id))
    return out


def brute_force(events: list[HistoryEvent], query: MemberQuery) -> set[str]:
    counts: dict[str, int] = {}
    traits: dict[str, dict[str, object]] = {}
    for e in events:
        if e.traits is not None:
            traits.setdefault(e.user_id, {}).update(orjson.loads(e.traits))
        elif e.event == query.event and query.start <= e.ts <= query.end:
            counts[e.user_id] = counts.get(e.user_id, 0) + 1  # messageIds are unique here
    return {
        u
        for u, n in counts.items()
        if n >= query.at_least
        and all(k in traits.get(u, {}) and trait_matches(traits[u][k], v) for k, v in query.traits)
    }


async def load(queue: Queue, events: list[HistoryEvent]) -> float:
    started = time.perf_counter()
    for start in range(0, len(events), CHUNK):
        await queue.append([], now=NOW, history=events[start : start + CHUNK])
    return time.perf_counter() - started


async def timed(queue: Queue, query: MemberQuery) -> tuple[list[float], set[str]]:
    from heaprelay.queue.base import AudienceHistory

    assert isinstance(queue, AudienceHistory)
    seconds, members = [], set()
    for _ in range(3):
        started = time.perf_counter()
        members = await queue.history_members(query)
        seconds.append(time.perf_counter() - started)
    return seconds, members


QUERIES = {
    "with trait plan = pro": MemberQuery(
        "web", "Order Completed", 2, NOW - 30 * DAY, NOW, (("plan", "pro"),)
    ),
    "without traits": MemberQuery("web", "Order Completed", 2, NOW - 30 * DAY, NOW),
    "Product Viewed >= 3 in 60 days (40% of the history)": MemberQuery(
        "web", "Product Viewed", 3, NOW - 60 * DAY, NOW
    ),
}
#: The same count as "without traits" reading the whole table instead of the index.
FULL_SCAN = {
    # Unary + keeps SQLite from searching the primary key (NOT INDEXED does not, on a
    # WITHOUT ROWID table): a scan of the whole table.
    "sqlite": "SELECT user_id FROM audience_events WHERE +source = ? AND +event = ?"
    " AND +ts >= ? AND +ts <= ? GROUP BY user_id HAVING count(DISTINCT message_key) >= ?",
    "postgresql": "SELECT user_id FROM audience_events WHERE source = %s AND event = %s"
    " AND ts >= %s AND ts <= %s GROUP BY user_id HAVING count(DISTINCT message_key) >= %s",
}


def full_scan_params() -> tuple[object, ...]:
    q = QUERIES["without traits"]
    return (q.source, q.event, q.start, q.end, q.at_least)


def report(
    name: str, loaded: float, per_event: float, results: dict[str, object], scan: float
) -> None:
    print(f"\n{name}: history written in {loaded:.1f} s; {per_event:.0f} bytes a stored event")
    print(f"  baseline: rule without traits by a full scan of the table (no index): {scan:.2f} s")
    for label, (seconds, members, baseline, expected) in results.items():  # type: ignore[attr-defined]
        same = "same members" if members == expected else "MEMBERS DIFFER"
        print(
            f"  rule {label}: {len(members):,} members; store {statistics.median(seconds):.2f} s"
            f" (min {min(seconds):.2f}, max {max(seconds):.2f}) vs brute force in Python "
            f"{baseline:.2f} s ({baseline / max(min(seconds), 1e-9):.1f}x); {same}; goal < 10 s: "
            f"{'met' if max(seconds) < 10 else 'NOT met'}"
        )


async def run_sqlite(events: list[HistoryEvent], baselines: dict[str, object]) -> None:
    from heaprelay.queue.sqlite import SQLiteQueue

    with tempfile.TemporaryDirectory(prefix="heaprelay-bench-aud-") as tmp:
        path = Path(tmp) / "heaprelay.db"
        queue = await SQLiteQueue.open(path)
        await queue.close()
        empty = _checkpointed_size(path)
        queue = await SQLiteQueue.open(path)
        loaded = await load(queue, events)
        results = {}
        for label, query in QUERIES.items():
            seconds, members = await timed(queue, query)
            results[label] = (seconds, members, *baselines[label])  # type: ignore[misc]
        await queue.close()
        per_event = (_checkpointed_size(path) - empty) / sum(e.traits is None for e in events)
        conn = sqlite3.connect(path)
        started = time.perf_counter()
        scanned = {row[0] for row in conn.execute(FULL_SCAN["sqlite"], full_scan_params())}
        scan = time.perf_counter() - started
        conn.close()
        assert scanned == results["without traits"][1]  # type: ignore[index]
        report("SQLite", loaded, per_event, results, scan)


def _checkpointed_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.stat().st_size


async def run_postgres(url: str, events: list[HistoryEvent], baselines: dict[str, object]) -> None:
    import psycopg

    from heaprelay.queue.postgres import PostgresQueue

    schema = f"bench_aud_{uuid.uuid4().hex[:8]}"
    queue = await PostgresQueue.open(url, schema=schema)
    try:
        loaded = await load(queue, events)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute("VACUUM ANALYZE audience_events")
            await conn.execute("VACUUM ANALYZE audience_traits")
            cur = await conn.execute(
                "SELECT pg_total_relation_size('audience_events')"
                " + pg_total_relation_size('audience_traits')"
            )
            row = await cur.fetchone()
            assert row is not None
            size = int(row[0])
        results = {}
        for label, query in QUERIES.items():
            seconds, members = await timed(queue, query)
            results[label] = (seconds, members, *baselines[label])  # type: ignore[misc]
        per_event = size / sum(e.traits is None for e in events)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f'SET search_path TO "{schema}"')
            for setting in ("enable_indexscan", "enable_indexonlyscan", "enable_bitmapscan"):
                await conn.execute(f"SET {setting} = off")
            started = time.perf_counter()
            cur = await conn.execute(FULL_SCAN["postgresql"], full_scan_params())
            scanned = {row[0] for row in await cur.fetchall()}
            scan = time.perf_counter() - started
        assert scanned == results["without traits"][1]  # type: ignore[index]
        report("PostgreSQL", loaded, per_event, results, scan)
    finally:
        await queue.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="sqlite,postgresql")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--pg-url", default=os.environ.get("HEAPRELAY_TEST_PG_URL", ""))
    args = parser.parse_args()
    events = history(args.events, args.users)
    print(
        f"audiences bench: {args.events:,} track events of {args.users:,} users over 60 days "
        f"(+{args.users:,} identifies), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    baselines: dict[str, object] = {}
    for label, query in QUERIES.items():
        started = time.perf_counter()
        expected = brute_force(events, query)
        baselines[label] = (time.perf_counter() - started, expected)
    for name in args.backend.split(","):
        if name == "sqlite":
            asyncio.run(run_sqlite(events, baselines))
        elif name == "postgresql":
            if not args.pg_url:
                raise SystemExit("--pg-url (or HEAPRELAY_TEST_PG_URL) is needed")
            asyncio.run(run_postgres(args.pg_url, events, baselines))
        else:
            raise SystemExit(f"unknown backend {name!r}: sqlite, postgresql")


if __name__ == "__main__":
    main()
