"""The delivery loop: claim → filter → transform → batch → rate-limit → send → classify →
complete.

Each :class:`Router` runs ``concurrency`` loops. One pass of a loop (:meth:`Router.run_once`):

1. claim up to ``claim_requests × batch_size`` jobs (waiting ``flush_interval`` once for
   more when the claim came back short, so that a trickle still makes bulk requests);
2. per job: the destination's filters, then its profile's transform (a skip is recorded with
   its reason); every track event gets an ``idempotency_key``;
3. batch the requests per (url, app_id, endpoint) into Heap's bulk form. An event that
   becomes several requests (a profile update, then the track) is sent in stages: the
   jobs' first requests, then their second ones, and so on; a job's next request goes only
   once its previous one was accepted (so a track never goes ahead of the profile update of
   its own event; if that update must be retried, the track waits for the retry);
4. per bulk request: book the rate limits and wait for them (backpressure, never a failure;
   the jobs of an identity whose budget is too far out are released untried instead),
   send, and classify Heap's answer with :func:`heaprelay.router.retry.decide`. A refused
   (4xx) bulk request is split in halves until the refused items are alone: they are
   dead-lettered with Heap's answer, the others are delivered;
5. complete every claimed job with exactly one outcome.

Per-identity order: the queue hands out a key's jobs only in order and never while an
earlier one waits for a retry. Within one claim, once a job of an order key fails in a
retryable way, the later jobs of that key that were not sent yet are released untried, so
nothing of that key is sent ahead of the failed job.

Stopping: a pass waiting for rate budget stops waiting when the router is told to stop and
gives the unsent jobs back (``Release``); a pass cancelled outright (the server's grace
period ran out) releases all the jobs it holds before it ends, rather than leaving them
leased until the lease expires. Releasing a job that was in fact sent only means sending it
again later, in order; Heap absorbs a repeated track by its ``idempotency_key``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from heaprelay.clock import Clock
from heaprelay.config import DeliverySettings, Destination
from heaprelay.heap.client import HeapAnswer, HeapClient
from heaprelay.heap.models import HeapRequest
from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import (
    DeadLetter,
    Delivered,
    Job,
    Outcome,
    Queue,
    Release,
    Skipped,
    with_leases,
)
from heaprelay.router.batcher import MAX_BULK_ITEMS, Batch, batch
from heaprelay.router.filters import check
from heaprelay.router.observer import DeliveryObserver, Observers
from heaprelay.router.ratelimit import RateLimiter
from heaprelay.router.retry import RetryPolicy, classify, decide, parse_retry_after
from heaprelay.transform import Skip, transform

__all__ = ["DeliveryStats", "Router", "with_idempotency_key"]

log = logging.getLogger("heaprelay.router")

_TRACK_ENDPOINTS = ("track", "integrations/track")


def with_idempotency_key(request: HeapRequest, key: str) -> HeapRequest:
    """``request`` with ``key`` as the ``idempotency_key`` of each track event that has none.

    Why a message's ``messageId`` is a safe key: it is chosen by the SDK once per event and
    stays the same on every resend (the SDK's and ours), ingest already treats two messages
    with the same messageId from a source as one event (deduplication), and Heap scopes the
    key to the app_id. So the key only ever merges resends of the same event — which is
    exactly what a retry after a timeout needs. A message that becomes several track events
    gets one key per event (``messageId``, ``messageId:1``, …).
    """
    if request.endpoint not in _TRACK_ENDPOINTS:
        return request
    body = dict(request.body)
    events = body.get("events")
    if isinstance(events, list):
        new_events: list[Any] = []
        for n, event in enumerate(events):
            if isinstance(event, dict) and not event.get("idempotency_key"):
                event = {**event, "idempotency_key": key if n == 0 else f"{key}:e{n}"}
            new_events.append(event)
        body["events"] = new_events
    elif not body.get("idempotency_key"):
        body["idempotency_key"] = key
    else:
        return request
    return HeapRequest(request.base_url, request.endpoint, body, request.method, request.headers)


def _identity_of(item: Mapping[str, Any]) -> str:
    value = item.get("identity")
    if value is None:
        value = item.get("user_id")
    if value is None and isinstance(item.get("user_identifier"), Mapping):
        ident = item["user_identifier"]
        value = ident.get("identity") or ident.get("anonymous_id") or ident.get("user_id")
    return str(value)


@dataclass(slots=True)
class DeliveryStats:
    """Counters of this process's delivery (the status API and the bench read them)."""

    requests: Counter[int] = field(default_factory=Counter)
    delivered_jobs: int = 0
    delivered_items: int = 0
    retried_jobs: int = 0
    dead_jobs: int = 0
    skipped_jobs: int = 0
    released_jobs: int = 0
    last_errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.last_errors.append(text)
        del self.last_errors[:-20]


@dataclass(slots=True)
class _Pass:
    """The bookkeeping of one claim: answers per job, keys blocked by a retryable failure."""

    jobs: dict[int, Job]
    answers: dict[int, list[HeapAnswer]] = field(default_factory=dict)
    released: set[int] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    #: Jobs with a refused or failed request: their later requests are not sent.
    failed: set[int] = field(default_factory=set)
    #: Seconds until a released hot identity has budget again (0: none released for that).
    hold: float = 0.0

    def key(self, job_id: int) -> str:
        job = self.jobs[job_id]
        return f"{job.destination}\x00{job.order_key}"


class Router:
    """Delivery workers for one process. ``run`` until ``stopping`` is set."""

    def __init__(
        self,
        queue: Queue,
        destinations: Mapping[str, Destination],
        client: HeapClient,
        clock: Clock,
        settings: DeliverySettings | None = None,
        *,
        name: str = "worker",
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        lease_seconds: float | None = None,
        claim_requests: int = 4,
        observer: DeliveryObserver | None = None,
    ) -> None:
        self.queue = queue
        self.destinations = dict(destinations)
        self.client = client
        self.clock = clock
        self.settings = settings or DeliverySettings()
        self.name = name
        self.policy = policy or RetryPolicy(self.settings.retry_base, self.settings.retry_cap)
        self.rng = rng or random.Random()
        self.lease_seconds = lease_seconds or self.settings.lease_seconds
        s = self.settings
        self.limiter = RateLimiter(
            app_per_minute=s.app_events_per_minute,
            identity_per_minute=s.identity_events_per_minute,
            time_scale=s.time_scale,
            app_burst=min(MAX_BULK_ITEMS, s.batch_size),
            enabled=s.rate_limits,
        )
        self.stats = DeliveryStats()
        #: Told of requests, answers, pauses and outcomes (metrics, logs, the debugger).
        self.observer: DeliveryObserver = observer or Observers()
        self.claim_requests = max(1, claim_requests)
        self._last_hold = 0.0
        self._stopping: asyncio.Event | None = None

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        loops = [
            asyncio.create_task(self._loop(stopping, n), name=f"{self.name}-{n}")
            for n in range(max(1, self.settings.concurrency))
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()

    async def _loop(self, stopping: asyncio.Event, n: int) -> None:
        while not stopping.is_set():
            try:
                handled = await self.run_once(worker=f"{self.name}-{n}")
            except Exception:  # a bad pass must not stop delivery; leases bring jobs back
                log.exception("delivery pass failed")
                self.stats.error("delivery pass failed (see logs)")
                handled = 0
            if handled == 0:
                # New jobs wake every loop at once. Retries that come due are found by polling:
                # loop 0 often, the others less and less, so idle loops do not crowd the queue.
                idle = max(0.1, self.settings.flush_interval * 5)
                await self._idle(stopping, idle * (1 + n))

    async def _idle(self, stopping: asyncio.Event, timeout: float) -> None:
        """Wait for new work, ``timeout`` or the stop signal, whichever comes first."""
        waiters = {
            asyncio.ensure_future(self.queue.wait_for_work(timeout)),
            asyncio.ensure_future(stopping.wait()),
        }
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def run_once(self, *, worker: str | None = None) -> int:
        """Claim, deliver and complete one batch of jobs. Returns how many were claimed."""
        worker = worker or self.name
        # Several bulk requests' worth per claim: claiming and completing cost the same for
        # 1 or 4,000 jobs, and the requests of one claim go out back to back.
        limit = max(1, self.settings.batch_size) * self.claim_requests
        # Claim only while the rate budget is at most two requests in debt: further ahead, the
        # claimed jobs would sit leased while they wait (see RateLimiter.claim_wait).
        wait = self.limiter.claim_wait(self.clock.monotonic())
        if wait > 0 and not await self._wait_unless_stopping(wait):
            return 0
        jobs = await self.queue.claim(
            worker, limit=limit, lease_seconds=self.lease_seconds, now=self.clock.now()
        )
        if not jobs:
            return 0
        try:
            if len(jobs) < limit and self.settings.flush_interval > 0:
                await self.clock.sleep(self.settings.flush_interval)
                jobs += await self.queue.claim(
                    worker,
                    limit=limit - len(jobs),
                    lease_seconds=self.lease_seconds,
                    now=self.clock.now(),
                )
            outcomes = await self.deliver(jobs)
        except asyncio.CancelledError:
            await self._give_back(jobs, worker)
            raise
        # Only while this claim still holds the jobs (a lease taken over ignores them).
        now = self.clock.now()
        await self.queue.complete(with_leases(outcomes, jobs), now=now, worker=worker)
        self.observer.finished(jobs, outcomes, now)
        if self._last_hold and all(isinstance(o, Release) for o in outcomes):
            # Only jobs of identities out of budget: wait instead of claiming them again at once.
            await self.clock.sleep(min(self._last_hold, self.lease_seconds / 3))
        return len(jobs)

    async def _wait_unless_stopping(self, seconds: float) -> bool:
        """Sleep ``seconds``; False (at once) if the router is told to stop meanwhile."""
        stopping = self._stopping
        if stopping is None:
            await self.clock.sleep(seconds)
            return True
        if stopping.is_set():
            return False
        sleep = asyncio.ensure_future(self.clock.sleep(seconds))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({sleep, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            stop.cancel()
        return not stopping.is_set()

    async def _give_back(self, jobs: Sequence[Job], worker: str) -> None:
        """The pass holding ``jobs`` was cancelled: release them all now (see the module doc)
        instead of leaving them leased until the lease expires."""
        releases = [Release(job.id, lease=job.lease) for job in jobs]
        try:
            await asyncio.wait_for(
                self.queue.complete(releases, now=self.clock.now(), worker=worker), 5.0
            )
        except Exception:  # the lease brings them back anyway
            log.exception("could not release %d jobs of a cancelled pass", len(jobs))
        else:
            self.stats.released_jobs += len(jobs)
            log.info("released %d jobs of a cancelled delivery pass", len(jobs))

    # --- one claim --------------------------------------------------------------------------

    async def deliver(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Deliver claimed jobs; one outcome per job."""
        state = _Pass({job.id: job for job in jobs})
        outcomes: dict[int, Outcome] = {}
        # stages[k]: the k-th request of every job (module doc, step 3)
        stages: list[list[tuple[int, HeapRequest]]] = []
        for job in jobs:
            prepared = self._prepare(job)
            if isinstance(prepared, list):
                for k, request in enumerate(prepared):
                    if k == len(stages):
                        stages.append([])
                    stages[k].append((job.id, request))
                state.answers[job.id] = []
            else:
                outcomes[job.id] = prepared
        max_items = min(MAX_BULK_ITEMS, max(1, self.settings.batch_size))
        for pairs in stages:
            groups: dict[tuple[str, str, str], list[Batch]] = {}
            for b in batch(pairs, max_items=max_items):
                groups.setdefault((b.url, b.endpoint, b.app_id), []).append(b)
            await asyncio.gather(*(self._send_group(state, g) for g in groups.values()))
        self._last_hold = state.hold
        now = self.clock.now()
        for job_id, answers in state.answers.items():
            outcomes[job_id] = self._outcome(state, state.jobs[job_id], answers, now)
        for outcome in outcomes.values():
            self._count(outcome)
        return [outcomes[job.id] for job in jobs]

    def _prepare(self, job: Job) -> list[HeapRequest] | Outcome:
        destination = self.destinations.get(job.destination)
        if destination is None or not destination.enabled:
            return DeadLetter(
                job.id,
                Reason.DESTINATION_REMOVED,
                f"destination {job.destination!r} is not in the configuration",
            )
        try:
            message = orjson.loads(job.payload)
        except orjson.JSONDecodeError as exc:
            return DeadLetter(job.id, Reason.INVALID_FIELD, f"stored payload is not JSON: {exc}")
        if not isinstance(message, dict):
            return DeadLetter(job.id, Reason.INVALID_FIELD, "stored payload is not a JSON object")
        skip = check(message, destination)
        if skip is not None:
            return Skipped(job.id, skip.reason, skip.detail)
        try:
            result = transform(message, destination.settings)
        except Exception as exc:  # profiles must not raise; if one does, keep the event
            log.exception("transform failed for job %d", job.id)
            return DeadLetter(job.id, Reason.INVALID_FIELD, f"transform failed: {exc!r}")
        if isinstance(result, Skip):
            return Skipped(job.id, result.reason, result.detail)
        key = job.message_id or f"heaprelay:{job.destination}:{job.id}"
        track_n = 0
        requests: list[HeapRequest] = []
        for request in result:
            if request.endpoint in _TRACK_ENDPOINTS:
                request = with_idempotency_key(request, key if track_n == 0 else f"{key}:{track_n}")
                track_n += 1
            requests.append(request)
        self.observer.prepared(job, requests)
        return requests

    async def _send_group(self, state: _Pass, batches: list[Batch]) -> None:
        # The bulk requests of one (url, endpoint, app_id) go one after the other, in order.
        for b in batches:
            await self._send(state, b)

    async def _send(self, state: _Pass, b: Batch) -> None:
        items = []
        for item in b.items:
            if item.owner in state.failed or item.owner in state.released:
                continue  # an earlier request of its event failed, or the job was given back
            if state.key(item.owner) in state.blocked:
                state.released.add(item.owner)
            else:
                items.append(item)
        if not items:
            return
        b = b.with_items(items)
        if b.endpoint == "track" and self.limiter.enabled:
            b = self._hold_hot_identities(state, b)
            if not b.items:
                return
            counts = Counter(_identity_of(item.body) for item in b.items)
            wait = self.limiter.reserve(b.app_id, counts, self.clock.monotonic())
            if wait > self.lease_seconds / 3:
                # Other passes booked the app's budget that far ahead: give these jobs back
                # rather than hold them leased (a lease must never expire while we wait).
                self.limiter.cancel(b.app_id, counts)
                for item in b.items:
                    state.released.add(item.owner)
                    state.blocked.add(state.key(item.owner))
                state.hold = min(wait, self.lease_seconds / 3)
                return
            if wait > 0 and not await self._wait_unless_stopping(wait):
                # Stopping: give the jobs back rather than wait (or be cancelled waiting).
                self.limiter.cancel(b.app_id, counts)
                for item in b.items:
                    state.released.add(item.owner)
                    state.blocked.add(state.key(item.owner))
                return
        started = time.perf_counter()
        answer = await self.client.post(b.url, b.body(), headers=dict(b.headers))
        self.observer.sent(b, answer, time.perf_counter() - started)
        self.stats.requests[answer.status] += 1
        if answer.status == 429:
            # Heap says the budget is spent: pause every sender of this app_id, not just the
            # jobs of this request (backpressure, not failure).
            pause = parse_retry_after(answer.retry_after, now=self.clock.now()) or 1.0
            self.limiter.pause(b.app_id, pause, self.clock.monotonic())
            self.observer.paused(b.app_id, pause)
        kind = classify(answer)
        if kind == "reject" and len(b.items) > 1:
            first, second = b.split()
            await self._send(state, first)
            await self._send(state, second)
            return
        if kind != "ok":
            self.stats.error(f"{b.url}: {answer.describe()[:300]}")
        for owner in b.owners():
            state.answers[owner].append(answer)
            if kind != "ok":
                state.failed.add(owner)
            if kind == "retry":
                state.blocked.add(state.key(owner))
        if kind == "ok":
            self.stats.delivered_items += len(b.items)

    def _hold_hot_identities(self, state: _Pass, b: Batch) -> Batch:
        """Release the items of an identity beyond what its budget allows soon (Heap allows
        1,000 events a minute per identity), rather than keep their jobs leased while waiting.
        The first items of the identity go; from the first one released, the rest of its
        order key waits for a later claim."""
        now = self.clock.monotonic()
        # Half the longest wait allowed for a booking (see _send), so that what is kept here
        # surely fits.
        within = self.lease_seconds / 6
        allowance: dict[str, int] = {}
        keep = []
        for item in b.items:
            identity = _identity_of(item.body)
            left = allowance.get(identity)
            if left is None:
                left = self.limiter.identity_allowance(b.app_id, identity, within, now)
            key = state.key(item.owner)
            if left <= 0 or key in state.blocked:
                state.released.add(item.owner)
                state.blocked.add(key)
                state.hold = within
            else:
                keep.append(item)
                left -= 1
            allowance[identity] = left
        return b if len(keep) == len(b.items) else b.with_items(keep)

    def _outcome(self, state: _Pass, job: Job, answers: list[HeapAnswer], now: float) -> Outcome:
        retry_window = self.destinations[job.destination].retry_window
        worst: HeapAnswer | None = None
        for answer in answers:
            kind = classify(answer)
            if kind == "reject":
                worst = answer
                break
            if kind == "retry" and worst is None:
                worst = answer
        if worst is None and job.id in state.released:
            return Release(job.id)
        if worst is None:
            if not answers:  # all of its items were released
                return Release(job.id)
            worst = answers[-1]
        return decide(
            job.id,
            worst,
            attempts=job.attempts,
            first_attempt_at=job.first_attempt_at,
            now=now,
            retry_window=retry_window,
            policy=self.policy,
            rng=self.rng,
        )

    def _count(self, outcome: Outcome) -> None:
        s = self.stats
        if isinstance(outcome, Delivered):
            s.delivered_jobs += 1
        elif isinstance(outcome, DeadLetter):
            s.dead_jobs += 1
        elif isinstance(outcome, Skipped):
            s.skipped_jobs += 1
        elif isinstance(outcome, Release):
            s.released_jobs += 1
        else:
            s.retried_jobs += 1
