"""Queues made before deduplication moved from append to the first claim still work.

Their jobs were checked when appended (nothing left to check), and their remembered
messageIds had no ``seen_at`` (filled in as ``expires_at`` - 24 h).
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest

from heaprelay.queue.base import NewJob
from heaprelay.queue.postgres import PostgresQueue, migrate, migrations
from heaprelay.queue.sqlite import SQLiteQueue

T0 = 1_700_000_000.0
DAY = 86400.0

# The SQLite schema as it was before (lease tokens included, no dedupe columns).
OLD_SQLITE_SCHEMA = """
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    message_id TEXT NOT NULL,
    order_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    due_at REAL,
    worker TEXT,
    leases INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    detail TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    finished_at REAL
);
CREATE TABLE seen (
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (source, destination, message_id)
) WITHOUT ROWID;
"""


def new(message_id: str, key: str) -> NewJob:
    return NewJob("s", "d", message_id, key, b"{}", T0, DAY)


def test_an_old_sqlite_file_opens_and_dedupes_at_claim(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SQLITE_SCHEMA)
    # A job appended (and checked) by the old version, and the entry it left.
    conn.execute(
        "INSERT INTO jobs (source, destination, message_id, order_key, payload, received_at,"
        " state) VALUES ('s', 'd', 'm', 'a', x'7b7d', ?, 'pending')",
        [T0],
    )
    conn.execute("INSERT INTO seen VALUES ('s', 'd', 'm', ?)", [T0 + DAY])
    conn.commit()
    conn.close()

    async def go() -> tuple[list[str], list[str], dict[str, int]]:
        q = await SQLiteQueue.open(path)
        try:
            # Same messageId one hour later, and after the entry's window.
            await q.append([new("m", "b")], now=T0 + 3600)
            await q.append([new("m", "c")], now=T0 + DAY)
            first = await q.claim("w", limit=10, lease_seconds=30, now=T0 + DAY)
        finally:
            await q.close()
        q = await SQLiteQueue.open(path)  # a second open finds nothing to migrate
        try:
            await q.append([new("m", "e")], now=T0 + DAY + 1)
            again = await q.claim("w", limit=10, lease_seconds=30, now=T0 + DAY + 1)
            return (
                [j.order_key for j in first],
                [j.order_key for j in again],
                {k: v for k, v in (await q.stats()).by_reason.items() if v},
            )
        finally:
            await q.close()

    first, again, reasons = asyncio.run(go())
    # The old job is not checked again (it is not a duplicate of its own entry); b is within
    # the old entry's window; c is past it; e is within c's.
    assert (first, again, reasons) == (["a", "c"], [], {"duplicate": 2})
    conn = sqlite3.connect(path)
    entry = conn.execute("SELECT seen_at, expires_at FROM seen").fetchone()
    conn.close()
    assert entry == (T0 + DAY, T0 + 2 * DAY)


@pytest.mark.postgres
def test_migrate_brings_a_0003_database_to_dedupe_at_claim(pg_url: str) -> None:
    schema = f"upgrade_{uuid.uuid4().hex[:10]}"

    async def go() -> tuple[list[str], list[str], dict[str, int]]:
        # The database as the previous version left it: migrations 0001-0003 applied.
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, sql in migrations():
                if version <= 3:
                    await conn.execute(sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        [version, name],
                    )
            await conn.execute(
                "INSERT INTO jobs (source, destination, message_id, order_key, payload,"
                " received_at) VALUES ('s', 'd', 'm', 'a', '\\x7b7d', %s)",
                [T0],
            )
            await conn.execute("INSERT INTO seen VALUES ('s', 'd', 'm', %s)", [T0 + DAY])
        applied = await migrate(pg_url, schema=schema)  # what `heaprelay db migrate` runs
        # An API process of the previous version, still running during a rolling upgrade,
        # remembers messageIds at append as it always did: that keeps working.
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                "INSERT INTO seen (source, destination, message_id, expires_at)"
                " VALUES ('s', 'd', 'old-api', %s)",
                [T0 + DAY],
            )
            cur = await conn.execute("SELECT seen_at FROM seen WHERE message_id = 'old-api'")
            assert await cur.fetchall() == [(T0,)]
        q = await PostgresQueue.open(pg_url, schema=schema)
        try:
            await q.append([new("m", "b")], now=T0 + 3600)
            await q.append([new("m", "c")], now=T0 + DAY)
            got = await q.claim("w", limit=10, lease_seconds=30, now=T0 + DAY)
            stats = await q.stats()
        finally:
            await q.close()
        return applied, [j.order_key for j in got], dict(stats.by_reason)

    try:
        applied, got, reasons = asyncio.run(go())
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert applied == [f"{v:04d}_{n}" for v, n, _ in migrations() if v > 3]
    assert applied[0] == "0004_dedupe_at_claim"
    assert (got, reasons) == (["a", "c"], {"duplicate": 1})
