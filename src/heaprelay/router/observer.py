"""What the router tells whoever watches delivery (metrics, logs, the dashboard's debugger).

The router calls a :class:`DeliveryObserver` at four points and does nothing else for them:
each job's Heap requests as the transform made them, each bulk request's answer, each pause
on a 429, and each claim's outcomes. Observers must be quick and must not raise (the router
does not wait for them nor guard them); :class:`Observers` calls several in turn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from heaprelay.heap.client import HeapAnswer
from heaprelay.heap.models import HeapRequest
from heaprelay.logs import FailureLog
from heaprelay.queue.base import DeadLetter, Job, Outcome
from heaprelay.router.batcher import Batch
from heaprelay.router.retry import classify

__all__ = ["DeliveryLog", "DeliveryObserver", "Observers"]


class DeliveryObserver(Protocol):
    def prepared(self, job: Job, requests: Sequence[HeapRequest]) -> None:
        """``job`` becomes ``requests`` (as sent: with their idempotency keys)."""

    def sent(self, batch: Batch, answer: HeapAnswer, seconds: float) -> None:
        """One bulk request went out and got ``answer`` after ``seconds``."""

    def paused(self, app_id: str, seconds: float) -> None:
        """Heap answered 429: nothing more is sent for ``app_id`` for ``seconds``."""

    def finished(self, jobs: Sequence[Job], outcomes: Sequence[Outcome], now: float) -> None:
        """Outcomes (one per job, in the jobs' order) were given to the queue: a claim's, bulk
        request by bulk request as they are decided, in several calls."""


class Observers:
    """Several observers as one (each called in turn)."""

    def __init__(self, *observers: DeliveryObserver) -> None:
        self.observers = observers

    def prepared(self, job: Job, requests: Sequence[HeapRequest]) -> None:
        for o in self.observers:
            o.prepared(job, requests)

    def sent(self, batch: Batch, answer: HeapAnswer, seconds: float) -> None:
        for o in self.observers:
            o.sent(batch, answer, seconds)

    def paused(self, app_id: str, seconds: float) -> None:
        for o in self.observers:
            o.paused(app_id, seconds)

    def finished(self, jobs: Sequence[Job], outcomes: Sequence[Outcome], now: float) -> None:
        for o in self.observers:
            o.finished(jobs, outcomes, now)


class DeliveryLog:
    """Delivery as log lines an operator can read (logger ``heaprelay.delivery``): each class
    of Heap failure (``heap <endpoint> <status>`` per app_id), each 429 pause and each kind of
    dead letter (destination and reason) is a line when it starts and then at most one line
    per ``interval`` with the count since (:class:`~heaprelay.logs.FailureLog`); a class that
    works again says how many it held back. Never a line per event."""

    def __init__(self, failures: FailureLog | None = None) -> None:
        self.failures = failures or FailureLog(logging.getLogger("heaprelay.delivery"))
        #: (app_id, endpoint) -> failure classes seen since it last worked
        self._failing: dict[tuple[str, str], set[str]] = {}

    def prepared(self, job: Job, requests: Sequence[HeapRequest]) -> None:
        return None

    def sent(self, batch: Batch, answer: HeapAnswer, seconds: float) -> None:
        where = (batch.app_id, batch.endpoint)
        outcome = classify(answer)
        if outcome == "ok":
            # Heap works again for this app_id and endpoint: say how many were held back.
            for kind in self._failing.pop(where, ()):
                self.failures.recovered(kind)
            return
        status = "network error" if answer.status == 0 else str(answer.status)
        kind = f"heap {batch.endpoint} {status} (app_id {batch.app_id})"
        if outcome == "retry":
            # An outage (5xx, network, 429): it ends with the next success. A refusal (4xx)
            # is about items, not an outage: the halves of a split request that Heap accepts
            # do not end it, so that a split is not a line per step.
            self._failing.setdefault(where, set()).add(kind)
        items = len(batch.items)
        self.failures.failure(kind, f"{items} item(s); {answer.describe()[:300]}")

    def paused(self, app_id: str, seconds: float) -> None:
        self.failures.failure(
            f"paused on 429 (app_id {app_id})", f"nothing sent to this app_id for {seconds:g}s"
        )

    def finished(self, jobs: Sequence[Job], outcomes: Sequence[Outcome], now: float) -> None:
        destinations = {job.id: job.destination for job in jobs}
        for outcome in outcomes:
            if isinstance(outcome, DeadLetter):
                destination = destinations.get(outcome.id, "?")
                answer = f"; answer: {outcome.answer[:200]}" if outcome.answer else ""
                self.failures.failure(
                    f"dead letter ({destination}: {outcome.reason})",
                    f"job {outcome.id}: {outcome.detail[:200]}{answer}",
                )

    def flush(self) -> None:
        """Log the counts held back whose interval has passed (call it now and then)."""
        self.failures.flush()
