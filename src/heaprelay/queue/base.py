"""The queue interface. Every backend implements exactly these semantics; the contract suite
in :mod:`heaprelay.testing.queue_contract` checks them against each one.

A *job* is one message for one destination (ingest fans a message out to every destination
of its source). Its lifecycle::

    pending --claim--> leased --Delivered--> delivered
                         |  \\--RetryAt(t)--> retry --(t reached)--> claimable again
                         |  \\--DeadLetter--> dead --replay--> pending
                         |  \\--Skipped----> skipped (filtered, unsupported, duplicate, ...)
                         |  \\--Release----> pending (not attempted; order kept)
                         \\--lease expires (worker died)--> claimable again

Ordering: jobs are numbered in append order (``id``). For one ``(destination, order_key)``
a claim only hands out a contiguous run of that key's unfinished jobs, starting at its
oldest, and never while another job of the key is leased (unexpired) or waiting for a retry.
So a later user-property update is never sent before an earlier one, across any number of
workers. ``dead`` and ``skipped`` jobs do not block their key.

Lease ownership: an outcome is applied only while its job is still leased *by that claim*.
Once a lease has expired and another claim has taken the job over, the old holder's late
outcome is ignored: a late ``Release``/``RetryAt`` would otherwise hand the job out again
while the new holder still sends it (and a later update of the key could then go out before
an earlier one), and a late ``Delivered`` would mark done a job the new holder may still fail.
A claim is identified by ``Job.lease``, a per-job counter that every claim increments: the
worker's name alone is not enough, since the same name can claim a job again after its own
lease expired (one loop re-claiming after a slow pass, or two processes that ended up with the
same ``host:pid`` name), and then an outcome of the first claim would pass for one of the
second. So ``complete(outcomes, worker=…)`` applies an outcome only if the job is leased,
leased to ``worker`` (when given) and, when the outcome carries ``lease``, its current lease is
that one. An expired lease that nobody took over still accepts its holder's outcome (the work
was done; nothing else has started). The router always passes both.

Deduplication happens at the first claim, not at ``append`` (so that ingest stays cheap:
delivery is paced by Heap's rate limits anyway). ``append`` never looks at messageIds: it
stores every job as ``pending`` and remembers that the job's check is still to do, with its
window ``[job_now, job_now + job.dedupe_window)`` where ``job_now`` is the ``now`` of the
append (a window of 0: never checked, never remembered). Per ``(source, message_id,
destination)`` the queue remembers one entry ``(seen_at, expires_at)``. A claim checks each
job it is about to hand out whose check is still to do, in the order it hands jobs out
(ascending id): the job is a *duplicate* iff an entry exists with ``expires_at > job_now``
and ``seen_at < job_now + window`` (the two intervals overlap: each is within the earlier
one's window, whichever was appended first). A duplicate becomes ``skipped`` with reason
``duplicate`` (detail :data:`DUPLICATE_DETAIL`, ``finished_at`` the claim's ``now``), is not
handed out and does not count towards ``limit``: the claim goes on with the next claimable
jobs, so it returns ``min(limit, claimable non-duplicates)`` jobs. A job that is not a
duplicate is handed out, and the entry becomes ``(job_now, job_now + window)`` if there was
none or if that ends later than the entry (otherwise the entry is left alone); within one
claim a job is remembered before the next one is checked. Either way the job's check is then
done: later claims of it (after a release, retry, expired lease or replay) never check it
again. Duplicates do not block their key. ``prune`` forgets entries that expired before its
time; pruning jobs never forgets an entry.

Durability: ``append`` returns only after the jobs are committed (acknowledge after it).
Time is always passed in (``now``, seconds since the epoch): backends never read a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, NamedTuple, Protocol, runtime_checkable

from heaprelay.messages.reasons import Reason

State = Literal["pending", "leased", "retry", "delivered", "dead", "skipped"]
STATES: tuple[State, ...] = ("pending", "leased", "retry", "delivered", "dead", "skipped")


class NewJob(NamedTuple):
    """A job to append. (A named tuple: ingest makes one per message and destination.)"""

    source: str
    destination: str
    message_id: str
    #: Jobs with the same (destination, order_key) are delivered in append order.
    order_key: str
    #: The message, as UTF-8 JSON bytes, exactly as it will be transformed.
    payload: bytes
    received_at: float
    #: Seconds during which another job with the same (source, message_id, destination) is a
    #: duplicate, from the ``now`` of the append (the source's dedupe window; 0 turns
    #: deduplication off for this job). Checked when the job is first claimed (module doc).
    dedupe_window: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    source: str
    destination: str
    message_id: str
    order_key: str
    payload: bytes
    received_at: float
    #: Delivery attempts made before this claim.
    attempts: int
    first_attempt_at: float | None
    #: This claim's lease token: how many times the job has been leased, this claim included
    #: (1 on its first claim; replay does not reset it). Give it back in the outcome's
    #: ``lease`` so that an outcome of an older claim is never taken for this one.
    lease: int = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    #: Jobs stored (all of them: duplicates are found when claimed, see the module doc).
    stored: int


#: ``detail`` of a job skipped as a duplicate (reason :attr:`Reason.DUPLICATE`).
DUPLICATE_DETAIL: Final = "same messageId from the same source within the dedupe window"


def is_duplicate(entry: tuple[float, float] | None, job_now: float, job_until: float) -> bool:
    """Whether a job appended at ``job_now`` with window end ``job_until`` is a duplicate of
    the remembered ``entry`` ``(seen_at, expires_at)`` of its triple (module doc)."""
    return entry is not None and entry[1] > job_now and entry[0] < job_until


def remembered(
    entry: tuple[float, float] | None, job_now: float, job_until: float
) -> tuple[float, float] | None:
    """The entry after a job that is not a duplicate was handed out: the job's window if it
    ends later than the entry's (or there was none); ``None`` when the entry is unchanged."""
    if entry is None or job_until > entry[1]:
        return (job_now, job_until)
    return None


# --- outcomes: what a worker reports for each job it claimed ------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    id: int
    #: Heap's answer (status and a short body), kept for the debugger.
    answer: str = ""
    #: ``Job.lease`` of the claim this outcome is for (None: whichever lease is current).
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class RetryAt:
    id: int
    at: float
    reason: str
    answer: str = ""
    #: ``Job.lease`` of the claim this outcome is for (None: whichever lease is current).
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    reason: Reason
    detail: str
    #: Heap's answer (status line and body) when Heap refused the request.
    answer: str = ""
    #: ``Job.lease`` of the claim this outcome is for (None: whichever lease is current).
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    id: int
    reason: Reason
    detail: str = ""
    #: ``Job.lease`` of the claim this outcome is for (None: whichever lease is current).
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """Give a claimed job back untried (e.g. an earlier job of its key must be retried first)."""

    id: int
    #: ``Job.lease`` of the claim this outcome is for (None: whichever lease is current).
    lease: int | None = None


Outcome = Delivered | RetryAt | DeadLetter | Skipped | Release


def with_leases(outcomes: Sequence[Outcome], jobs: Sequence[Job]) -> list[Outcome]:
    """``outcomes`` with the lease token of the claim of their job among ``jobs`` (pass the
    result to ``complete`` with the claiming ``worker``): see "Lease ownership" above."""
    leases = {job.id: job.lease for job in jobs}
    return [replace(o, lease=leases[o.id]) if o.id in leases else o for o in outcomes]


@dataclass(frozen=True, slots=True)
class QueueStats:
    by_state: dict[str, int] = field(default_factory=dict)
    #: Per destination: {state: count}.
    by_destination: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Skipped and dead jobs per reason.
    by_reason: dict[str, int] = field(default_factory=dict)
    oldest_pending_received_at: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    source: str
    destination: str
    message_id: str
    payload: bytes
    reason: str
    detail: str
    answer: str
    attempts: int
    received_at: float
    dead_at: float


class Queue(Protocol):
    async def append(self, jobs: Sequence[NewJob], *, now: float) -> AppendResult:
        """Store jobs durably (all or nothing), all ``pending``; return only after the commit.
        No dedupe work here: that is done by the first claim of each job (module doc)."""
        ...

    async def claim(
        self, worker: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[Job]:
        """Lease up to ``limit`` claimable jobs, oldest first, per-key order kept; jobs found to
        be duplicates on the way are skipped and do not count (module doc)."""
        ...

    async def complete(
        self, outcomes: Sequence[Outcome], *, now: float, worker: str | None = None
    ) -> None:
        """Record what happened to claimed jobs. Attempts count for Delivered/RetryAt/DeadLetter.

        Only outcomes of the current lease are applied (module doc, "Lease ownership"): the job
        must be leased, to ``worker`` if given, and with ``outcome.lease`` if set; the others
        are ignored. ``worker=None`` and ``lease=None`` skip those checks (tools and tests)."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return early when new jobs may have been appended (or at ``timeout`` seconds)."""
        ...

    async def stats(self) -> QueueStats: ...

    async def dead_letters(
        self, *, limit: int = 100, offset: int = 0, destination: str | None = None
    ) -> list[DeadLetterRecord]: ...

    async def dead_letter(self, job_id: int) -> DeadLetterRecord | None: ...

    async def replay(self, ids: Sequence[int] | None, *, now: float) -> int:
        """Dead jobs back to pending (``None``: all of them); attempts reset. Returns the count."""
        ...

    async def purge(self, ids: Sequence[int] | None) -> int:
        """Delete dead jobs (``None``: all of them). Returns the count."""
        ...

    async def prune(self, *, delivered_before: float) -> int:
        """Delete delivered/skipped jobs finished before a time (retention), and dedupe entries
        that expired before it. Returns the count of jobs."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class WorkerRegistry(Protocol):
    """Optional, for queues shared by several worker processes (PostgreSQL, and the memory
    model): which workers are alive, so that a budget shared by all of them (Heap's rate
    limits per app_id) can be divided among them. A queue without it has one worker process."""

    async def heartbeat(self, worker: str, *, now: float, ttl: float) -> int:
        """Record that ``worker`` is alive at ``now``; return how many workers (this one
        included) were seen within the last ``ttl`` seconds."""
        ...

    async def leave(self, worker: str) -> None:
        """Forget ``worker`` (a clean stop), so the others take its share at once."""
        ...
