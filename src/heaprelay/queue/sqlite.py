"""The embedded queue: one SQLite file in WAL mode.

All writes go through one writer thread that owns the write connection. Appends that arrive
while a commit is running are collected and committed together in the next transaction (group
commit), so many concurrent requests share one fsync (``synchronous=FULL``: an acknowledged
append survives a crash of the process or of the machine). Each append is all-or-nothing
inside the shared transaction (a savepoint per append). Reads (stats, dead letters) use their
own connection and never wait for the writer. Appends do no dedupe work (the group commit
is one multi-row insert); claims, on the writer thread, do it set-based (:func:`_claim`).

The semantics are those of :mod:`heaprelay.queue.base`; queries are in ``sql/sqlite.sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue as thread_queue
import sqlite3
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

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

#: Appends committed in one transaction at most (bounds the latency of a huge burst).
MAX_GROUP: Final = 512
#: Page cache of the writer connection, KiB. It counts in the relay's memory, which must stay
#: bounded whatever the backlog (bench/backlog.py: 154 MB RSS with 64 MiB, 112 MB with 16 MiB
#: in front of a backlog, budget used fully either way); what it misses is in the OS's cache.
WRITER_CACHE_KIB: Final = 16384
#: WAL pages (4 KiB) before the writer checkpoints (SQLite's default is 1000).
WAL_CHECKPOINT_PAGES: Final = 10_000


QUERIES: Final = package_queries("sqlite.sql")


#: Modes of what the queue creates: the queued events are personal data, for the relay's
#: user alone.
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


def prepare_files(path: Path) -> int | None:
    """Create the queue file's directory (0700) and the file itself (0600, empty: SQLite
    takes an empty file for a new database) when they do not exist; SQLite gives the -wal
    and -shm files the mode of the database file. Existing ones keep their modes: returns
    the mode of an existing file that others may read (reported once it proved to be a
    queue, see :func:`warn_readable`), not changed behind its owner's back."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        path.parent.chmod(DIR_MODE)  # mkdir's mode is masked by the umask
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        return mode if path.is_file() and mode & 0o077 else None
    path.chmod(FILE_MODE)  # os.open's mode is masked by the umask too
    return None


def warn_readable(path: Path, mode: int | None) -> None:
    if mode is not None:
        log.warning(
            "queue file %s has mode %04o (others may read queued events); "
            "chmod 600 it (heaprelay creates it 0600 and leaves existing files alone)",
            path,
            mode,
        )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@dataclass(slots=True)
class _Append:
    jobs: Sequence[NewJob]
    now: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[AppendResult]
    history: Sequence[HistoryEvent] = ()


@dataclass(slots=True)
class _Call:
    fn: Callable[[sqlite3.Connection], Any]
    future: Future[Any]


class SQLiteQueue:
    """The Queue of :mod:`heaprelay.queue.base` on one SQLite file."""

    def __init__(
        self,
        path: Path,
        write: sqlite3.Connection,
        read: sqlite3.Connection,
        codec: PayloadCodec | None = None,
    ) -> None:
        self.path = path
        self._write = write
        self._read = read
        #: Payload compression (queue/_payload.py); its dictionaries are in payload_dicts.
        self.codec = codec or PayloadCodec()
        self._training: threading.Thread | None = None
        #: base.py, "Claim window" (tests make it small).
        self.claim_window = CLAIM_WINDOW
        self._read_lock = threading.Lock()
        self._inbox: thread_queue.SimpleQueue[_Append | _Call | None] = thread_queue.SimpleQueue()
        self._closed = False
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sqlite-queue", daemon=True)
        self._thread.start()

    @classmethod
    async def open(cls, path: Path) -> SQLiteQueue:
        """Open (creating it and its directory if needed) the queue file at ``path``."""

        def connect() -> SQLiteQueue:
            readable = prepare_files(path)
            write = _connect(path)
            # Claims look up and insert messageIds at random places in "seen" (dedupe): keep
            # more of its pages in memory than the default cache of 2 MB.
            write.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            # Fewer, larger checkpoints: a page dirtied by many commits (seen, indexes) is
            # copied back once, and fewer commits wait for a checkpoint.
            write.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            write.executescript(QUERIES["schema"])
            tables = {row[0] for row in write.execute("SELECT name FROM sqlite_master")}
            # One transaction (executescript commits before it runs its script).
            fill = QUERIES["fill_counts"] if "counts" not in tables else ""  # new, or older
            write.executescript(f"BEGIN IMMEDIATE;\n{QUERIES['counters']}\n{fill}\nCOMMIT;")
            columns = {row[1] for row in write.execute("PRAGMA table_info(jobs)")}
            if "leases" not in columns:  # a file from before lease tokens
                write.execute(QUERIES["add_leases"])
            if "dedupe_until" not in columns:  # a file from before dedupe at claim
                write.executescript(QUERIES["add_dedupe_window"])
            if "seen_at" not in {row[1] for row in write.execute("PRAGMA table_info(seen)")}:
                write.executescript(QUERIES["add_seen_at"])
            members = {row[1] for row in write.execute("PRAGMA table_info(audience_members)")}
            if "value" not in members:  # a file from before computed traits
                write.executescript(QUERIES["add_member_values"])
            if "value" not in {r[1] for r in write.execute("PRAGMA table_info(audience_events)")}:
                write.execute(QUERIES["add_event_values"])
            codec = PayloadCodec(dict(write.execute(QUERIES["dictionaries"]).fetchall()))
            warn_readable(path, readable)  # a queue indeed: not for a file that is not one
            return cls(path, write, _connect(path), codec)

        return await asyncio.to_thread(connect)

    # --- writes ---------------------------------------------------------------------------

    async def append(
        self, jobs: Sequence[NewJob], *, now: float, history: Sequence[HistoryEvent] = ()
    ) -> AppendResult:
        if not jobs and not history:
            return AppendResult(stored=0)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._submit(_Append(jobs, now, loop, future, history))
        # A cancelled request cancels only its own future (the writer skips futures that are
        # done); the commit goes on. Waiting workers are woken once a commit (_commit_appends).
        return await future

    async def claim(
        self, worker: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            return _claim(
                conn,
                worker,
                limit=limit,
                due_at=now + lease_seconds,
                now=now,
                codec=self.codec,
                window=self.claim_window,
            )

        return await self._call(run)

    async def renew(
        self, jobs: Sequence[Job], *, worker: str, lease_seconds: float, now: float
    ) -> set[int]:
        if not jobs:
            return set()
        leases = json.dumps([[job.id, job.lease] for job in jobs])

        def run(conn: sqlite3.Connection) -> set[int]:
            params = {"leases": leases, "worker": worker, "due_at": now + lease_seconds}
            return {row[0] for row in conn.execute(QUERIES["renew"], params)}

        return await self._call(run)

    async def complete(
        self, outcomes: Sequence[Outcome], *, now: float, worker: str | None = None
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            failed: list[RetryAt | DeadLetter] = []
            destinations: dict[int, str] = {}
            for outcome in outcomes:
                # Only the current lease's outcomes apply (base.py, "Lease ownership").
                params: dict[str, Any] = {
                    "id": outcome.id,
                    "worker": worker,
                    "lease": outcome.lease,
                    "now": now,
                }
                match outcome:
                    case Delivered(answer=answer):
                        conn.execute(QUERIES["delivered"], params | {"answer": answer})
                    case RetryAt(at=at, reason=reason, answer=answer):
                        params |= {"at": at, "reason": str(reason), "answer": answer}
                        if row := conn.execute(QUERIES["retry_at"], params).fetchone():
                            failed.append(outcome)
                            destinations[outcome.id] = row[0]
                    case DeadLetter(reason=reason, detail=detail, answer=answer):
                        params |= {"reason": str(reason), "detail": detail, "answer": answer}
                        if row := conn.execute(QUERIES["dead"], params).fetchone():
                            failed.append(outcome)
                            destinations[outcome.id] = row[0]
                    case Skipped(reason=reason, detail=detail):
                        params |= {"reason": str(reason), "detail": detail}
                        conn.execute(QUERIES["skipped"], params)
                    case Release():
                        conn.execute(QUERIES["release"], params)
            if failed:
                for group in error_groups(failed, destinations):
                    row = dict(zip(_ERROR_FIELDS, (now, *group), strict=True))
                    conn.execute(QUERIES["add_error"], row)
                conn.execute(QUERIES["trim_errors"], {"keep": MAX_ERRORS})

        await self._call(run)
        if any(isinstance(o, Release | RetryAt) for o in outcomes):
            self._notify()

    async def replay(
        self, ids: Sequence[int] | None, *, now: float, destination: str | None = None
    ) -> int:
        params = _dead_params(ids, destination)

        def run(conn: sqlite3.Connection) -> int:
            count: int = conn.execute(QUERIES["replay"], params).rowcount
            return count

        count = await self._call(run)
        if count:
            self._notify()
        return count

    async def purge(self, ids: Sequence[int] | None, *, destination: str | None = None) -> int:
        params = _dead_params(ids, destination)

        def run(conn: sqlite3.Connection) -> int:
            conn.execute(QUERIES["unsearch_dead"], params)
            count: int = conn.execute(QUERIES["purge"], params).rowcount
            return count

        return await self._call(run)

    async def index(self, *, limit: int = 2000) -> int:
        def read() -> tuple[list[int], list[tuple[str, int]]]:
            with self._read_lock:
                row = self._read.execute(QUERIES["search_next"]).fetchone()
                params = {"next": row[0] if row else 1, "limit": limit}
                jobs = self._read.execute(QUERIES["to_index"], params).fetchall()
                payloads = _decoded(self._read, self.codec, [payload for _, payload in jobs])
            keys = [
                (key, job_id)
                for (job_id, _), payload in zip(jobs, payloads, strict=True)
                for key in search_keys(payload)
            ]
            return [job_id for job_id, _ in jobs], keys

        # Read and parse in another thread, on the reading connection: the writer (which
        # appends share) only inserts the keys.
        ids, rows = await asyncio.to_thread(read)
        if not ids:
            return 0
        first, last = ids[0], ids[-1]

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(QUERIES["search_next"]).fetchone()
            if (row[0] if row else 1) > first:  # another handle indexed them meanwhile
                return 0
            _insert_rows(conn, "add_search", rows, "(?, ?)")
            conn.execute(QUERIES["set_search_next"], {"next": last + 1})
            return len(ids)

        return await self._call(run)

    async def prune(self, *, delivered_before: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            # A seen entry that expired before the cut-off can no longer match anything.
            conn.execute(QUERIES["prune_seen"], {"before": delivered_before})
            conn.execute(QUERIES["unsearch_finished"], {"before": delivered_before})
            count: int = conn.execute(
                QUERIES["prune_finished"], {"before": delivered_before}
            ).rowcount
            return count

        return await self._call(run)

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
            params |= {
                "want": orjson.dumps(dict(query.traits)).decode(),
                "wanted": len(query.traits),
            }

        def run(conn: sqlite3.Connection) -> set[str]:
            return {row[0] for row in conn.execute(QUERIES[name], params)}

        return await self._read_call(run)

    async def history_counts(self, query: CountQuery) -> dict[str, int]:
        params = {
            "source": query.source,
            "event": query.event,
            "start": query.start,
            "end": query.end,
        }

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute(QUERIES["history_counts"], params).fetchall())

        return await self._read_call(run)

    async def history_sums(self, query: CountQuery) -> dict[str, float]:
        params = {
            "source": query.source,
            "event": sum_event(query.event, query.property or ""),
            "start": query.start,
            "end": query.end,
        }

        def run(conn: sqlite3.Connection) -> dict[str, float]:
            return dict(conn.execute(QUERIES["history_sums"], params).fetchall())

        return await self._read_call(run)

    async def prune_history(self, windows: Mapping[str, float], *, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            count = 0
            for (source,) in conn.execute(QUERIES["history_sources"]).fetchall():
                before = now - windows[source] if source in windows else float("inf")
                params = {"source": source}
                for (event,) in conn.execute(QUERIES["history_events"], params).fetchall():
                    params = {"source": source, "event": event, "before": before}
                    count += conn.execute(QUERIES["prune_history"], params).rowcount
            return count

        return await self._call(run)

    async def claim_audience_run(self, key: str, *, now: float, every: float) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            params = {"key": key, "now": now, "every": every}
            return conn.execute(QUERIES["claim_audience_run"], params).fetchone() is not None

        return await self._call(run)

    # --- reads ----------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._waiters_lock:
            self._waiters.add(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            with self._waiters_lock:
                self._waiters.discard(entry)

    async def stats(self) -> QueueStats:
        def run(conn: sqlite3.Connection) -> QueueStats:
            rows = conn.execute(QUERIES["counts"]).fetchall()
            oldest = conn.execute(QUERIES["oldest_unfinished"]).fetchone()
            return stats_from_counts(rows, oldest[0] if oldest else None)

        return await self._read_call(run)

    async def recent_errors(self, *, limit: int = 20) -> list[ErrorRecord]:
        def run(conn: sqlite3.Connection) -> list[ErrorRecord]:
            rows = conn.execute(QUERIES["recent_errors"], {"limit": limit})
            return [ErrorRecord(*row) for row in rows]

        return await self._read_call(run)

    async def job(self, job_id: int) -> JobRecord | None:
        def run(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(QUERIES["job"], {"id": job_id}).fetchone()
            return _decoded_records(conn, self.codec, [JobRecord(*row)])[0] if row else None

        return await self._read_call(run)

    async def jobs(self, *, limit: int = 50, before: int | None = None) -> list[JobRecord]:
        def run(conn: sqlite3.Connection) -> list[JobRecord]:
            params = {"limit": limit, "before": before if before is not None else 1 << 62}
            rows = [JobRecord(*row) for row in conn.execute(QUERIES["jobs"], params)]
            return _decoded_records(conn, self.codec, rows)

        return await self._read_call(run)

    async def search(self, field: SearchField, value: str, *, limit: int = 50) -> list[JobRecord]:
        def run(conn: sqlite3.Connection) -> list[JobRecord]:
            params = {"key": search_key(field, value), "limit": limit}
            rows = [JobRecord(*row) for row in conn.execute(QUERIES["search"], params)]
            return _decoded_records(conn, self.codec, rows)

        return await self._read_call(run)

    async def dead_letters(
        self, *, limit: int = 100, offset: int = 0, destination: str | None = None
    ) -> list[DeadLetterRecord]:
        def run(conn: sqlite3.Connection) -> list[DeadLetterRecord]:
            rows = conn.execute(
                QUERIES["dead_letters"],
                {"limit": limit, "offset": offset, "destination": destination},
            )
            return _decoded_records(conn, self.codec, [DeadLetterRecord(*row) for row in rows])

        return await self._read_call(run)

    async def dead_letter(self, job_id: int) -> DeadLetterRecord | None:
        def run(conn: sqlite3.Connection) -> DeadLetterRecord | None:
            row = conn.execute(QUERIES["dead_letter"], {"id": job_id}).fetchone()
            return _decoded_records(conn, self.codec, [DeadLetterRecord(*row)])[0] if row else None

        return await self._read_call(run)

    # --- audiences (queue/base.py, AudienceStore) -------------------------------------------

    async def audience(self, name: str) -> AudienceRecord | None:
        def run(conn: sqlite3.Connection) -> AudienceRecord | None:
            row = conn.execute(QUERIES["audience"], {"name": name}).fetchone()
            return AudienceRecord(*row) if row else None

        return await self._read_call(run)

    async def audiences(self) -> list[AudienceRecord]:
        def run(conn: sqlite3.Connection) -> list[AudienceRecord]:
            return [AudienceRecord(*row) for row in conn.execute(QUERIES["audiences"])]

        return await self._read_call(run)

    async def audience_members(self, name: str) -> set[str]:
        def run(conn: sqlite3.Connection) -> set[str]:
            return {row[0] for row in conn.execute(QUERIES["audience_members"], {"name": name})}

        return await self._read_call(run)

    async def audience_values(self, name: str) -> dict[str, float]:
        def run(conn: sqlite3.Connection) -> dict[str, float]:
            return dict(conn.execute(QUERIES["audience_values"], {"name": name}).fetchall())

        return await self._read_call(run)

    async def commit_audience_sync(
        self, sync: AudienceSync, jobs: Sequence[NewJob], *, now: float
    ) -> AudienceRecord:
        def run(conn: sqlite3.Connection) -> AudienceRecord:
            row = conn.execute(QUERIES["audience"], {"name": sync.name}).fetchone()
            stored = AudienceRecord(*row) if row else None
            check_audience_sync(sync, stored)
            if stored is None:
                other = conn.execute(
                    QUERIES["audience_with_key"],
                    {"source": sync.source, "key": sync.key, "name": sync.name},
                ).fetchone()
                if other:
                    raise AudienceConflict(
                        f"key {sync.key!r} is already audience {other[0]!r}'s on source "
                        f"{sync.source!r}"
                    )
            first = last = None
            if jobs:
                _insert_group(conn, [(jobs, now, ())], self.codec)
                # One writer, one transaction: the ids of this insert are contiguous.
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
                first = last - len(jobs) + 1
            conn.executemany(
                QUERIES["add_audience_members"],
                [
                    {"name": sync.name, "user_id": u, "value": sync.values.get(u)}
                    for u in sync.entered
                ],
            )
            conn.executemany(
                QUERIES["set_audience_values"],
                [{"name": sync.name, "user_id": u, "value": sync.values[u]} for u in sync.changed],
            )
            conn.executemany(
                QUERIES["remove_audience_members"],
                [{"name": sync.name, "user_id": u} for u in sync.left],
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
            conn.execute(QUERIES["save_audience"], dataclasses.asdict(record))
            return record

        record = await self._call(run)
        if jobs:
            self._notify()
        return record

    async def audience_job_states(self, name: str) -> dict[str, dict[str, int]]:
        record = await self.audience(name)
        if record is None or record.first_job is None:
            return {}

        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            params = {
                "first": record.first_job,
                "last": record.last_job,
                "source": record.source,
                "prefix": record.message_prefix,
            }
            found: dict[str, dict[str, int]] = {}
            for destination, state, n in conn.execute(QUERIES["audience_job_states"], params):
                found.setdefault(destination, {})[state] = n
            return found

        return await self._read_call(run)

    async def close(self) -> None:
        if self._closed:
            return
        training = self._training
        if training is not None:  # let it store its dictionary first
            await asyncio.to_thread(training.join, 10)
        self._closed = True
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)
        with self._read_lock:
            self._read.close()

    # --- internals ------------------------------------------------------------------------

    def _submit(self, item: _Append | _Call) -> None:
        if self._closed:
            raise RuntimeError("the queue is closed")
        self._inbox.put(item)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        future: Future[T] = Future()
        self._submit(_Call(fn, future))
        return await asyncio.wrap_future(future)

    async def _read_call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._read_lock:
                self._read.execute("BEGIN")
                try:
                    return fn(self._read)
                finally:
                    self._read.execute("COMMIT")

        return await asyncio.to_thread(run)

    def _notify(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def _run(self) -> None:
        """The writer thread: run calls one by one; commit waiting appends together."""
        conn = self._write
        stop = False
        while not stop:
            item: _Append | _Call | None = self._inbox.get()
            appends: list[_Append] = []
            calls: list[_Call] = []
            while True:
                if item is None:
                    stop = True  # once what is already queued is done
                elif isinstance(item, _Append):
                    appends.append(item)
                else:
                    calls.append(item)
                if len(appends) >= MAX_GROUP and not stop:
                    break
                try:
                    item = self._inbox.get_nowait()
                except thread_queue.Empty:
                    break
            if appends:
                self._commit_appends(conn, appends)
            for call in calls:
                self._run_call(conn, call)
        conn.close()

    def _run_call(self, conn: sqlite3.Connection, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = call.fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except Exception as exc:
            call.future.set_exception(exc)
        else:
            call.future.set_result(result)

    def _commit_appends(self, conn: sqlite3.Connection, appends: list[_Append]) -> None:
        """One transaction (one fsync) for all ``appends``. Should it fail, each append is
        tried alone, so that one bad append cannot fail the others."""
        outcomes: list[AppendResult | BaseException]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes = list(
                    _insert_group(conn, [(a.jobs, a.now, a.history) for a in appends], self.codec)
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except Exception:
            outcomes = [self._append_alone(conn, a, self.codec) for a in appends]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Append, Any]]] = {}
        for append, outcome in zip(appends, outcomes, strict=True):
            by_loop.setdefault(append.loop, []).append((append, outcome))
        for loop, results in by_loop.items():
            # One wake-up per event loop and commit, not one per request.
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(_resolve, results)
        self._notify()
        samples = self.codec.take_samples()
        if samples is not None:
            self._training = threading.Thread(
                target=self._train,
                args=(samples, appends[-1].now),
                name="sqlite-queue-dict",
                daemon=True,
            )
            self._training.start()

    def _train(self, samples: list[bytes], now: float) -> None:
        """Train a payload dictionary off the writer thread, then store it (queue/_payload.py)."""
        try:
            data = train(samples)

            def store(conn: sqlite3.Connection) -> int:
                row = conn.execute(QUERIES["add_dictionary"], {"dict": data, "now": now})
                dict_id: int = row.fetchone()[0]
                return dict_id

            future: Future[int] = Future()
            self._submit(_Call(store, future))
            self.codec.add(future.result(timeout=60), data)
        except Exception:  # too few distinct samples, or the queue is closing: try later
            pass
        finally:
            self.codec.training_done()

    @staticmethod
    def _append_alone(
        conn: sqlite3.Connection, append: _Append, codec: PayloadCodec
    ) -> AppendResult | Exception:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = _insert_group(conn, [(append.jobs, append.now, append.history)], codec)[0]
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except Exception as exc:
            return exc
        return result


def _resolve(results: list[tuple[_Append, AppendResult | BaseException]]) -> None:
    for append, outcome in results:
        if append.future.done():
            continue
        if isinstance(outcome, BaseException):
            append.future.set_exception(outcome)
        else:
            append.future.set_result(outcome)


def _insert_group(
    conn: sqlite3.Connection,
    appends: Sequence[tuple[Sequence[NewJob], float, Sequence[HistoryEvent]]],
    codec: PayloadCodec,
) -> list[AppendResult]:
    """Insert the appends of one transaction, in order; each one's result.

    One multi-row insert for the whole group (a statement per job, or per request, would
    cost more than the request itself), of the columns that need values: no dedupe work
    (claims do it, :func:`_claim`)."""
    rows: list[tuple[Any, ...]] = []
    encode = codec.encode
    for jobs, now, _ in appends:
        for job in jobs:
            # NewJob's first six fields are the first six columns of job_row.
            window = job.dedupe_window
            payload = encode(job[4])
            if window > 0:
                rows.append((*job[:4], payload, job[5], now, now + window))
            else:
                rows.append((*job[:4], payload, job[5], None, None))
    _insert_rows(conn, "insert_jobs", rows, QUERIES["job_row"])
    # The counters (queue/base.py, QueueStats), in the same transaction: one row a destination.
    per_destination: dict[str, int] = {}
    for jobs, _, _ in appends:
        for job in jobs:
            per_destination[job.destination] = per_destination.get(job.destination, 0) + 1
    counts = [
        (kind, destination, state, "", n)
        for destination, n in per_destination.items()
        for kind, state in (("now", "pending"), ("total", "received"))
    ]
    _insert_rows(conn, "add_counts", counts, "(?, ?, ?, ?, ?)")
    if any(history for _, _, history in appends):
        _insert_history(conn, [(e, now) for _, now, history in appends for e in history])
    return [AppendResult(stored=len(jobs)) for jobs, _, _ in appends]


def _insert_history(conn: sqlite3.Connection, events: Sequence[tuple[HistoryEvent, float]]) -> None:
    """The audiences' history of one group commit: track events, then the latest traits."""
    tracks = [
        (e.source, e.event, e.ts, e.user_id, message_key(e.message_id), e.value)
        for e, _ in events
        if e.traits is None
    ]
    _insert_rows(conn, "insert_history", tracks, "(?, ?, ?, ?, ?, ?)")
    now = max(at for _, at in events)
    traits = merged_traits(e for e, _ in events)
    rows = sorted((s, u, orjson.dumps(t).decode(), now) for (s, u), t in traits.items())
    _insert_rows(conn, "ensure_traits", [(s, u, now) for s, u, _, _ in rows], "(?, ?, '{}', ?)")
    _insert_rows(conn, "merge_traits", rows, "(?, ?, ?, ?)")


def _claim(
    conn: sqlite3.Connection,
    worker: str,
    *,
    limit: int,
    due_at: float,
    now: float,
    codec: PayloadCodec,
    window: int = CLAIM_WINDOW,
) -> list[Job]:
    """Lease up to ``limit`` claimable jobs that are not duplicates (queue/base.py).

    Candidates come in rounds of as many as are still wanted, each with its remembered entry
    (one query); duplicates found make another round. Nothing is written until the end (so
    every round sees the same blocked keys): then one upsert of the entries, one update of
    the duplicates, one lease of the rest."""
    handed: list[int] = []
    duplicates: list[int] = []
    # Entries this claim has set: they override what "seen" says.
    entries: dict[tuple[str, str, str], tuple[float, float]] = {}
    after = 0
    # The claim window (base.py): ids below the oldest unfinished one's + window.
    oldest = conn.execute(QUERIES["oldest_open"]).fetchone()[0]
    end = None if oldest is None else oldest + window
    while len(handed) < limit:
        params = {"now": now, "after": after, "limit": limit - len(handed), "end": end}
        rows = conn.execute(QUERIES["claim_candidates"], params).fetchall()
        if not rows:
            break
        for job_id, source, destination, message_id, start, until, seen_at, expires_at in rows:
            if until is not None:
                triple = (source, destination, message_id)
                entry = entries.get(triple)
                if entry is None and expires_at is not None:
                    entry = (seen_at, expires_at)
                if is_duplicate(entry, start, until):
                    duplicates.append(job_id)
                    continue
                new = remembered(entry, start, until)
                if new is not None:
                    entries[triple] = new
            handed.append(job_id)
        after = rows[-1][0]
    if entries:
        template = "(?, ?, ?, ?, ?)"
        _insert_rows(conn, "remember_messages", [(*t, *e) for t, e in entries.items()], template)
    if duplicates:
        conn.execute(
            QUERIES["skip_duplicates"],
            {
                "ids": json.dumps(duplicates),
                "reason": _DUPLICATE,
                "detail": DUPLICATE_DETAIL,
                "now": now,
            },
        )
    if not handed:
        return []
    leased = conn.execute(
        QUERIES["lease"], {"ids": json.dumps(handed), "worker": worker, "due_at": due_at}
    )
    return sorted(_decoded_records(conn, codec, [Job(*row) for row in leased]), key=lambda j: j.id)


R = TypeVar("R", Job, DeadLetterRecord, JobRecord)


def _decoded_records(conn: sqlite3.Connection, codec: PayloadCodec, records: list[R]) -> list[R]:
    """``records`` with their payloads as appended (see :func:`_decoded`)."""
    payloads = _decoded(conn, codec, [r.payload for r in records])
    return [dataclasses.replace(r, payload=p) for r, p in zip(records, payloads, strict=True)]


def _decoded(conn: sqlite3.Connection, codec: PayloadCodec, stored: list[bytes]) -> list[bytes]:
    """Stored payloads as appended (dictionaries another handle of the file made since this
    one opened are loaded first)."""
    for dict_id in [i for i in dictionary_ids(stored) if not codec.knows(i)]:
        row = conn.execute(QUERIES["dictionary"], {"id": dict_id}).fetchone()
        if row is not None:
            codec.add(dict_id, row[0])
    return [codec.decode(p) for p in stored]


def _insert_rows(
    conn: sqlite3.Connection, query: str, rows: Sequence[tuple[Any, ...]], row: str
) -> None:
    """``rows`` with multi-row inserts of ``query`` (its ":rows" becomes ``row`` repeated)."""
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        sql = _multi_row_sql(query, len(chunk), row)
        conn.execute(sql, [value for values in chunk for value in values])


@functools.lru_cache(maxsize=64)
def _multi_row_sql(query: str, rows: int, row: str) -> str:
    return QUERIES[query].replace(":rows", ",".join([row] * rows))


_DUPLICATE: Final = Reason.DUPLICATE.value
_ERROR_FIELDS: Final = ("at", "destination", "state", "reason", "answer", "jobs", "job_id")


def _dead_params(ids: Sequence[int] | None, destination: str | None) -> dict[str, Any]:
    return {"all": ids is None, "ids": json.dumps(list(ids or [])), "destination": destination}


#: Rows per multi-row INSERT (8 parameters each at most: far under SQLite's limit).
_ROWS_PER_INSERT: Final = 200
