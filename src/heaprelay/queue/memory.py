"""The in-memory reference queue: the semantics of :mod:`heaprelay.queue.base`, written to be
obviously right rather than fast. Tests use it directly, and the contract suite's state
machine compares every durable backend against it.

Decisions that the interface leaves to the backend and that this model pins (the contract
suite checks them on every backend):

- a claim hands out the ``limit`` lowest-id claimable jobs that are not duplicates (see
  :meth:`MemoryQueue.claimable` and :meth:`MemoryQueue.claim`), among those with ids below
  the oldest unfinished job's plus :data:`~heaprelay.queue.base.CLAIM_WINDOW`;
- ``renew`` keeps a job only for the claim holding it (leased, to that worker, with that
  lease token), expired or not, as ``complete`` does;
- ``complete`` ignores outcomes for jobs that are not leased any more (a worker whose lease
  expired and whose job was finished by another worker must not undo that), and outcomes
  whose ``worker`` or ``lease`` is not the job's current lease (taken over by another claim);
  ``Job.lease`` counts the claims of a job (1 on the first; replay keeps counting);
- ``stats().by_state`` lists every state (zeros included); ``by_destination``, ``by_reason``,
  ``reasons`` and ``totals`` only non-zero counts; ``oldest_pending_received_at`` is the
  ``received_at`` of the unfinished job (pending, leased, retry) with the lowest id; the model
  counts rows, the durable backends read counters they maintain (the suite compares them);
- ``recent_errors`` has one record per (destination, state, reason, answer) of each
  ``complete`` call, for the RetryAt / DeadLetter outcomes it applied, newest first, the last
  :data:`~heaprelay.queue.base.MAX_ERRORS` kept;
- ``search`` finds only what ``index`` has indexed, which it does in id order;
- dead letters are listed by ascending id;
- deduplication happens at the first claim (base.py's docstring has the rule): ``append``
  stores every job ``pending`` and keeps its window ``[now, now + job.dedupe_window)`` (a
  window of 0: never checked). :meth:`MemoryQueue.claim` walks :meth:`claimable` in id order;
  a job whose check is still to do is a duplicate iff the entry of its
  ``(source, message_id, destination)`` overlaps its window (``expires_at > job_now`` and
  ``seen_at < job_now + window``): it becomes ``skipped``/``duplicate`` (``finished_at`` the
  claim's ``now``), is not handed out and does not count towards ``limit``. Otherwise it is
  handed out and the entry becomes its window if there was none or if that ends later. The
  check is done once a job (never again after release, retry, lease expiry or replay);
  within one claim the first job handed out is remembered before the next is checked;
  pruning jobs does not forget entries;
- ``prune`` deletes ``delivered``/``skipped`` jobs that finished strictly before the time, and
  remembered messageIds that expired before it;
- the audiences' history (``AudienceHistory``): track events in a list, each user's latest
  traits merged in append order (a later value replaces, ``null`` removes the key); events
  counted once per messageId;
  ``prune_history`` deletes events strictly older than the cut-off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import (
    CLAIM_WINDOW,
    DUPLICATE_DETAIL,
    MAX_ERRORS,
    REASON_STATES,
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
    State,
    check_audience_sync,
    error_groups,
    is_duplicate,
    merged_traits,
    remembered,
    search_key,
    search_keys,
    stats_from_counts,
    sum_event,
    synced_record,
    trait_matches,
)

UNFINISHED: frozenset[State] = frozenset({"pending", "leased", "retry"})


@dataclass(slots=True)
class _Row:
    id: int
    new: NewJob
    appended_at: float
    state: State = "pending"
    attempts: int = 0
    first_attempt_at: float | None = None
    leased_by: str | None = None
    lease_until: float | None = None
    #: Claims so far (the current claim's lease token).
    leases: int = 0
    retry_at: float | None = None
    reason: str = ""
    detail: str = ""
    answer: str = ""
    finished_at: float | None = None
    #: The dedupe check is still to do (set by append when the job has a window).
    unchecked: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.new.destination, self.new.order_key)

    def job(self) -> Job:
        n = self.new
        return Job(
            id=self.id,
            source=n.source,
            destination=n.destination,
            message_id=n.message_id,
            order_key=n.order_key,
            payload=n.payload,
            received_at=n.received_at,
            attempts=self.attempts,
            first_attempt_at=self.first_attempt_at,
            lease=self.leases,
        )

    def record(self) -> JobRecord:
        n = self.new
        due = self.lease_until if self.state == "leased" else self.retry_at
        return JobRecord(
            id=self.id,
            source=n.source,
            destination=n.destination,
            message_id=n.message_id,
            order_key=n.order_key,
            payload=n.payload,
            received_at=n.received_at,
            state=self.state,
            attempts=self.attempts,
            reason=self.reason if self.state in REASON_STATES else "",
            detail=self.detail if self.state in REASON_STATES else "",
            answer=self.answer,
            finished_at=self.finished_at,
            due_at=due if self.state in ("leased", "retry") else None,
        )

    def dead_letter(self) -> DeadLetterRecord:
        n = self.new
        return DeadLetterRecord(
            id=self.id,
            source=n.source,
            destination=n.destination,
            message_id=n.message_id,
            payload=n.payload,
            reason=self.reason,
            detail=self.detail,
            answer=self.answer,
            attempts=self.attempts,
            received_at=n.received_at,
            dead_at=self.finished_at if self.finished_at is not None else 0.0,
        )


class MemoryQueue:
    """A :class:`~heaprelay.queue.base.Queue` held in a dict. Not durable (tests only)."""

    def __init__(self, *, claim_window: int = CLAIM_WINDOW) -> None:
        self.claim_window = claim_window
        #: (source, message_id, destination) -> (seen_at, expires_at) of its remembered job
        self._seen: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._rows: dict[int, _Row] = {}
        #: worker -> last heartbeat (WorkerRegistry)
        self._workers: dict[str, float] = {}
        self._next_id = 1
        self._wake = asyncio.Event()
        #: (destination, event) -> times it happened (QueueStats.totals)
        self._totals: Counter[tuple[str, str]] = Counter()
        self._errors: list[ErrorRecord] = []
        #: search key -> ids of the jobs found under it (ascending); jobs below _indexed_to
        #: are indexed
        self._search: dict[str, list[int]] = {}
        self._indexed_to = 1
        #: AudienceStore: name -> record, name -> members
        self._audiences: dict[str, AudienceRecord] = {}
        self._members: dict[str, set[str]] = {}
        #: computed traits' snapshots: name -> user -> value
        self._values: dict[str, dict[str, float]] = {}
        #: AudienceHistory: (source, event, ts, user_id) of track events; latest traits per
        #: (source, user_id); audience key -> last scheduled run
        self._history: list[tuple[str, str, float, str, str, float | None]] = []
        self._traits: dict[tuple[str, str], dict[str, object]] = {}
        self._runs: dict[str, float] = {}

    # --- the reference decisions ----------------------------------------------------------

    def claimable(self, now: float) -> list[int]:
        """Ids that a claim at ``now`` may hand out, in the order it hands them out (those
        whose dedupe check finds a duplicate are skipped instead: :meth:`claim`).

        A key is blocked while any of its unfinished jobs is leased (unexpired) or waiting
        for a retry time not yet reached; otherwise all its unfinished jobs are claimable.
        Taking any prefix of the id-ordered list gives each key a prefix of its own run.
        Only jobs with ids below the oldest unfinished one's plus ``claim_window`` are looked
        at (base.py, "Claim window").
        """
        blocked: set[tuple[str, str]] = set()
        for row in self._rows.values():
            if (
                row.state == "leased" and row.lease_until is not None and row.lease_until > now
            ) or (row.state == "retry" and row.retry_at is not None and row.retry_at > now):
                blocked.add(row.key)
        unfinished = sorted(row.id for row in self._rows.values() if row.state in UNFINISHED)
        end = unfinished[0] + self.claim_window if unfinished else 0
        return [i for i in unfinished if i < end and self._rows[i].key not in blocked]

    def state_of(self, job_id: int) -> State | None:
        row = self._rows.get(job_id)
        return row.state if row else None

    def lease(
        self, ids: Sequence[int], worker: str, *, lease_seconds: float, now: float
    ) -> list[Job]:
        """Lease exactly these jobs (no dedupe check: :meth:`claim` does that first)."""
        jobs = []
        for job_id in ids:
            row = self._rows[job_id]
            row.state = "leased"
            row.leased_by = worker
            row.lease_until = now + lease_seconds
            row.leases += 1
            row.retry_at = None
            jobs.append(row.job())
        return jobs

    # --- the Queue interface ---------------------------------------------------------------

    async def append(
        self, jobs: Sequence[NewJob], *, now: float, history: Sequence[HistoryEvent] = ()
    ) -> AppendResult:
        self._history += [
            (e.source, e.event, e.ts, e.user_id, e.message_id, e.value)
            for e in history
            if e.traits is None
        ]
        for who, traits in merged_traits(history).items():
            merged = {**self._traits.get(who, {}), **traits}
            self._traits[who] = {k: v for k, v in merged.items() if v is not None}
        for new in jobs:
            row = _Row(id=self._next_id, new=new, appended_at=now)
            row.unchecked = new.dedupe_window > 0
            self._next_id += 1
            self._rows[row.id] = row
            self._totals[(new.destination, "received")] += 1
        if jobs:
            self._wake.set()
        return AppendResult(stored=len(jobs))

    def duplicate(self, row: _Row) -> bool:
        """Whether ``row`` (its check still to do) duplicates its triple's remembered entry;
        if not, remember it (base.py's rule)."""
        n = row.new
        triple = (n.source, n.message_id, n.destination)
        start, end = row.appended_at, row.appended_at + n.dedupe_window
        entry = self._seen.get(triple)
        if is_duplicate(entry, start, end):
            return True
        if (new := remembered(entry, start, end)) is not None:
            self._seen[triple] = new
        return False

    async def claim(
        self, worker: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[Job]:
        ids: list[int] = []
        for job_id in self.claimable(now):
            if len(ids) >= limit:
                break
            row = self._rows[job_id]
            if row.unchecked:
                row.unchecked = False
                if self.duplicate(row):
                    self._totals[(row.new.destination, "skipped")] += 1
                    row.state = "skipped"
                    row.reason = Reason.DUPLICATE.value
                    row.detail = DUPLICATE_DETAIL
                    row.finished_at = now
                    continue
            ids.append(job_id)
        return self.lease(ids, worker, lease_seconds=lease_seconds, now=now)

    def holds(self, outcome: Outcome, worker: str | None) -> bool:
        """Whether ``outcome`` (reported by ``worker``) is for the job's current lease."""
        row = self._rows.get(outcome.id)
        return (
            row is not None
            and row.state == "leased"
            and (worker is None or row.leased_by == worker)
            and (outcome.lease is None or row.leases == outcome.lease)
        )

    async def renew(
        self, jobs: Sequence[Job], *, worker: str, lease_seconds: float, now: float
    ) -> set[int]:
        kept: set[int] = set()
        for job in jobs:
            row = self._rows.get(job.id)
            if (
                row is not None
                and row.state == "leased"
                and row.leased_by == worker
                and row.leases == job.lease
            ):
                row.lease_until = now + lease_seconds
                kept.add(job.id)
        return kept

    async def complete(
        self, outcomes: Sequence[Outcome], *, now: float, worker: str | None = None
    ) -> None:
        woke = False
        failed: list[RetryAt | DeadLetter] = []
        for outcome in outcomes:
            if not self.holds(outcome, worker):
                continue
            row = self._rows[outcome.id]
            if isinstance(outcome, RetryAt | DeadLetter):
                failed.append(outcome)
            if not isinstance(outcome, Release):
                state = {Delivered: "delivered", RetryAt: "retry", DeadLetter: "dead"}.get(
                    type(outcome), "skipped"
                )
                self._totals[(row.new.destination, state)] += 1
            row.leased_by = None
            row.lease_until = None
            if isinstance(outcome, Release):
                row.state = "pending"
                woke = True
                continue
            if isinstance(outcome, Skipped):
                row.state = "skipped"
                row.reason = outcome.reason.value
                row.detail = outcome.detail
                row.finished_at = now
                continue
            row.attempts += 1
            if row.first_attempt_at is None:
                row.first_attempt_at = now
            if isinstance(outcome, Delivered):
                row.state = "delivered"
                row.answer = outcome.answer
                row.finished_at = now
            elif isinstance(outcome, RetryAt):
                row.state = "retry"
                row.retry_at = outcome.at
                row.reason = outcome.reason
                row.answer = outcome.answer
            elif isinstance(outcome, DeadLetter):
                row.state = "dead"
                row.reason = outcome.reason.value
                row.detail = outcome.detail
                row.answer = outcome.answer
                row.finished_at = now
        destinations = {o.id: self._rows[o.id].new.destination for o in failed}
        for destination, state, reason, answer, count, first in error_groups(failed, destinations):
            self._errors.append(
                ErrorRecord(
                    len(self._errors) + 1, now, destination, state, reason, answer, count, first
                )
            )
        del self._errors[:-MAX_ERRORS]
        if woke:
            self._wake.set()

    async def wait_for_work(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def stats(self) -> QueueStats:
        rows: Counter[tuple[str, str, str, str]] = Counter()
        oldest: tuple[int, float] | None = None
        for row in self._rows.values():
            reason = row.reason if row.state in REASON_STATES else ""
            rows[("now", row.new.destination, row.state, reason)] += 1
            if row.state in UNFINISHED and (oldest is None or row.id < oldest[0]):
                oldest = (row.id, row.new.received_at)
        for (destination, event), n in self._totals.items():
            rows[("total", destination, event, "")] += n
        return stats_from_counts(
            ((*key, n) for key, n in rows.items()), oldest[1] if oldest else None
        )

    async def recent_errors(self, *, limit: int = 20) -> list[ErrorRecord]:
        return list(reversed(self._errors[-limit:])) if limit > 0 else []

    async def job(self, job_id: int) -> JobRecord | None:
        row = self._rows.get(job_id)
        return row.record() if row is not None else None

    async def jobs(self, *, limit: int = 50, before: int | None = None) -> list[JobRecord]:
        ids = sorted((i for i in self._rows if before is None or i < before), reverse=True)
        return [self._rows[i].record() for i in ids[:limit]]

    async def search(self, field: SearchField, value: str, *, limit: int = 50) -> list[JobRecord]:
        ids = [i for i in self._search.get(search_key(field, value), []) if i in self._rows]
        return [self._rows[i].record() for i in sorted(ids, reverse=True)[:limit]]

    async def index(self, *, limit: int = 2000) -> int:
        todo = sorted(i for i in self._rows if i >= self._indexed_to)[:limit]
        for job_id in todo:
            for key in search_keys(self._rows[job_id].new.payload):
                self._search.setdefault(key, []).append(job_id)
        if todo:
            self._indexed_to = todo[-1] + 1
        return len(todo)

    async def dead_letters(
        self, *, limit: int = 100, offset: int = 0, destination: str | None = None
    ) -> list[DeadLetterRecord]:
        rows = [
            r
            for r in sorted(self._rows.values(), key=lambda r: r.id)
            if r.state == "dead" and (destination is None or r.new.destination == destination)
        ]
        return [r.dead_letter() for r in rows[offset : offset + limit]]

    async def dead_letter(self, job_id: int) -> DeadLetterRecord | None:
        row = self._rows.get(job_id)
        return row.dead_letter() if row is not None and row.state == "dead" else None

    def _dead(self, ids: Sequence[int] | None, destination: str | None) -> list[_Row]:
        if ids is None:
            rows = [r for r in self._rows.values() if r.state == "dead"]
        else:
            found = (self._rows.get(i) for i in set(ids))
            rows = [r for r in found if r is not None and r.state == "dead"]
        return [r for r in rows if destination is None or r.new.destination == destination]

    async def replay(
        self, ids: Sequence[int] | None, *, now: float, destination: str | None = None
    ) -> int:
        rows = self._dead(ids, destination)
        for row in rows:
            row.state = "pending"
            row.attempts = 0
            row.first_attempt_at = None
            row.reason = row.detail = row.answer = ""
            row.finished_at = None
        if rows:
            self._wake.set()
        return len(rows)

    async def purge(self, ids: Sequence[int] | None, *, destination: str | None = None) -> int:
        rows = self._dead(ids, destination)
        for row in rows:
            del self._rows[row.id]
        return len(rows)

    async def prune(self, *, delivered_before: float) -> int:
        doomed = [
            r.id
            for r in self._rows.values()
            if r.state in ("delivered", "skipped")
            and r.finished_at is not None
            and r.finished_at < delivered_before
        ]
        for job_id in doomed:
            del self._rows[job_id]
        self._seen = {t: e for t, e in self._seen.items() if e[1] >= delivered_before}
        return len(doomed)

    async def history_members(self, query: MemberQuery) -> set[str]:
        events = {
            (user, message)
            for source, event, ts, user, message, _ in self._history
            if (source, event) == (query.source, query.event) and query.start <= ts <= query.end
        }
        counts: Counter[str] = Counter(user for user, _ in events)
        return {
            user
            for user, n in counts.items()
            if n >= query.at_least
            and all(
                key in (traits := self._traits.get((query.source, user), {}))
                and trait_matches(traits[key], want)
                for key, want in query.traits
            )
        }

    async def history_counts(self, query: CountQuery) -> dict[str, int]:
        events = {
            (user, message)
            for source, event, ts, user, message, _ in self._history
            if (source, event) == (query.source, query.event) and query.start <= ts <= query.end
        }
        return dict(Counter(user for user, _ in events))

    async def history_sums(self, query: CountQuery) -> dict[str, float]:
        wanted = sum_event(query.event, query.property or "")
        values = {
            (user, message): value
            for source, event, ts, user, message, value in self._history
            if (source, event) == (query.source, wanted)
            and query.start <= ts <= query.end
            and value is not None
        }
        sums: dict[str, float] = {}
        for (user, _), value in values.items():
            sums[user] = sums.get(user, 0.0) + value
        return sums

    async def prune_history(self, windows: Mapping[str, float], *, now: float) -> int:
        kept = [
            row for row in self._history if row[0] in windows and row[2] >= now - windows[row[0]]
        ]
        pruned = len(self._history) - len(kept)
        self._history = kept
        return pruned

    async def claim_audience_run(self, key: str, *, now: float, every: float) -> bool:
        last = self._runs.get(key)
        if last is not None and last > now - every:
            return False
        self._runs[key] = now
        return True

    async def heartbeat(self, worker: str, *, now: float, ttl: float) -> int:
        self._workers[worker] = max(now, self._workers.get(worker, now))
        return sum(1 for seen in self._workers.values() if seen >= now - ttl)

    async def leave(self, worker: str) -> None:
        self._workers.pop(worker, None)

    # --- audiences (queue/base.py, AudienceStore) -------------------------------------------

    async def audience(self, name: str) -> AudienceRecord | None:
        return self._audiences.get(name)

    async def audiences(self) -> list[AudienceRecord]:
        return [self._audiences[name] for name in sorted(self._audiences)]

    async def audience_members(self, name: str) -> set[str]:
        return set(self._members.get(name, ()))

    async def audience_values(self, name: str) -> dict[str, float]:
        return dict(self._values.get(name, {}))

    async def commit_audience_sync(
        self, sync: AudienceSync, jobs: Sequence[NewJob], *, now: float
    ) -> AudienceRecord:
        stored = self._audiences.get(sync.name)
        check_audience_sync(sync, stored)
        if stored is None:
            for other in self._audiences.values():
                if other.source == sync.source and other.key == sync.key:
                    raise AudienceConflict(
                        f"key {sync.key!r} is already audience {other.name!r}'s on source "
                        f"{sync.source!r}"
                    )
        first = self._next_id if jobs else None
        await self.append(jobs, now=now)
        members = self._members.setdefault(sync.name, set())
        members.update(sync.entered)
        members.difference_update(sync.left)
        values = self._values.setdefault(sync.name, {})
        values.update(
            {u: sync.values[u] for u in (*sync.entered, *sync.changed) if u in sync.values}
        )
        for user in sync.left:
            values.pop(user, None)
        record = synced_record(
            sync,
            stored,
            now=now,
            members=len(members),
            jobs=len(jobs),
            first_job=first,
            last_job=self._next_id - 1 if jobs else None,
        )
        self._audiences[sync.name] = record
        return record

    async def audience_job_states(self, name: str) -> dict[str, dict[str, int]]:
        record = self._audiences.get(name)
        if record is None or record.first_job is None or record.last_job is None:
            return {}
        found: dict[str, dict[str, int]] = {}
        for i in range(record.first_job, record.last_job + 1):
            row = self._rows.get(i)
            if row is None or row.new.source != record.source:
                continue
            if not row.new.message_id.startswith(record.message_prefix):
                continue
            per = found.setdefault(row.new.destination, {})
            per[row.state] = per.get(row.state, 0) + 1
        return found

    async def close(self) -> None:
        return None
