"""The scale-out queue: PostgreSQL, shared by any number of API and worker processes.

The semantics are those of :mod:`heaprelay.queue.base`; queries are in ``sql/postgres.sql``,
the schema in ``migrations/postgres/`` (applied by :func:`migrate`, which :meth:`open` runs
and ``heaprelay db migrate`` runs on its own). All tables live in one PostgreSQL schema
(``heaprelay`` unless told otherwise), so a database can hold several relays (or tests).

Claims and per-key order across processes. Row locks on jobs alone do not keep a key's order:
two claimers running ``SELECT … FOR UPDATE SKIP LOCKED`` at once over the same key can split
it (the first locks job 1, the second skips job 1 and locks job 2, and both are sent at once).
So a claimer first owns whole keys: it locks their rows in ``order_keys`` with
``FOR UPDATE SKIP LOCKED`` (another claimer skips them, never waits), and only then, in a new
statement (READ COMMITTED: a fresh snapshot that sees every claim committed before it got the
lock), leases the keys' claimable jobs. A key owned by nobody has, in that snapshot, either a
live lease (then it is skipped) or none (then its whole unfinished run is ours). Expired leases
are first locked row by row, so that a slow worker completing one at that moment finishes
before we look (its outcome is then seen). Completions lock their rows in id order, as claims
do, so the two cannot deadlock; a deadlock or serialization failure is retried anyway. The
``order_keys`` rows a claim wants are inserted (and committed) on a connection of their own,
so that a claimer never waits for another's transaction because of a new key.

Deduplication (queue/base.py) is part of the claim: the first job of each messageId is
checked by ``INSERT … ON CONFLICT DO UPDATE … WHERE <not a duplicate> RETURNING`` into
``seen``, rows in key order. Two claimers of one messageId (under different keys, so both
own their job) meet on that row: the second waits for the first's commit, then PostgreSQL
re-evaluates the condition against the committed entry, so exactly one of the jobs is handed
out. Later jobs of the same messageId in one claim are decided against the entry it holds.

Wake-ups: every append (and release, retry, replay) sends ``NOTIFY`` on the schema's channel
in its transaction; ``wait_for_work`` listens on one dedicated connection per queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, Final, TypeVar

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from heaprelay.logs import FailureLog
from heaprelay.messages.reasons import Reason
from heaprelay.queue._payload import PayloadCodec, dictionary_ids, train
from heaprelay.queue._sql import package_queries
from heaprelay.queue.base import (
    CLAIM_WINDOW,
    DUPLICATE_DETAIL,
    MAX_ERRORS,
    AppendResult,
    AudienceConflict,
    AudienceRecord,
    AudienceSync,
    CountQuery,
    DeadLetter,
    DeadLetterRecord,
    Delivered,
    ErrorRecord,
    HistoryEvent,
    Job,
    JobRecord,
    MemberQuery,
    NewJob,
    Outcome,
    QueueStats,
    Release,
    RetryAt,
    SearchField,
    Skipped,
    check_audience_sync,
    error_groups,
    is_duplicate,
    merged_traits,
    message_key,
    remembered,
    search_key,
    search_keys,
    stats_from_counts,
    sum_event,
    synced_record,
)

T = TypeVar("T")

log = logging.getLogger("heaprelay.queue")
#: Seconds the wake-up listener's connect may take (a waiter waits that long at most extra).
LISTEN_CONNECT_TIMEOUT: Final = 10
#: Seconds an append waits for a connection of the pool before it fails.
APPEND_WAIT: Final = 5.0

DEFAULT_SCHEMA: Final = "heaprelay"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RETRIES: Final = 8
#: Passes of :meth:`PostgresQueue.index` during which an id skipped over is looked for again
#: (a job committed after a later one was indexed; or an id that never commits: rolled back).
_GAP_PASSES: Final = 100
#: Seconds between two compactions of the counts by one process (:meth:`PostgresQueue.stats`).
COMPACT_EVERY: Final = 2.0


QUERIES: Final = package_queries("postgres.sql")


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration, in order."""
    found = []
    folder = resources.files("heaprelay.queue").joinpath("migrations/postgres")
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text("utf-8")))
    return sorted(found)


def check_schema(schema: str) -> str:
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"invalid PostgreSQL schema name {schema!r}: use [a-z_][a-z0-9_]*")
    return schema


async def migrate(url: str, *, schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Create the schema or bring it up to date; return the migrations applied now.

    Safe to run from several processes at once (an advisory lock serialises them).
    """
    check_schema(schema)
    applied: list[str] = []
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        conn.transaction(),
    ):
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            [f"heaprelay-migrate:{schema}"],
        )
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql.encode())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                [version, name],
            )
            applied.append(f"{version:04d}_{name}")
    return applied


class PostgresQueue:
    """The Queue of :mod:`heaprelay.queue.base` on PostgreSQL (psycopg 3, a connection pool)."""

    def __init__(
        self,
        url: str,
        schema: str,
        pool: AsyncConnectionPool,
        codec: PayloadCodec | None = None,
    ) -> None:
        self.url = url
        self.schema = schema
        #: Payload compression (queue/_payload.py); its dictionaries are in payload_dicts.
        self.codec = codec or PayloadCodec()
        self._training: asyncio.Task[None] | None = None
        #: base.py, "Claim window" (tests make it small).
        self.claim_window = CLAIM_WINDOW
        self.channel = f"heaprelay_work_{schema}"
        self._pool = pool
        self._waiters: set[asyncio.Event] = set()
        self._listener: asyncio.Task[None] | None = None
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self._listen_lock = asyncio.Lock()
        self._listen_failures = FailureLog(log)
        #: Inserts order_keys rows for claims, outside their transactions (_ensure_keys).
        self._keys_conn: psycopg.AsyncConnection[Any] | None = None
        self._keys_lock = asyncio.Lock()
        self._closed = False
        #: ids the indexer skipped over -> passes left to look for them (see index()).
        self._gaps: dict[int, int] = {}
        self._compacted_at = -COMPACT_EVERY

    @classmethod
    async def open(
        cls, url: str, *, schema: str = DEFAULT_SCHEMA, max_connections: int = 8
    ) -> PostgresQueue:
        """Connect, create or migrate the schema, and return the queue."""
        await migrate(url, schema=schema)
        pool: AsyncConnectionPool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True, "options": f"-c search_path={schema}"},
            open=False,
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open(wait=True, timeout=30)
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(QUERIES["dictionaries"])
                codec = PayloadCodec({i: bytes(d) for i, d in await cur.fetchall()})
        except BaseException:
            await pool.close()
            raise
        return cls(url, schema, pool, codec)

    # --- writes ---------------------------------------------------------------------------

    def _job_rows(self, jobs: Sequence[NewJob], now: float) -> dict[str, Any]:
        """The parameters of ``insert_jobs`` / ``insert_jobs_range``: the jobs as columns,
        payloads compressed. No dedupe work here: each job keeps its window, and its first
        claim checks it."""
        encode = self.codec.encode
        windows = [j.dedupe_window for j in jobs]
        return {
            "sources": [j.source for j in jobs],
            "destinations": [j.destination for j in jobs],
            "message_ids": [j.message_id for j in jobs],
            "keys": [j.order_key for j in jobs],
            "payloads": [encode(j.payload) for j in jobs],
            "received": [j.received_at for j in jobs],
            "froms": [now if w > 0 else None for w in windows],
            "untils": [now + w if w > 0 else None for w in windows],
        }

    async def append(
        self, jobs: Sequence[NewJob], *, now: float, history: Sequence[HistoryEvent] = ()
    ) -> AppendResult:
        if not jobs and not history:
            return AppendResult(stored=0)
        params = self._job_rows(jobs, now)

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                QUERIES["insert_jobs"],
                params,
            )
            if history:
                await _insert_history(conn, history, now)
            await self._send_notify(conn)

        # A request waits for its answer: with the database down, say so (503) well within
        # an SDK's timeout rather than after the pool's 30 s.
        await self._transaction(run, wait=APPEND_WAIT)
        self._wake_local()
        samples = self.codec.take_samples()
        if samples is not None and not self._closed:
            self._training = asyncio.create_task(self._train(samples, now))
        return AppendResult(stored=len(jobs))

    async def _train(self, samples: list[bytes], now: float) -> None:
        """Train a payload dictionary off the event loop and store it (queue/_payload.py)."""
        try:
            data = await asyncio.to_thread(train, samples)
            async with self._pool.connection() as conn:
                cur = await conn.execute(QUERIES["add_dictionary"], {"dict": data, "now": now})
                row = await cur.fetchone()
            assert row is not None
            self.codec.add(int(row[0]), data)
        except Exception:  # too few distinct samples, or the database is away: try later
            log.warning("could not train a payload dictionary", exc_info=True)
        finally:
            self.codec.training_done()

    async def _decoded_records(
        self, conn: psycopg.AsyncConnection[Any], records: list[JobRecord]
    ) -> list[JobRecord]:
        payloads = await self._decode(conn, [bytes(r.payload) for r in records])
        return [dataclasses.replace(r, payload=p) for r, p in zip(records, payloads, strict=True)]

    async def _decode(
        self, conn: psycopg.AsyncConnection[Any], payloads: Sequence[bytes]
    ) -> list[bytes]:
        """Stored payloads as appended; dictionaries another process made are loaded first."""
        missing = [i for i in dictionary_ids(payloads) if not self.codec.knows(i)]
        if missing:
            cur = await conn.execute(QUERIES["dictionaries_by_id"], {"ids": missing})
            for dict_id, data in await cur.fetchall():
                self.codec.add(dict_id, bytes(data))
        return [self.codec.decode(p) for p in payloads]

    async def claim(
        self, worker: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[Job]:
        if limit <= 0:
            return []

        async def run(conn: psycopg.AsyncConnection[Any]) -> list[Job]:
            jobs = await _Claim(conn, now, self._ensure_keys, self.claim_window).run(
                worker, limit, now + lease_seconds
            )
            payloads = await self._decode(conn, [bytes(j.payload) for j in jobs])
            return [dataclasses.replace(j, payload=p) for j, p in zip(jobs, payloads, strict=True)]

        jobs = await self._transaction(run)
        return sorted(jobs, key=lambda j: j.id)

    async def renew(
        self, jobs: Sequence[Job], *, worker: str, lease_seconds: float, now: float
    ) -> set[int]:
        if not jobs:
            return set()
        ids = [job.id for job in jobs]

        async def run(conn: psycopg.AsyncConnection[Any]) -> set[int]:
            await conn.execute(QUERIES["lock_outcome_rows"], {"ids": ids})
            cur = await conn.execute(
                QUERIES["renew"],
                {
                    "ids": ids,
                    "leases": [job.lease for job in jobs],
                    "worker": worker,
                    "due_at": now + lease_seconds,
                },
            )
            return {row[0] for row in await cur.fetchall()}

        return await self._transaction(run)

    async def complete(
        self, outcomes: Sequence[Outcome], *, now: float, worker: str | None = None
    ) -> None:
        if not outcomes:
            return
        delivered = [o for o in outcomes if isinstance(o, Delivered)]
        retries = [o for o in outcomes if isinstance(o, RetryAt)]
        dead = [o for o in outcomes if isinstance(o, DeadLetter)]
        skipped = [o for o in outcomes if isinstance(o, Skipped)]
        released = [o for o in outcomes if isinstance(o, Release)]
        wakes = bool(retries or released)

        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(QUERIES["lock_outcome_rows"], {"ids": [o.id for o in outcomes]})
            if delivered:
                await conn.execute(
                    QUERIES["delivered"],
                    {
                        "ids": [o.id for o in delivered],
                        "leases": [o.lease for o in delivered],
                        "answers": [o.answer for o in delivered],
                        "now": now,
                        "worker": worker,
                    },
                )
            failed: dict[int, str] = {}
            if retries:
                cur = await conn.execute(
                    QUERIES["retry_at"],
                    {
                        "ids": [o.id for o in retries],
                        "leases": [o.lease for o in retries],
                        "ats": [o.at for o in retries],
                        "reasons": [str(o.reason) for o in retries],
                        "answers": [o.answer for o in retries],
                        "now": now,
                        "worker": worker,
                    },
                )
                failed.update(await cur.fetchall())
            if dead:
                cur = await conn.execute(
                    QUERIES["dead"],
                    {
                        "ids": [o.id for o in dead],
                        "leases": [o.lease for o in dead],
                        "reasons": [o.reason.value for o in dead],
                        "details": [o.detail for o in dead],
                        "answers": [o.answer for o in dead],
                        "now": now,
                        "worker": worker,
                    },
                )
                failed.update(await cur.fetchall())
            if failed:
                position = {id(o): n for n, o in enumerate(outcomes)}
                tried: list[RetryAt | DeadLetter] = [*retries, *dead]
                applied = [o for o in tried if o.id in failed]
                applied.sort(key=lambda o: position[id(o)])
                groups = error_groups(applied, failed)
                columns = list(zip(*groups, strict=True))
                await conn.execute(
                    QUERIES["add_errors"],
                    {
                        "at": now,
                        "destinations": list(columns[0]),
                        "states": list(columns[1]),
                        "reasons": list(columns[2]),
                        "answers": list(columns[3]),
                        "counts": list(columns[4]),
                        "job_ids": list(columns[5]),
                    },
                )
            if skipped:
                await conn.execute(
                    QUERIES["skipped"],
                    {
                        "ids": [o.id for o in skipped],
                        "leases": [o.lease for o in skipped],
                        "reasons": [o.reason.value for o in skipped],
                        "details": [o.detail for o in skipped],
                        "now": now,
                        "worker": worker,
                    },
                )
            if released:
                await conn.execute(
                    QUERIES["release"],
                    {
                        "ids": [o.id for o in released],
                        "leases": [o.lease for o in released],
                        "worker": worker,
                    },
                )
            if wakes:
                await self._send_notify(conn)

        await self._transaction(run)
        if wakes:
            self._wake_local()

    async def replay(
        self, ids: Sequence[int] | None, *, now: float, destination: str | None = None
    ) -> int:
        params = _dead_params(ids, destination)

        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute(QUERIES["replay"], params)
            if cur.rowcount:
                await self._send_notify(conn)
            return cur.rowcount

        count = await self._transaction(run)
        if count:
            self._wake_local()
        return count

    async def purge(self, ids: Sequence[int] | None, *, destination: str | None = None) -> int:
        params = _dead_params(ids, destination)

        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            await conn.execute(QUERIES["unsearch_dead"], params)
            cur = await conn.execute(QUERIES["purge"], params)
            return cur.rowcount

        return await self._transaction(run)

    async def index(self, *, limit: int = 2000) -> int:
        """Ids are handed out when rows are inserted, not when they commit: a job may become
        visible after a later one was indexed. Ids skipped over are looked for again during
        the next :data:`_GAP_PASSES` passes of this process (another process that takes over
        the indexing only looks ahead)."""

        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute(QUERIES["lock_search_cursor"])
            row = await cur.fetchone()
            if row is None:  # another process is indexing right now
                return 0
            start = int(row[0])
            cur = await conn.execute(QUERIES["to_index"], {"next": start, "limit": limit})
            found = list(await cur.fetchall())
            late: list[Any] = []
            if self._gaps:
                cur = await conn.execute(QUERIES["gaps_to_index"], {"ids": sorted(self._gaps)})
                late = list(await cur.fetchall())
            rows = late + found
            payloads = await self._decode(conn, [bytes(payload) for _, payload in rows])
            keys = [
                (key, job_id)
                for (job_id, _), payload in zip(rows, payloads, strict=True)
                for key in search_keys(payload)
            ]
            if keys:
                await conn.execute(
                    QUERIES["add_search"],
                    {"keys": [k for k, _ in keys], "ids": [i for _, i in keys]},
                )
            for job_id, _ in late:
                self._gaps.pop(job_id, None)
            self._gaps = {i: n - 1 for i, n in self._gaps.items() if n > 1}
            if found:
                seen = {job_id for job_id, _ in found}
                for missing in range(start, found[-1][0]):
                    if missing not in seen:
                        self._gaps[missing] = _GAP_PASSES
                await conn.execute(QUERIES["set_search_next"], {"next": found[-1][0] + 1})
            return len(found) + len(late)

        return await self._transaction(run)

    async def prune(self, *, delivered_before: float) -> int:
        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            await conn.execute(QUERIES["unsearch_finished"], {"before": delivered_before})
            cur = await conn.execute(QUERIES["prune_finished"], {"before": delivered_before})
            # A remembered messageId that expired before the cut-off can no longer match.
            await conn.execute(QUERIES["prune_seen"], {"before": delivered_before})
            await conn.execute(QUERIES["prune_keys"])
            return cur.rowcount

        return await self._transaction(run)

    # --- audiences (queue/base.py, AudienceStore) -------------------------------------------

    async def audience(self, name: str) -> AudienceRecord | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["audience"], {"name": name})
            row = await cur.fetchone()
        return AudienceRecord(*row) if row else None

    async def audiences(self) -> list[AudienceRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["audiences"])
            return [AudienceRecord(*row) for row in await cur.fetchall()]

    async def audience_members(self, name: str) -> set[str]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["audience_members"], {"name": name})
            return {row[0] for row in await cur.fetchall()}

    async def audience_values(self, name: str) -> dict[str, float]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["audience_values"], {"name": name})
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def commit_audience_sync(
        self, sync: AudienceSync, jobs: Sequence[NewJob], *, now: float
    ) -> AudienceRecord:
        params = self._job_rows(jobs, now)

        async def run(conn: psycopg.AsyncConnection[Any]) -> AudienceRecord:
            cur = await conn.execute(QUERIES["lock_audience"], {"name": sync.name})
            row = await cur.fetchone()
            stored = AudienceRecord(*row) if row else None
            check_audience_sync(sync, stored)
            if stored is None:
                cur = await conn.execute(
                    QUERIES["audience_with_key"],
                    {"source": sync.source, "key": sync.key, "name": sync.name},
                )
                other = await cur.fetchone()
                if other:
                    raise AudienceConflict(
                        f"key {sync.key!r} is already audience {other[0]!r}'s on source "
                        f"{sync.source!r}"
                    )
            first = last = None
            if jobs:
                cur = await conn.execute(
                    QUERIES["insert_jobs_range"],
                    params,
                )
                ids = await cur.fetchone()
                first, last = (ids[0], ids[1]) if ids else (None, None)
                await self._send_notify(conn)
            users = {"name": sync.name}
            if sync.entered:
                values = [sync.values.get(u) for u in sync.entered]
                await conn.execute(
                    QUERIES["add_audience_members"],
                    {**users, "users": list(sync.entered), "values": values},
                )
            if sync.changed:
                values = [sync.values[u] for u in sync.changed]
                await conn.execute(
                    QUERIES["set_audience_values"],
                    {**users, "users": list(sync.changed), "values": values},
                )
            if sync.left:
                await conn.execute(
                    QUERIES["remove_audience_members"], {**users, "users": list(sync.left)}
                )
            members = (stored.members if stored else 0) + len(sync.entered) - len(sync.left)
            record = synced_record(
                sync,
                stored,
                now=now,
                members=members,
                jobs=len(jobs),
                first_job=first,
                last_job=last,
            )
            await conn.execute(QUERIES["save_audience"], dataclasses.asdict(record))
            return record

        try:
            record = await self._transaction(run)
        except pg_errors.UniqueViolation as exc:  # a first sync of the same name or key meanwhile
            raise AudienceConflict(
                f"audience {sync.name!r} (key {sync.key!r}) was created meanwhile: run it again"
            ) from exc
        if jobs:
            self._wake_local()
        return record

    async def audience_job_states(self, name: str) -> dict[str, dict[str, int]]:
        record = await self.audience(name)
        if record is None or record.first_job is None:
            return {}
        params = {
            "first": record.first_job,
            "last": record.last_job,
            "source": record.source,
            "prefix": record.message_prefix,
        }
        found: dict[str, dict[str, int]] = {}
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["audience_job_states"], params)
            for destination, state, n in await cur.fetchall():
                found.setdefault(destination, {})[state] = n
        return found

    # --- AudienceHistory ------------------------------------------------------------------

    async def history_members(self, query: MemberQuery) -> set[str]:
        params: dict[str, Any] = {
            "source": query.source,
            "event": query.event,
            "start": query.start,
            "end": query.end,
            "at_least": query.at_least,
        }
        name = "history_members"
        if query.traits:
            name = "audience_members_with_traits"
            params["want"] = orjson.dumps(dict(query.traits)).decode()
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES[name], params)
            return {row[0] for row in await cur.fetchall()}

    async def history_counts(self, query: CountQuery) -> dict[str, int]:
        params = {
            "source": query.source,
            "event": query.event,
            "start": query.start,
            "end": query.end,
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["history_counts"], params)
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def history_sums(self, query: CountQuery) -> dict[str, float]:
        params = {
            "source": query.source,
            "event": sum_event(query.event, query.property or ""),
            "start": query.start,
            "end": query.end,
        }
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["history_sums"], params)
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def prune_history(self, windows: Mapping[str, float], *, now: float) -> int:
        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            count = 0
            cur = await conn.execute(QUERIES["history_names"])
            for source, event in await cur.fetchall():
                before = now - windows[source] if source in windows else float("inf")
                params = {"source": source, "event": event, "before": before}
                deleted = await conn.execute(QUERIES["prune_history"], params)
                count += deleted.rowcount
            return count

        return await self._transaction(run)

    async def claim_audience_run(self, key: str, *, now: float, every: float) -> bool:
        async with self._pool.connection() as conn:
            params = {"key": key, "now": now, "every": every}
            cur = await conn.execute(QUERIES["claim_audience_run"], params)
            return await cur.fetchone() is not None

    # --- WorkerRegistry -------------------------------------------------------------------

    async def heartbeat(self, worker: str, *, now: float, ttl: float) -> int:
        async def run(conn: psycopg.AsyncConnection[Any]) -> int:
            await conn.execute(QUERIES["heartbeat"], {"name": worker, "now": now})
            # Long-dead workers are forgotten; ten TTLs keeps the table small.
            await conn.execute(QUERIES["forget_workers"], {"before": now - 10 * ttl})
            cur = await conn.execute(QUERIES["count_workers"], {"since": now - ttl})
            row = await cur.fetchone()
            return int(row[0]) if row else 1

        return await self._transaction(run)

    async def leave(self, worker: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(QUERIES["leave"], {"name": worker})

    # --- reads ----------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        self._waiters.add(event)
        try:
            # Not under the timeout: a connect cancelled half-way would leave its connection
            # open (and unclosed); the connect has a timeout of its own.
            listening = await self._ensure_listener()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    if not listening:
                        # No listener (the server does not answer): wait out the timeout,
                        # as a poll would; the next wait tries to listen again.
                        await asyncio.sleep(timeout)
                    await event.wait()
        finally:
            self._waiters.discard(event)

    async def stats(self) -> QueueStats:
        """The sum of the counts' delta rows (migration 0006). Compacts them first when this
        process has not done so for :data:`COMPACT_EVERY` seconds and no other process is
        compacting (the server reads the stats every few seconds, so they stay few)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._compacted_at >= COMPACT_EVERY:
            self._compacted_at = loop.time()
            await self._compact()
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(QUERIES["counts"])
            rows = await cur.fetchall()
            cur = await conn.execute(QUERIES["oldest_unfinished"])
            oldest = await cur.fetchone()
        return stats_from_counts(rows, oldest[0] if oldest else None)

    async def _compact(self) -> None:
        async def run(conn: psycopg.AsyncConnection[Any]) -> None:
            cur = await conn.execute(QUERIES["try_compact_lock"], {"name": f"{self.schema}:counts"})
            row = await cur.fetchone()
            if row and row[0]:
                await conn.execute(QUERIES["compact_counts"])
                await conn.execute(QUERIES["trim_errors"], {"keep": MAX_ERRORS})

        await self._transaction(run)

    async def recent_errors(self, *, limit: int = 20) -> list[ErrorRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                QUERIES["recent_errors"], {"limit": max(0, min(limit, MAX_ERRORS))}
            )
            return [ErrorRecord(*row) for row in await cur.fetchall()]

    async def job(self, job_id: int) -> JobRecord | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["job"], {"id": job_id})
            row = await cur.fetchone()
            return (await self._decoded_records(conn, [JobRecord(*row)]))[0] if row else None

    async def jobs(self, *, limit: int = 50, before: int | None = None) -> list[JobRecord]:
        params = {"limit": limit, "before": before if before is not None else 1 << 62}
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["jobs"], params)
            return await self._decoded_records(conn, [JobRecord(*r) for r in await cur.fetchall()])

    async def search(self, field: SearchField, value: str, *, limit: int = 50) -> list[JobRecord]:
        params = {"key": search_key(field, value), "limit": limit}
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["search"], params)
            return await self._decoded_records(conn, [JobRecord(*r) for r in await cur.fetchall()])

    async def dead_letters(
        self, *, limit: int = 100, offset: int = 0, destination: str | None = None
    ) -> list[DeadLetterRecord]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                QUERIES["dead_letters"],
                {"limit": limit, "offset": offset, "destination": destination},
            )
            records = [DeadLetterRecord(*row) for row in await cur.fetchall()]
            payloads = await self._decode(conn, [bytes(r.payload) for r in records])
            return [
                dataclasses.replace(r, payload=p) for r, p in zip(records, payloads, strict=True)
            ]

    async def dead_letter(self, job_id: int) -> DeadLetterRecord | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(QUERIES["dead_letter"], {"id": job_id})
            row = await cur.fetchone()
            if not row:
                return None
            record = DeadLetterRecord(*row)
            [payload] = await self._decode(conn, [bytes(record.payload)])
            return dataclasses.replace(record, payload=payload)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._training is not None:  # let it store its dictionary first
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._training), 10)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._listener
        if self._listen_conn is not None:
            await self._listen_conn.close()
        if self._keys_conn is not None:
            await self._keys_conn.close()
        await self._pool.close()

    # --- internals ------------------------------------------------------------------------

    async def _transaction(
        self,
        fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        wait: float | None = None,
    ) -> T:
        """Run ``fn`` in a transaction; retried on deadlock or serialization failure. ``wait``:
        seconds to wait for a connection of the pool (default: the pool's 30)."""
        for attempt in range(_RETRIES):
            try:
                async with self._pool.connection(wait) as conn, conn.transaction():
                    return await fn(conn)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _ensure_keys(self, keys: Sequence[tuple[str, str]]) -> None:
        """Create the order_keys rows a claim wants to lock, committed at once on a connection
        of their own: inserted inside the claim's transaction, a new key would make every
        other claimer that meets it wait for that whole transaction instead of skipping it."""
        params = {"destinations": [d for d, _ in keys], "keys": [k for _, k in keys]}
        async with self._keys_lock:
            for attempt in range(2):
                if self._keys_conn is None or self._keys_conn.closed:
                    self._keys_conn = await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, options=f"-c search_path={self.schema}"
                    )
                try:
                    await self._keys_conn.execute(QUERIES["ensure_keys"], params)
                    return
                except psycopg.OperationalError:
                    await self._keys_conn.close()  # broken: reconnect once
                    if attempt:
                        raise

    async def _send_notify(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(QUERIES["notify"], {"channel": self.channel})

    def _wake_local(self) -> None:
        for event in list(self._waiters):
            event.set()

    async def _ensure_listener(self) -> bool:
        """Start the wake-up listener unless it runs: one LISTEN connection per handle, however
        many loops wait at once (they share the lock). False when it cannot connect now."""
        async with self._listen_lock:
            listener = self._listener
            if listener is not None and not listener.done():
                return True
            if listener is not None and not listener.cancelled() and listener.exception():
                log.warning("the queue's LISTEN connection failed: %s", listener.exception())
            if self._listen_conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await self._listen_conn.close()
                self._listen_conn = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=LISTEN_CONNECT_TIMEOUT
                )
            except psycopg.OperationalError as exc:
                self._listen_failures.failure("listen", f"cannot listen for new work: {exc}")
                return False
            try:
                await conn.execute(f'LISTEN "{self.channel}"')
            except psycopg.OperationalError as exc:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
                self._listen_failures.failure("listen", f"cannot listen for new work: {exc}")
                return False
            self._listen_failures.recovered("listen")
            self._listen_conn = conn
            self._listener = asyncio.ensure_future(self._listen(conn))
            return True

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Ends when the connection breaks; the next wait_for_work reconnects (and until then
        # waiters still return at their timeout, so work is never stranded).
        with contextlib.suppress(psycopg.OperationalError):
            async for _notify in conn.notifies():
                self._wake_local()


Triple = tuple[str, str, str]
Entry = tuple[float, float]


def _dead_params(ids: Sequence[int] | None, destination: str | None) -> dict[str, Any]:
    return {"all": ids is None, "ids": list(ids or []), "destination": destination}


class _Claim:
    """One claim transaction (see the module doc, and queue/base.py for the dedupe rule).

    In rounds: the oldest claimable jobs (no locks) → own their keys not owned yet (lock,
    skipping keys another claimer owns) → in a fresh statement, the oldest claimable jobs of
    the owned keys → their dedupe check. Duplicates do not count, so a round that finds some
    is followed by another, after the last job looked at. Rows are only leased at the end, so
    every round sees the keys blocked as the first did."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        now: float,
        ensure_keys: Callable[[Sequence[tuple[str, str]]], Awaitable[None]],
        window: int = CLAIM_WINDOW,
    ) -> None:
        self.conn = conn
        self.now = now
        self.window = window
        self.ensure_keys = ensure_keys
        self.owned: set[tuple[str, str]] = set()
        self.refused: set[tuple[str, str]] = set()
        #: Entries as this claim left them so far (their rows are locked by it).
        self.entries: dict[Triple, Entry] = {}
        #: Entries to write at the end (changed after their row was locked).
        self.dirty: set[Triple] = set()

    async def run(self, worker: str, limit: int, due_at: float) -> list[Job]:
        conn = self.conn
        handed: list[int] = []
        duplicates: list[int] = []
        after = 0
        # The claim window (base.py): ids below the oldest unfinished one's + window.
        cur = await conn.execute(QUERIES["oldest_open"])
        row = await cur.fetchone()
        end = None if row is None or row[0] is None else row[0] + self.window
        while len(handed) < limit:
            want = {"now": self.now, "after": after, "limit": limit - len(handed), "end": end}
            cur = await conn.execute(QUERIES["claim_candidates"], want)
            candidates = await cur.fetchall()
            if candidates:
                # Every candidate's key is now owned or refused: the cursor may pass them.
                await self._own(
                    sorted({(d, k) for _, d, k in candidates} - self.owned - self.refused)
                )
                after = candidates[-1][0]
            rows: list[Any] = []
            if self.owned:
                keys = sorted(self.owned)
                cur = await conn.execute(
                    QUERIES["claimable_of_keys"],
                    want
                    | {
                        "destinations": [d for d, _ in keys],
                        "keys": [k for _, k in keys],
                        "done": handed + duplicates,
                    },
                )
                rows = await cur.fetchall()
            if not rows:
                if not candidates:
                    break
                continue  # all of other claimers' keys (or gone meanwhile)
            for job_id, duplicate in await self._check(rows):
                (duplicates if duplicate else handed).append(job_id)
        if self.dirty:
            await conn.execute(QUERIES["set_entries"], _entry_params(self.entries, self.dirty))
        if duplicates:
            await conn.execute(
                QUERIES["skip_duplicates"],
                {
                    "ids": duplicates,
                    "reason": Reason.DUPLICATE.value,
                    "detail": DUPLICATE_DETAIL,
                    "now": self.now,
                },
            )
        if not handed:
            return []
        cur = await conn.execute(
            QUERIES["lease"], {"ids": handed, "worker": worker, "due_at": due_at}
        )
        return [Job(*row) for row in await cur.fetchall()]

    async def _own(self, keys: list[tuple[str, str]]) -> None:
        if not keys:
            return
        params = {"destinations": [d for d, _ in keys], "keys": [k for _, k in keys]}
        await self.ensure_keys(keys)
        cur = await self.conn.execute(QUERIES["lock_keys"], params)
        got = {(d, k) for d, k in await cur.fetchall()}
        self.owned |= got
        self.refused |= set(keys) - got
        if got:
            owned = sorted(got)
            await self.conn.execute(
                QUERIES["lock_expired_leases"],
                {"destinations": [d for d, _ in owned], "keys": [k for _, k in owned]},
            )

    async def _check(self, rows: Sequence[Any]) -> list[tuple[int, bool]]:
        """``(id, is duplicate)`` of each row, in order (rows without a check: not)."""
        # The first job of each messageId new to this claim goes through the upsert, which
        # decides it against every other claimer; later ones are decided here, against the
        # entry this claim holds.
        firsts: dict[Triple, tuple[int, Entry]] = {}
        for job_id, source, destination, message_id, start, until in rows:
            triple = (source, destination, message_id)
            if until is not None and triple not in self.entries and triple not in firsts:
                firsts[triple] = (job_id, (start, until))
        kept: set[Triple] = set()
        if firsts:
            windows = {t: w for t, (_, w) in firsts.items()}
            cur = await self.conn.execute(
                QUERIES["remember_messages"], _entry_params(windows, list(windows))
            )
            for s, d, m, seen_at, expires_at in await cur.fetchall():
                self.entries[(s, d, m)] = (seen_at, expires_at)
                kept.add((s, d, m))
            others = [t for t in firsts if t not in kept]
            if others:
                cur = await self.conn.execute(
                    QUERIES["seen_entries"],
                    {
                        "sources": [t[0] for t in others],
                        "destinations": [t[1] for t in others],
                        "message_ids": [t[2] for t in others],
                    },
                )
                for s, d, m, seen_at, expires_at in await cur.fetchall():
                    self.entries[(s, d, m)] = (seen_at, expires_at)
        decided: list[tuple[int, bool]] = []
        for job_id, source, destination, message_id, start, until in rows:
            triple = (source, destination, message_id)
            if until is None:
                decided.append((job_id, False))
            elif triple in firsts and firsts[triple][0] == job_id:
                decided.append((job_id, triple not in kept))
            else:
                entry = self.entries.get(triple)
                if is_duplicate(entry, start, until):
                    decided.append((job_id, True))
                    continue
                new = remembered(entry, start, until)
                if new is not None:
                    self.entries[triple] = new
                    self.dirty.add(triple)
                decided.append((job_id, False))
        return decided


def _entry_params(
    entries: dict[Triple, Entry], triples: Sequence[Triple] | set[Triple]
) -> dict[str, Any]:
    ordered = sorted(triples)
    return {
        "sources": [t[0] for t in ordered],
        "destinations": [t[1] for t in ordered],
        "message_ids": [t[2] for t in ordered],
        "froms": [entries[t][0] for t in ordered],
        "untils": [entries[t][1] for t in ordered],
    }


async def _insert_history(
    conn: psycopg.AsyncConnection[Any], history: Sequence[HistoryEvent], now: float
) -> None:
    """The audiences' history of one append (in its transaction): track events, then the
    latest traits (rows in key order, so that concurrent appends do not deadlock)."""
    tracks = [e for e in history if e.traits is None]
    if tracks:
        await conn.execute(
            QUERIES["insert_history"],
            {
                "sources": [e.source for e in tracks],
                "events": [e.event for e in tracks],
                "ts": [e.ts for e in tracks],
                "users": [e.user_id for e in tracks],
                "message_keys": [message_key(e.message_id) for e in tracks],
                "values": [e.value for e in tracks],
            },
        )
    traits = sorted(merged_traits(history).items())
    if traits:
        params = {
            "sources": [s for (s, _), _ in traits],
            "users": [u for (_, u), _ in traits],
            "now": now,
        }
        await conn.execute(QUERIES["ensure_traits"], params)
        patches = [orjson.dumps(t).decode() for _, t in traits]
        await conn.execute(QUERIES["merge_traits"], params | {"patches": patches})
