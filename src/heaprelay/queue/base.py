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

Claim window: a claim looks only at unfinished jobs whose id is less than the oldest
unfinished job's id plus :data:`CLAIM_WINDOW` (at most that many jobs, fewer where finished
jobs left gaps), and hands out claimable ones among them, so that a claim's cost has a bound
whatever the backlog: without one, a claim while every key is blocked (Heap down
for a while, every key waiting for a retry) reads the whole backlog to find nothing — with
ten million queued jobs, tens of seconds, again at every claim. The price: while that many
jobs at the head of the queue all belong to blocked keys (say, one identity with a million
events queued, paced by Heap's per-identity limit), later jobs wait until some of those keys
clear (a lease ends, a retry comes due). A bound on keys rather than jobs would avoid both;
it needs an index of each key's oldest unfinished job that the SQLite schema does not have.

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

Renewing: a worker whose pass takes long (Heap's rate limits, a refused bulk request split
until the refused items are alone) keeps its jobs with ``renew``: each job still leased by
that claim (same rule as outcomes: leased, to ``worker``, with the job's ``lease`` token; an
expired lease nobody took over included) gets its lease end moved to ``now + lease_seconds``,
and ``renew`` says which ones it kept. A job not kept was taken over (or finished by someone
else): its holder must stop sending it (its outcome would be ignored anyway).

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

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, NamedTuple, Protocol, runtime_checkable

import orjson

from heaprelay.messages.incoming import parse_time
from heaprelay.messages.reasons import Reason

#: How far past the oldest unfinished job (in ids) a claim looks (module doc, "Claim window").
CLAIM_WINDOW: Final = 1_000_000

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


#: The events counted in :attr:`QueueStats.totals` (each since the queue was created).
TOTALS: Final = ("received", "delivered", "skipped", "dead", "retry")


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts that cost the same on 10,000 jobs as on 10,000,000: every backend keeps them up
    to date in the transactions that change the jobs (maintained counters), never by counting
    rows. Zero counts may be absent (except in ``by_state``, which lists every state)."""

    by_state: dict[str, int] = field(default_factory=dict)
    #: Per destination: {state: count}.
    by_destination: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Skipped and dead jobs per reason.
    by_reason: dict[str, int] = field(default_factory=dict)
    #: ``received_at`` of the oldest unfinished (pending, leased, retry) job: the one appended
    #: first (the lowest id), since jobs are appended as they arrive.
    oldest_pending_received_at: float | None = None
    #: Per destination, per state among skipped / dead / retry: {reason: jobs in it now}.
    reasons: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    #: Per destination, how many jobs were ever appended (``received``) and how many times a
    #: job became delivered / skipped / dead / retry (monotonic: pruning, purging and
    #: replaying do not lower them; a job replayed and then delivered counts in both).
    totals: dict[str, dict[str, int]] = field(default_factory=dict)


#: States whose jobs carry a reason that is counted (:attr:`QueueStats.reasons`).
REASON_STATES: Final = ("skipped", "dead", "retry")


def stats_from_counts(
    rows: Iterable[tuple[str, str, str, str, int]], oldest: float | None
) -> QueueStats:
    """:class:`QueueStats` from counter rows ``(kind, destination, state, reason, n)``:
    ``kind`` is ``"now"`` (jobs in that state now; ``reason`` is ``""`` for states without
    one) or ``"total"`` (:attr:`QueueStats.totals`). Rows of zero are left out. The durable
    backends keep such rows; the memory model makes them by counting."""
    by_state: dict[str, int] = dict.fromkeys(STATES, 0)
    by_destination: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    reasons: dict[str, dict[str, dict[str, int]]] = {}
    totals: dict[str, dict[str, int]] = {}
    for kind, destination, state, reason, n in rows:
        if not n:
            continue
        if kind == "total":
            per = totals.setdefault(destination, {})
            per[state] = per.get(state, 0) + n
            continue
        by_state[state] = by_state.get(state, 0) + n
        per = by_destination.setdefault(destination, {})
        per[state] = per.get(state, 0) + n
        if state in REASON_STATES:
            why = reasons.setdefault(destination, {}).setdefault(state, {})
            why[reason] = why.get(reason, 0) + n
            if state != "retry" and reason:
                by_reason[reason] = by_reason.get(reason, 0) + n
    return QueueStats(by_state, by_destination, by_reason, oldest, reasons, totals)


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A failed delivery attempt as it was recorded (:meth:`Queue.recent_errors`): the jobs of
    one ``complete`` call that failed the same way are one record (``jobs`` of them, ``job_id``
    the first)."""

    id: int
    at: float
    destination: str
    #: ``retry`` (to be tried again) or ``dead``.
    state: str
    reason: str
    #: Heap's answer (status and body), or the detail when there was no answer.
    answer: str
    jobs: int
    job_id: int


#: How many error records a queue keeps (the oldest are forgotten first).
MAX_ERRORS: Final = 200


def error_groups(
    outcomes: Iterable[RetryAt | DeadLetter], destinations: Mapping[int, str]
) -> list[tuple[str, str, str, str, int, int]]:
    """``(destination, state, reason, answer, jobs, first job id)`` per distinct failure among
    applied ``outcomes`` (``destinations``: job id -> destination), in order of appearance."""
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for o in outcomes:
        state = "retry" if isinstance(o, RetryAt) else "dead"
        answer = o.answer or (o.detail if isinstance(o, DeadLetter) else "")
        key = (destinations.get(o.id, ""), state, str(o.reason), answer)
        groups.setdefault(key, []).append(o.id)
    return [(*key, len(ids), ids[0]) for key, ids in groups.items()]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """Everything about one job, whatever its state (the dashboard's debugger)."""

    id: int
    source: str
    destination: str
    message_id: str
    order_key: str
    payload: bytes
    received_at: float
    state: str
    attempts: int
    #: Why it is skipped / dead / waiting for a retry ("" otherwise).
    reason: str
    detail: str
    #: Heap's last answer.
    answer: str
    finished_at: float | None
    #: retry: when it is tried again; leased: when the lease ends.
    due_at: float | None


#: What the debugger can search jobs by (:meth:`Queue.search`).
SearchField = Literal["userId", "anonymousId", "messageId", "event"]
SEARCH_FIELDS: Final[tuple[SearchField, ...]] = ("userId", "anonymousId", "messageId", "event")
_SEARCH_PREFIX: Final = {"userId": "u:", "anonymousId": "a:", "messageId": "m:", "event": "e:"}


def search_key(field: SearchField, value: str) -> str:
    """The key a job is found under for ``field`` = ``value`` (:func:`search_keys`)."""
    return _SEARCH_PREFIX[field] + value


def search_keys(payload: bytes) -> list[str]:
    """The search keys of a stored message: its userId, anonymousId, messageId and event name
    (those that are non-empty strings or numbers), each once. Pure; a payload that is not a
    JSON object has none."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(message, dict):
        return []
    keys: list[str] = []
    for field_name in SEARCH_FIELDS:
        value = message.get(field_name)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        text = str(value)
        if text and len(text) <= MAX_SEARCH_VALUE:
            key = search_key(field_name, text)
            if key not in keys:
                keys.append(key)
    return keys


#: Longer values are not indexed (nobody types them into a search box).
MAX_SEARCH_VALUE: Final = 512


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


# --- the event history that audiences are evaluated over --------------------------------


class HistoryEvent(NamedTuple):
    """One accepted message as audiences see it (:class:`AudienceHistory`): a track event
    (``event`` its name, ``traits`` None) or an identify (``event`` "", ``traits`` its traits
    as a JSON object). ``ts``: the message's ``timestamp`` as the relay computed it.
    ``message_id``: events are counted once per messageId (an SDK's retry of a request the
    relay had stored is the same event)."""

    source: str
    user_id: str
    event: str
    ts: float
    traits: bytes | None = None
    message_id: str = ""
    #: A computed trait's numeric property (``sum = "…"``): ``event`` is then
    #: :func:`sum_event` of the track's name and the property (:func:`property_values`).
    value: float | None = None


def message_key(message_id: str) -> int:
    """What the stores keep of an event's messageId: a signed 64-bit hash (8 bytes instead of
    a uuid's 36; two of one user's events in a window colliding has a chance of about
    n² / 2⁶⁵, nothing at the counts audiences see). Stable across processes."""
    digest = hashlib.blake2b(message_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


#: Longer user ids and event names are not recorded (no audience could name them usefully).
MAX_HISTORY_TEXT: Final = 255


def history_of(source: str, payload: bytes) -> HistoryEvent | None:
    """What a stored message adds to its source's history: tracks and identifies with a
    ``userId`` (the identity Heap's user properties are set for), an identify's traits from
    ``traits``, else ``context.traits`` (RudderStack's SDKs); ``None`` for the rest. Pure."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    get = message.get
    user = get("userId")
    if type(user) is str:
        user_id = user.strip()
    elif isinstance(user, int | float) and not isinstance(user, bool):
        user_id = str(user)
    else:
        return None
    if not user_id or len(user_id) > MAX_HISTORY_TEXT:
        return None
    kind = get("type")
    if kind == "track":
        event = get("event")
        ts = parse_time(get("timestamp"))
        if type(event) is not str or not event or len(event) > MAX_HISTORY_TEXT or ts is None:
            return None
        return HistoryEvent(source, user_id, event, ts, None, str(get("messageId") or ""))
    if kind == "identify":
        # RudderStack's SDKs put identify traits in context.traits only (its Heap
        # destination reads traits ?? context.traits).
        traits = get("traits")
        if not traits:
            context = get("context")
            traits = context.get("traits") if isinstance(context, dict) else None
        ts = parse_time(get("timestamp"))
        if not isinstance(traits, dict) or ts is None:
            return None
        # Rules compare scalar values; null removes a trait (merged_traits).
        flat = {k: v for k, v in traits.items() if v is None or isinstance(v, _SCALARS)}
        return HistoryEvent(source, user_id, "", ts, orjson.dumps(flat)) if flat else None
    return None


#: Between a track's name and a property's in the history's rows of property values: a
#: control character (the unit separator), which event names do not hold.
SUM_SEPARATOR: Final = "\x1f"


def sum_event(event: str, prop: str) -> str:
    """The history's event name of the values of property ``prop`` of track ``event``."""
    return f"{event}{SUM_SEPARATOR}{prop}"


def property_values(
    track: HistoryEvent, payload: bytes, properties: Iterable[str]
) -> list[HistoryEvent]:
    """The rows a track adds for the computed traits that sum its ``properties``: one per
    property whose value is a number (booleans and other values are ignored). Pure."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    props = message.get("properties") if isinstance(message, dict) else None
    if not isinstance(props, dict):
        return []
    return [
        track._replace(event=sum_event(track.event, p), value=float(v))
        for p in properties
        if isinstance(v := props.get(p), int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
    ]


def merged_traits(events: Iterable[HistoryEvent]) -> dict[tuple[str, str], dict[str, object]]:
    """Per (source, user): the traits of ``events``' identifies merged in order (a later
    value of a key replaces an earlier one; a ``None`` is kept: it removes the key from the
    stored traits): what one append changes in the latest traits."""
    merged: dict[tuple[str, str], dict[str, object]] = {}
    for e in events:
        if e.traits is not None:
            merged.setdefault((e.source, e.user_id), {}).update(orjson.loads(e.traits))
    return merged


TraitValue = str | int | float | bool
_SCALARS: Final = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class MemberQuery:
    """Who is in an audience: users of ``source`` with at least ``at_least`` track events
    (distinct messageIds) named ``event`` whose time is in ``[start, end]``, and whose latest
    traits have every
    ``traits`` key equal to its value (JSON equality: a string is never equal to a number,
    ``2`` equals ``2.0``)."""

    source: str
    event: str
    at_least: int
    start: float
    end: float
    traits: tuple[tuple[str, TraitValue], ...] = ()


@dataclass(frozen=True, slots=True)
class CountQuery:
    """A computed trait's value per user (``count = true``): the track events of ``source``
    (distinct messageIds) named ``event`` whose time is in ``[start, end]``."""

    source: str
    event: str
    start: float
    end: float
    #: ``sum = "…"``: the property summed (:meth:`AudienceHistory.history_sums`).
    property: str | None = None


def trait_matches(have: object, want: TraitValue) -> bool:
    """JSON equality of a stored trait value and a wanted one (:class:`MemberQuery`)."""
    if isinstance(want, bool) or isinstance(have, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    if isinstance(want, int | float):
        return isinstance(have, int | float) and have == want
    return have == want


@runtime_checkable
class AudienceHistory(Protocol):
    """The accepted events audiences are evaluated over (appended by :meth:`Queue.append`'s
    ``history``), in the queue's store. Implemented by every backend."""

    async def history_members(self, query: MemberQuery) -> set[str]:
        """The user ids in the audience (:class:`MemberQuery`)."""
        ...

    async def history_counts(self, query: CountQuery) -> dict[str, int]:
        """Per user with at least one: its track events (distinct messageIds) named
        ``query.event`` whose time is in ``[query.start, query.end]`` (:class:`CountQuery`)."""
        ...

    async def history_sums(self, query: CountQuery) -> dict[str, float]:
        """Per user with at least one number: the sum of property ``query.property`` of its
        track events (one value per messageId) named ``query.event`` in the window. Only the
        (source, event, property) of a configured ``sum`` trait are recorded."""
        ...

    async def prune_history(self, windows: Mapping[str, float], *, now: float) -> int:
        """Delete each source's events older than ``now - windows[source]`` (a source not in
        ``windows``: all of them); return how many. Latest traits are kept."""
        ...

    async def claim_audience_run(self, key: str, *, now: float, every: float) -> bool:
        """Whether this process should evaluate audience ``key`` now: true at most once per
        ``every`` seconds across every process sharing the store (a compare-and-set of the
        audience's last run)."""
        ...


class Queue(Protocol):
    async def append(
        self, jobs: Sequence[NewJob], *, now: float, history: Sequence[HistoryEvent] = ()
    ) -> AppendResult:
        """Store jobs durably (all or nothing), all ``pending``; return only after the commit.
        No dedupe work here: that is done by the first claim of each job (module doc).
        ``history``: what audiences evaluate later (:class:`AudienceHistory`), stored in the
        same transaction as the jobs (an acknowledged event is in the history)."""
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

    async def renew(
        self, jobs: Sequence[Job], *, worker: str, lease_seconds: float, now: float
    ) -> set[int]:
        """Extend the leases of claimed jobs that ``worker`` still holds under their
        ``Job.lease`` token to ``now + lease_seconds``; return the ids of those (module doc,
        "Renewing"). Jobs taken over, finished or released are left alone."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return early when new jobs may have been appended (or at ``timeout`` seconds)."""
        ...

    async def stats(self) -> QueueStats:
        """Counts by state, destination and reason, totals, and the oldest unfinished job:
        read from maintained counters, so as cheap on a huge queue as on a small one."""
        ...

    async def recent_errors(self, *, limit: int = 20) -> list[ErrorRecord]:
        """The latest failed attempts (retries and dead letters), newest first: recorded by
        ``complete`` in the transaction that applies them; the last :data:`MAX_ERRORS` are
        kept."""
        ...

    async def job(self, job_id: int) -> JobRecord | None:
        """One job in any state (``None`` when there is none, e.g. pruned)."""
        ...

    async def jobs(self, *, limit: int = 50, before: int | None = None) -> list[JobRecord]:
        """The latest jobs (highest ids first), those below ``before`` when given."""
        ...

    async def search(self, field: SearchField, value: str, *, limit: int = 50) -> list[JobRecord]:
        """Jobs whose message has ``field`` equal to ``value`` (exactly), newest first, among
        those indexed by :meth:`index`."""
        ...

    async def index(self, *, limit: int = 2000) -> int:
        """Index up to ``limit`` jobs not indexed yet for :meth:`search` (:func:`search_keys`);
        return how many. Not done by ``append``, so that ingest does not pay for it: a
        background service calls it (see :mod:`heaprelay.queue.search`)."""
        ...

    async def dead_letters(
        self, *, limit: int = 100, offset: int = 0, destination: str | None = None
    ) -> list[DeadLetterRecord]: ...

    async def dead_letter(self, job_id: int) -> DeadLetterRecord | None: ...

    async def replay(
        self, ids: Sequence[int] | None, *, now: float, destination: str | None = None
    ) -> int:
        """Dead jobs back to pending (``None``: all of them, of ``destination`` when given);
        attempts reset. Returns the count."""
        ...

    async def purge(self, ids: Sequence[int] | None, *, destination: str | None = None) -> int:
        """Delete dead jobs (``None``: all of them, of ``destination`` when given). Returns
        the count."""
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


# --- audiences: membership snapshots kept beside the jobs --------------------------------


@dataclass(frozen=True, slots=True)
class AudienceRecord:
    """One audience the relay syncs to Heap (:mod:`heaprelay.audiences`), as stored."""

    name: str
    #: The Heap user property (fixed at the first sync).
    key: str
    #: The source whose Heap destinations get the updates (fixed at the first sync).
    source: str
    created_at: float
    last_sync_at: float
    #: Syncs committed so far (1 after the first).
    syncs: int
    #: Members after the last sync.
    members: int
    #: Users who entered / left in the last sync (the first sync: every member entered).
    last_entered: int
    last_left: int
    #: Jobs the last sync enqueued (updates x enabled destinations).
    last_jobs: int
    #: The last sync's jobs have ids in ``[first_job, last_job]`` and messageIds starting
    #: with ``message_prefix`` (others' jobs may be in the range on PostgreSQL).
    first_job: int | None
    last_job: int | None
    message_prefix: str
    #: ``"audience"`` (members, key = true | false) or ``"trait"`` (a computed trait: users
    #: with their values), fixed at the first sync.
    kind: str = "audience"


@dataclass(frozen=True, slots=True)
class AudienceSync:
    """A sync to commit: the new snapshot is the old one plus ``entered`` minus ``left``."""

    name: str
    key: str
    source: str
    #: The number of this sync: the stored ``syncs`` plus one (else :class:`AudienceConflict`).
    sync: int
    entered: Sequence[str]
    left: Sequence[str]
    #: The messageId prefix of this sync's updates (see :attr:`AudienceRecord.message_prefix`).
    message_prefix: str
    #: A computed trait's sync (:mod:`heaprelay.audiences.rules`): members already in the
    #: snapshot whose value changed, and the value of each user in ``entered`` or
    #: ``changed`` (an audience's sync: empty; its members have no value).
    changed: Sequence[str] = ()
    values: Mapping[str, float] = field(default_factory=dict)
    kind: str = "audience"


class AudienceConflict(Exception):
    """A sync that does not fit what is stored: another sync committed meanwhile, or the key
    or source differ from the audience's (or the key is another audience's)."""


@runtime_checkable
class AudienceStore(Protocol):
    """Audience snapshots in the queue's own store (SQLite file, PostgreSQL schema, memory):
    so that a sync's updates and its new snapshot commit in one transaction — a crash leaves
    either both or neither, and an update is never enqueued twice nor lost."""

    async def audience(self, name: str) -> AudienceRecord | None:
        """The audience called ``name`` (``None`` before its first sync)."""
        ...

    async def audiences(self) -> list[AudienceRecord]:
        """Every audience, by name."""
        ...

    async def audience_members(self, name: str) -> set[str]:
        """The user ids of the audience's snapshot (empty before its first sync)."""
        ...

    async def audience_values(self, name: str) -> dict[str, float]:
        """A computed trait's snapshot: each user's last value sent (empty before its first
        sync; for an audience, its members have no value and are left out)."""
        ...

    async def commit_audience_sync(
        self, sync: AudienceSync, jobs: Sequence[NewJob], *, now: float
    ) -> AudienceRecord:
        """Append ``jobs`` (as :meth:`Queue.append`) and apply ``sync`` to the snapshot, in
        one transaction; the audience is created by its first sync (``sync.sync == 1``).
        Raises :class:`AudienceConflict` (nothing written) when ``sync.sync`` is not the
        stored count plus one, the key or source is not the audience's, or a new audience's
        key is already another's on the same source."""
        ...

    async def audience_job_states(self, name: str) -> dict[str, dict[str, int]]:
        """Per destination, ``{state: jobs}`` of the last sync's jobs still in the queue
        (delivered and skipped jobs older than the retention are gone)."""
        ...


def check_audience_sync(sync: AudienceSync, stored: AudienceRecord | None) -> None:
    """Raise :class:`AudienceConflict` when ``sync`` does not follow ``stored``."""
    if stored is None:
        if sync.sync != 1:
            raise AudienceConflict(f"audience {sync.name!r} is gone: sync {sync.sync} has no base")
        return
    if stored.key != sync.key:
        raise AudienceConflict(
            f"audience {sync.name!r} has key {stored.key!r} (fixed at its first sync), "
            f"not {sync.key!r}"
        )
    if stored.source != sync.source:
        raise AudienceConflict(
            f"audience {sync.name!r} goes to source {stored.source!r} (fixed at its first "
            f"sync), not {sync.source!r}"
        )
    if stored.kind != sync.kind:
        kinds = {"trait": "a computed trait", "audience": "an audience"}
        raise AudienceConflict(
            f"{sync.name!r} is {kinds.get(stored.kind, stored.kind)} since its first sync, "
            f"not {kinds.get(sync.kind, sync.kind)}"
        )
    if stored.syncs != sync.sync - 1:
        raise AudienceConflict(
            f"audience {sync.name!r} was synced meanwhile (sync {stored.syncs} is stored, "
            f"this was sync {sync.sync}): run it again"
        )


def synced_record(
    sync: AudienceSync,
    stored: AudienceRecord | None,
    *,
    now: float,
    members: int,
    jobs: int,
    first_job: int | None,
    last_job: int | None,
) -> AudienceRecord:
    """The record after ``sync`` was applied to ``stored``."""
    return AudienceRecord(
        name=sync.name,
        key=sync.key,
        source=sync.source,
        created_at=stored.created_at if stored is not None else now,
        last_sync_at=now,
        syncs=sync.sync,
        members=members,
        last_entered=len(sync.entered) + len(sync.changed),
        last_left=len(sync.left),
        last_jobs=jobs,
        first_job=first_job,
        last_job=last_job,
        message_prefix=sync.message_prefix,
        kind=sync.kind,
    )
