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
   (4xx) bulk request is split until the refused items are alone: they are dead-lettered
   with Heap's answer, the others are delivered (see "Refused requests" below);
5. record each job's outcome in the queue as soon as it is decided: after every bulk
   request, the outcomes it settled (``Queue.complete``), so that a long pass loses nothing
   of what it did; every claimed job gets exactly one outcome.

A pass's time is bounded by what it holds, not by a lease: while it waits for budget or
splits refused requests, it renews the leases of the jobs it still holds every third of a
lease (``Queue.renew``), so they are never taken over and sent again by another loop while
it works. (A worker that stalls for longer than a lease loses them all the same: the new
holder has them, and this pass sends nothing more of them.)

Refused requests: the parts of a refused request are sent in order, each wholly settled
before the next (so that per identity the accepted items keep their order), always within
the pass — given back, they would come back in a full request, be refused and split again.
They pay the rate budget like any request (whether Heap counts a refused request against its
limits is not documented), so how they are cut matters: halves while nothing is known,
then about four parts per refused item expected from what refused requests held lately
(:func:`split_parts`), which re-sends far fewer accepted items when many are refused. A
request books its identities' budget before the app's, so that app budget never sits
booked by a request that waits for one hot identity.

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
import contextlib
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from heaprelay.clock import Clock
from heaprelay.config import DeliverySettings, Destination
from heaprelay.heap.client import HeapAnswer, HeapClient
from heaprelay.heap.models import HeapRequest
from heaprelay.logs import FailureLog
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

__all__ = [
    "OWN_KEY_PROFILES",
    "DeliveryStats",
    "Router",
    "scoped_key",
    "split_parts",
    "with_idempotency_key",
    "with_scoped_keys",
]

log = logging.getLogger("heaprelay.router")

_TRACK_ENDPOINTS = ("track", "integrations/track")


def unwritable(request: HeapRequest) -> str | None:
    """Why ``request`` cannot be sent (its body cannot be written as JSON in a bulk request),
    or ``None``. A stored message nests at most 254 levels, what ``orjson`` writes; a profile
    that moves a nested value up keeps that depth, and the bulk form adds two levels (as here:
    ``[[body]]`` puts the body where ``{"events": [body]}`` does)."""
    try:
        orjson.dumps([[request.body]])
    except TypeError as exc:  # orjson.JSONEncodeError is one
        return f"the Heap request cannot be written as JSON ({exc}): a value nested too deep"
    return None


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


#: Profiles whose idempotency keys are heaprelay's own choice. The others reproduce a peer's
#: requests byte for byte, keys included (Segment's Actions destinations send the messageId,
#: RudderStack ``properties.idempotencyKey``): a team migrating from it keeps Heap
#: deduplicating what both Segment and heaprelay send during the switch. Keys the router
#: adds (where a profile sets none) are heaprelay's own in every profile.
OWN_KEY_PROFILES: Final = frozenset({"heap"})
#: Heap's limit on identities; keys are kept within it too.
_MAX_KEY_CHARS: Final = 255


def scoped_key(source: str, key: str) -> str:
    """``key`` scoped to one source: ``<source>:<key>``, or its SHA-256 digest when that is
    longer than 255 characters.

    Why: Heap drops a track event whose ``idempotency_key`` it has seen for the app_id,
    whichever source sent it, while messageIds (the default key) are only unique per source
    (ingest deduplicates them per source). When two sources send to one app_id — a public
    web write key and a backend, say — the web key could otherwise pre-send a messageId the
    backend will use, and Heap would drop the backend's event while the relay records it
    delivered. The router scopes the keys of destinations whose app_id another source
    shares (:meth:`heaprelay.config.Config.shared_app_destinations`)."""
    scoped = f"{source}:{key}"
    if len(scoped) > _MAX_KEY_CHARS:
        return "sha256:" + hashlib.sha256(scoped.encode("utf-8", "surrogatepass")).hexdigest()
    return scoped


def with_scoped_keys(request: HeapRequest, source: str) -> HeapRequest:
    """``request`` with each track event's ``idempotency_key`` scoped to ``source``."""
    body = dict(request.body)
    events = body.get("events")
    if isinstance(events, list):
        body["events"] = [
            {**e, "idempotency_key": scoped_key(source, str(e["idempotency_key"]))}
            if isinstance(e, dict) and e.get("idempotency_key")
            else e
            for e in events
        ]
    elif body.get("idempotency_key"):
        body["idempotency_key"] = scoped_key(source, str(body["idempotency_key"]))
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
    """The bookkeeping of one claim: answers per job, outcomes decided, keys blocked."""

    jobs: dict[int, Job]
    worker: str
    answers: dict[int, list[HeapAnswer]] = field(default_factory=dict)
    released: set[int] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    #: Jobs with a refused or failed request: their later requests are not sent.
    failed: set[int] = field(default_factory=set)
    #: Seconds until a released hot identity has budget again (0: none released for that).
    hold: float = 0.0
    #: The outcome of every job decided so far (each job gets exactly one).
    decided: dict[int, Outcome] = field(default_factory=dict)
    #: Decided outcomes not recorded in the queue yet (see Router._save).
    unsaved: list[Outcome] = field(default_factory=list)
    #: Jobs whose lease was taken over by another claim: nothing more of them is sent.
    lost: set[int] = field(default_factory=set)
    #: Per job: the index of its last request (stage), and its items of the current stage
    #: not answered yet.
    last_stage: dict[int, int] = field(default_factory=dict)
    pending_items: Counter[int] = field(default_factory=Counter)
    stage: int = 0
    #: ``clock.monotonic()`` of the last lease renewal (or of the claim).
    renewed_at: float = 0.0
    #: The pass's jobs count towards the router's held jobs (passes of ``run_once``).
    counted: bool = False
    #: Outcomes being recorded in the background (see Router._save_soon).
    saving: asyncio.Future[None] | None = None

    def key(self, job_id: int) -> str:
        job = self.jobs[job_id]
        return f"{job.destination}\x00{job.order_key}"

    def open(self, job_id: int) -> bool:
        """Whether the job may still be sent (not decided, not given back, not lost)."""
        return job_id not in self.decided and job_id not in self.lost

    def held(self) -> list[Job]:
        """The jobs this pass still holds a lease for and has no outcome recorded for."""
        return [job for i, job in self.jobs.items() if i not in self.decided and i not in self.lost]


@dataclass(slots=True)
class _Refusals:
    """What refused bulk requests of one (url, endpoint, app_id) turned out to hold: items
    isolated as refused, and items settled (accepted, or isolated as refused). Their ratio
    estimates the share of refused items in the next refused request (see
    :func:`split_parts`). Counts are halved past :data:`_REFUSALS_MEMORY` settled items, so
    the estimate follows what Heap refuses lately."""

    refused: float = 0.0
    settled: float = 0.0

    def density(self) -> float | None:
        return None if self.settled <= 0 else self.refused / self.settled

    def add(self, refused: int, settled: int) -> None:
        self.refused += refused
        self.settled += settled
        if self.settled > _REFUSALS_MEMORY:
            self.refused /= 2
            self.settled /= 2


_REFUSALS_MEMORY = 20_000.0
#: Seconds between two prunings of the rate limiter's identity buckets.
_PRUNE_SECONDS: Final = 10.0


def split_parts(items: int, density: float | None) -> int:
    """Into how many parts to split a refused bulk request of ``items`` items.

    Halves while nothing is known. Once refused requests have shown which share ``density``
    of their items Heap refuses, about four parts per refused item expected: halving a
    request with many refused items re-sends its accepted items once per level (a request of
    1,000 with 40 refused ones costs 8,000 items of rate budget in halves, about 2,500 this
    way); with few refused items this is halving again. Pure."""
    if items <= 2 or density is None:
        return min(2, items)
    return max(2, min(items, round(4 * items * density)))


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
        scoped_keys: Collection[str] = (),
        observer: DeliveryObserver | None = None,
    ) -> None:
        """``scoped_keys``: ids of the destinations whose idempotency keys are scoped to the
        job's source (those whose app_id several sources share: see :func:`scoped_key`)."""
        self.queue = queue
        self.destinations = dict(destinations)
        self.client = client
        self.clock = clock
        self.settings = settings or DeliverySettings()
        self.name = name
        self.policy = policy or RetryPolicy(self.settings.retry_base, self.settings.retry_cap)
        self.rng = rng or random.Random()
        self.lease_seconds = lease_seconds or self.settings.lease_seconds
        self.scoped_keys = frozenset(scoped_keys)
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
        self._refusals: dict[tuple[str, str, str], _Refusals] = {}
        #: Jobs claimed by this router's passes and not recorded yet (see _claim_limit).
        self._held = 0
        self._pruned_at = self.clock.monotonic()
        self._room = asyncio.Event()
        self._failures = FailureLog(log, monotonic=self.clock.monotonic)

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
            except Exception as exc:  # a bad pass must not stop delivery; leases bring jobs back
                # One line per kind of failure per interval (a full disk or a database that is
                # down fails every pass of every loop), the first with its traceback.
                kind = f"delivery pass failed:{type(exc).__name__}"
                detail = " ".join(str(exc).split()) or type(exc).__name__
                self._failures.failure(kind, detail, exc_info=exc)
                self.stats.error("delivery pass failed (see logs)")
                handled = 0
            if handled == 0:
                # New jobs wake every loop at once. Retries that come due are found by polling:
                # loop 0 often, the others less and less, so idle loops do not crowd the queue.
                idle = max(0.1, self.settings.flush_interval * 5)
                await self._idle(stopping, idle * (1 + n))

    async def _idle(self, stopping: asyncio.Event, timeout: float) -> None:
        """Wait for new work, ``timeout`` or the stop signal, whichever comes first."""
        work = asyncio.ensure_future(self.queue.wait_for_work(timeout))
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            work.cancel()
            stop.cancel()
        failed = work.exception() if work.done() and not work.cancelled() else None
        if failed is not None:
            # The queue cannot be listened to (its database is down): the exception is
            # retrieved (not left to asyncio's "never retrieved" at garbage collection),
            # logged once per interval, and the loop waits out its timeout instead.
            self._failures.failure(
                f"waiting for work failed:{type(failed).__name__}",
                " ".join(str(failed).split()) or type(failed).__name__,
            )
            await self._sleep_unless_stopping(timeout)

    def _claim_limit(self) -> int:
        """How many jobs the next claim may take.

        A claim takes ``claim_requests`` bulk requests' worth (claiming and completing cost
        the same for 1 or 4,000 jobs). With Heap's rate limits on, what all the loops of this
        router hold together is capped at that much per app_id the destinations send to:
        Heap's budget, not the backlog, bounds what is worth holding (in memory, and leased),
        and ``RateLimiter.claim_wait`` keeps the next claim from running ahead of it."""
        limit = max(1, self.settings.batch_size) * self.claim_requests
        if not self.limiter.enabled:
            return limit
        apps = {d.settings.app_id for d in self.destinations.values() if d.enabled}
        return min(limit, limit * max(1, len(apps)) - self._held)

    def _release_held(self, state: _Pass, count: int) -> None:
        if count and state.counted:
            self._held -= count
            self._room.set()

    async def _wait_for_room(self) -> bool:
        """Wait until the loops hold less than a bulk request under the cap (False when the
        router is told to stop meanwhile)."""
        need = min(max(1, self.settings.batch_size), self._claim_limit() + self._held)
        while self._claim_limit() < need:
            self._room.clear()
            waiters = {asyncio.ensure_future(self._room.wait())}
            if self._stopping is not None:
                if self._stopping.is_set():
                    return False
                waiters.add(asyncio.ensure_future(self._stopping.wait()))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        return self._stopping is None or not self._stopping.is_set()

    async def run_once(self, *, worker: str | None = None) -> int:
        """Claim, deliver and complete one batch of jobs. Returns how many were claimed."""
        worker = worker or self.name
        now = self.clock.monotonic()
        if now - self._pruned_at >= _PRUNE_SECONDS:
            # Identities come and go: forget the buckets of those with their budget whole again
            # (memory would otherwise grow with every identity ever sent).
            self._pruned_at = now
            self.limiter.prune(now)
        if not await self._wait_for_room():
            return 0
        # Claim only while the rate budget is at most two requests in debt: further ahead, the
        # claimed jobs would sit leased while they wait (see RateLimiter.claim_wait).
        wait = self.limiter.claim_wait(self.clock.monotonic())
        if wait > 0 and not await self._wait_unless_stopping(wait):
            return 0
        limit = self._claim_limit()
        if limit <= 0:
            return 0
        # Booked before claiming, so that loops claiming at the same time share the cap.
        self._held += limit
        try:
            jobs = await self.queue.claim(
                worker, limit=limit, lease_seconds=self.lease_seconds, now=self.clock.now()
            )
        finally:
            self._held -= limit
        self._held += len(jobs)
        if not jobs:
            self._room.set()
            return 0
        state = _Pass(
            {job.id: job for job in jobs},
            worker,
            renewed_at=self.clock.monotonic(),
            counted=True,
        )
        try:
            if len(jobs) < limit and self.settings.flush_interval > 0:
                await self.clock.sleep(self.settings.flush_interval)
                extra = max(0, min(limit - len(jobs), self._claim_limit()))
                self._held += extra
                try:
                    more = await self.queue.claim(
                        worker, limit=extra, lease_seconds=self.lease_seconds, now=self.clock.now()
                    )
                finally:
                    self._held -= extra
                self._held += len(more)
                jobs += more
                state.jobs.update((job.id, job) for job in more)
            outcomes = await self.deliver(jobs, state=state)
            await self._save(state)
        except asyncio.CancelledError:
            await self._give_back(state)
            raise
        except BaseException:
            saving = state.saving
            if saving is not None:  # the leases bring back what it did not record
                saving.cancel()
                if saving.done() and not saving.cancelled():
                    saving.exception()  # retrieved: the pass's own failure is what is logged
            self._release_held(state, len(state.held()) + len(state.unsaved))
            raise
        if self._last_hold and all(isinstance(o, Release) for o in outcomes):
            # Only jobs of identities out of budget: wait instead of claiming them again at once.
            await self.clock.sleep(min(self._last_hold, self.lease_seconds / 3))
        return len(jobs)

    async def _wait_unless_stopping(self, seconds: float, state: _Pass | None = None) -> bool:
        """Sleep ``seconds``; False (at once) if the router is told to stop meanwhile. With a
        ``state``, the pass's leases are renewed while it waits (see :meth:`_renew`)."""
        step = self.lease_seconds / 4
        while True:
            chunk = seconds if state is None else min(seconds, step)
            if not await self._sleep_unless_stopping(chunk):
                return False
            seconds -= chunk
            if seconds <= 1e-9:
                return True
            if state is not None:
                await self._renew(state)

    async def _sleep_unless_stopping(self, seconds: float) -> bool:
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

    async def _renew(self, state: _Pass) -> None:
        """Renew the leases of the jobs the pass still holds, once a third of the lease has
        passed since the last renewal: a pass that waits for Heap's budget, or splits refused
        requests, may outlast one lease, and must not have its jobs taken over and sent again
        meanwhile. A job that was taken over all the same (this worker was stalled longer
        than a lease) is not sent any more by this pass."""
        now = self.clock.monotonic()
        if now - state.renewed_at < self.lease_seconds / 3:
            return
        state.renewed_at = now
        held = state.held()
        if not held:
            return
        kept = await self.queue.renew(
            held, worker=state.worker, lease_seconds=self.lease_seconds, now=self.clock.now()
        )
        lost = [job.id for job in held if job.id not in kept]
        if lost:
            log.warning("%d jobs of a delivery pass were taken over by another claim", len(lost))
            state.lost.update(lost)
            self._release_held(state, len(lost))

    async def _save(self, state: _Pass) -> None:
        """Record the outcomes decided so far (only while this claim still holds the jobs: a
        lease taken over ignores them), after those being recorded in the background."""
        saving, state.saving = state.saving, None
        if saving is not None:
            await saving
        if not state.unsaved:
            return
        outcomes, state.unsaved = state.unsaved, []
        await self._complete(state, outcomes)

    async def _complete(self, state: _Pass, outcomes: list[Outcome]) -> None:
        """Give ``outcomes`` to the queue and tell the observer."""
        now = self.clock.now()
        await self.queue.complete(
            with_leases(outcomes, list(state.jobs.values())), now=now, worker=state.worker
        )
        self._release_held(state, len(outcomes))
        self.observer.finished([state.jobs[o.id] for o in outcomes], outcomes, now)

    def _save_soon(self, state: _Pass) -> None:
        """Record the outcomes decided so far in the background, in order: the next bulk
        request need not wait for the queue's commit (an SQLite checkpoint, a slow database)
        to go out on time. The pass waits for them all before it ends (:meth:`_save`)."""
        if not state.unsaved:
            return
        outcomes, state.unsaved = state.unsaved, []
        previous = state.saving

        async def save() -> None:
            if previous is not None:
                await previous
            await self._complete(state, outcomes)

        state.saving = asyncio.ensure_future(save())

    async def _give_back(self, state: _Pass) -> None:
        """The pass was cancelled: record what it decided and release the rest now (see the
        module doc) instead of leaving them leased until the lease expires."""
        saving, state.saving = state.saving, None
        if saving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(saving, 5.0)
        releases = [Release(job.id) for job in state.held()]
        outcomes = state.unsaved + releases
        state.unsaved = []
        try:
            await asyncio.wait_for(self._complete(state, outcomes), 5.0)
        except Exception:  # the lease brings them back anyway
            log.exception("could not release %d jobs of a cancelled pass", len(releases))
            self._release_held(state, len(outcomes))
        else:
            self.stats.released_jobs += len(releases)
            log.info("released %d jobs of a cancelled delivery pass", len(releases))

    # --- one claim --------------------------------------------------------------------------

    async def deliver(self, jobs: Sequence[Job], *, state: _Pass | None = None) -> list[Outcome]:
        """Deliver claimed jobs; one outcome per job. Outcomes are recorded in the queue as
        they are decided, bulk request by bulk request (the last ones by the caller, with
        :meth:`_save`)."""
        if state is None:
            state = _Pass(
                {job.id: job for job in jobs}, self.name, renewed_at=self.clock.monotonic()
            )
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
                state.last_stage[job.id] = len(prepared) - 1
            else:
                self._decide(state, job.id, prepared)
        await self._save(state)
        max_items = min(MAX_BULK_ITEMS, max(1, self.settings.batch_size))
        for k, pairs in enumerate(stages):
            state.stage = k
            groups: dict[tuple[str, str, str], list[Batch]] = {}
            for b in batch([p for p in pairs if state.open(p[0])], max_items=max_items):
                groups.setdefault((b.url, b.endpoint, b.app_id), []).append(b)
                state.pending_items.update(item.owner for item in b.items)
            await asyncio.gather(*(self._send_group(state, g) for g in groups.values()))
        self._last_hold = state.hold
        now = self.clock.now()
        for job_id, answers in state.answers.items():
            if state.open(job_id):
                self._decide(state, job_id, self._outcome(state, state.jobs[job_id], answers, now))
        return [state.decided[job.id] for job in jobs if job.id in state.decided]

    def _decide(self, state: _Pass, job_id: int, outcome: Outcome) -> None:
        if job_id in state.decided or job_id in state.lost:
            return
        state.decided[job_id] = outcome
        state.unsaved.append(outcome)
        self._count(outcome)

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
        scoped = job.destination in self.scoped_keys
        if scoped:
            key = scoped_key(job.source, key)
        own_keys = scoped and destination.settings.profile in OWN_KEY_PROFILES
        track_n = 0
        requests: list[HeapRequest] = []
        for request in result:
            if request.endpoint in _TRACK_ENDPOINTS:
                if own_keys:  # the profile's keys are heaprelay's own: scope them too
                    request = with_scoped_keys(request, job.source)
                request = with_idempotency_key(request, key if track_n == 0 else f"{key}:{track_n}")
                track_n += 1
            problem = unwritable(request)
            if problem is not None:
                return DeadLetter(job.id, Reason.INVALID_FIELD, problem)
            requests.append(request)
        self.observer.prepared(job, requests)
        return requests

    def _release(self, state: _Pass, job_id: int) -> None:
        """Give the job back untried (its later requests are not sent by this pass)."""
        state.released.add(job_id)
        state.blocked.add(state.key(job_id))
        self._decide(state, job_id, Release(job_id))

    async def _send_group(self, state: _Pass, batches: list[Batch]) -> None:
        # The bulk requests of one (url, endpoint, app_id) go one after the other, in order.
        for b in batches:
            await self._send(state, b)
            self._save_soon(state)

    def _sendable(self, state: _Pass, b: Batch) -> Batch:
        """``b`` without the items of jobs decided or lost; jobs of a blocked key are
        released (nothing of that key may go ahead of the job that blocks it)."""
        items = []
        for item in b.items:
            owner = item.owner
            if not state.open(owner):
                continue  # an earlier request of its event failed, or the job was given back
            if state.key(owner) in state.blocked:
                self._release(state, owner)
            else:
                items.append(item)
        return b if len(items) == len(b.items) else b.with_items(items)

    async def _send(self, state: _Pass, b: Batch, *, resend: bool = False) -> None:
        """Send one bulk request and decide what its answer means for its jobs.

        ``resend``: ``b`` is a part of a refused request. Parts are always sent within the
        pass, waiting for the budget as long as it takes (the lease is renewed meanwhile):
        given back, they would come back in a full request, refused and split again."""
        await self._renew(state)
        b = self._sendable(state, b)
        if not b.items:
            return
        if b.endpoint == "track" and self.limiter.enabled:
            if not resend:
                b = self._hold_hot_identities(state, b)
                if not b.items:
                    return
            if not await self._book(state, b, resend=resend):
                return
            # A lease may have been lost while waiting (a key blocked meanwhile by this
            # request's own hot identity releases does not hold back what was booked).
            kept = [item for item in b.items if state.open(item.owner)]
            if not kept:
                return
            b = b if len(kept) == len(b.items) else b.with_items(kept)
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
        refusals = self._refusals.setdefault((b.url, b.endpoint, b.app_id), _Refusals())
        if kind == "reject" and len(b.items) > 1:
            # Find the refused items: split, and send the parts in order (each part wholly
            # settled before the next, so that per identity the accepted items keep their
            # order). What is decided on the way is recorded as it comes.
            for part in b.split(split_parts(len(b.items), refusals.density())):
                await self._send(state, part, resend=True)
                self._save_soon(state)
            return
        if resend and kind != "retry":
            refusals.add(1 if kind == "reject" else 0, len(b.items))
        if kind != "ok":
            self.stats.error(f"{b.url}: {answer.describe()[:300]}")
        now = self.clock.now()
        per_owner = Counter(item.owner for item in b.items)
        for owner, count in per_owner.items():
            if not state.open(owner):
                continue
            state.answers[owner].append(answer)
            if kind == "ok":
                state.pending_items[owner] -= count
                if state.pending_items[owner] > 0 or state.stage < state.last_stage[owner]:
                    continue  # more of it to send
            else:
                state.failed.add(owner)
                if kind == "retry":
                    state.blocked.add(state.key(owner))
            outcome = self._outcome(state, state.jobs[owner], state.answers[owner], now)
            self._decide(state, owner, outcome)
        if kind == "ok":
            self.stats.delivered_items += len(b.items)

    async def _book(self, state: _Pass, b: Batch, *, resend: bool) -> bool:
        """Book Heap's rate budget for a bulk track request and wait until it may go. False:
        the request is not sent (its jobs were given back)."""
        counts = Counter(_identity_of(item.body) for item in b.items)
        # The identities' budget first, without booking the app's: app budget booked for a
        # request that then waits for one of its identities would sit unused meanwhile.
        now = self.clock.monotonic()
        wait = max(self.limiter.identity_wait(b.app_id, i, n, now) for i, n in counts.items())
        if wait > 0:
            if not resend and wait > self.lease_seconds / 3:
                self._release_all(state, b, hold=min(wait, self.lease_seconds / 3))
                return False
            if not await self._wait_unless_stopping(wait, state):
                self._release_all(state, b)
                return False
        wait = self.limiter.reserve(b.app_id, counts, self.clock.monotonic())
        if not resend and wait > self.lease_seconds / 3:
            # Other passes booked the app's budget that far ahead: give these jobs back
            # rather than hold them leased.
            self.limiter.cancel(b.app_id, counts)
            self._release_all(state, b, hold=min(wait, self.lease_seconds / 3))
            return False
        if wait > 0 and not await self._wait_unless_stopping(wait, state):
            # Stopping: give the jobs back rather than wait (or be cancelled waiting).
            self.limiter.cancel(b.app_id, counts)
            self._release_all(state, b)
            return False
        return True

    def _release_all(self, state: _Pass, b: Batch, *, hold: float = 0.0) -> None:
        for owner in b.owners():
            if state.open(owner):
                self._release(state, owner)
        if hold:
            state.hold = hold

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
                self._release(state, item.owner)
                state.hold = within
            else:
                keep.append(item)
                left -= 1
            allowance[identity] = left
        keep = [item for item in keep if state.open(item.owner)]
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
