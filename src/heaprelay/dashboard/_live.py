"""The live event debugger's feed, and the overview's history.

:class:`LiveFeed` is an ingest and a delivery observer: it keeps the latest events (messages
stored, requests refused, the Heap requests each job became, each job's new state) and hands
them to every connected debugger page (server-sent events). What ingest gives it is kept as
is and turned into JSON only when someone watches or a page connects, so that ingest pays
next to nothing for it. It sees what this process does: with separate API and worker
processes, the debugger of each shows its own side (search reads the shared queue).

:class:`History` keeps queue stats sampled every few seconds for the overview's charts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from heaprelay.clock import Clock, SystemClock
from heaprelay.config import Source
from heaprelay.heap.client import HeapAnswer
from heaprelay.heap.models import HeapRequest
from heaprelay.messages.incoming import Prepared
from heaprelay.queue.base import (
    DeadLetter,
    Delivered,
    Job,
    Outcome,
    QueueStats,
    Release,
    RetryAt,
    Skipped,
)
from heaprelay.router.batcher import Batch

__all__ = ["History", "LiveFeed", "message_summary", "outcome_event"]

#: Events kept for a page that connects (the latest).
KEPT: Final = 300
#: Messages of one request put in the feed at most (a 500-event batch shows its first ones).
PER_REQUEST: Final = 50
#: Events a slow page may fall behind by before it misses some.
BACKLOG: Final = 2000


def message_summary(payload: bytes) -> dict[str, Any]:
    """What the debugger shows of a stored message."""
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {"payload": payload.decode("utf-8", "replace")}
    if not isinstance(message, dict):
        return {"payload": message}
    return {
        "type": message.get("type"),
        "event": message.get("event"),
        "userId": message.get("userId"),
        "anonymousId": message.get("anonymousId"),
        "messageId": message.get("messageId"),
        "payload": message,
    }


def outcome_event(job: Job, outcome: Outcome, at: float) -> dict[str, Any]:
    """A job's new state as a debugger event."""
    event: dict[str, Any] = {
        "kind": "state",
        "at": at,
        "job": job.id,
        "source": job.source,
        "destination": job.destination,
        "messageId": job.message_id,
        "reason": "",
        "detail": "",
        "answer": "",
    }
    if isinstance(outcome, Delivered):
        event |= {"state": "delivered", "answer": outcome.answer}
    elif isinstance(outcome, RetryAt):
        event |= {"state": "retry", "reason": outcome.reason, "answer": outcome.answer}
        event["retry_at"] = outcome.at
    elif isinstance(outcome, DeadLetter):
        event |= {"state": "dead", "reason": outcome.reason.value, "detail": outcome.detail}
        event["answer"] = outcome.answer
    elif isinstance(outcome, Skipped):
        event |= {"state": "skipped", "reason": outcome.reason.value, "detail": outcome.detail}
    elif isinstance(outcome, Release):
        event |= {"state": "pending", "detail": "given back untried (order kept)"}
    return event


@dataclass(slots=True)
class _Stored:
    """A request's stored messages, as ingest gave them (rendered on demand). Its events are
    numbered ``seq``, ``seq + 1``, …"""

    seq: int
    at: float
    source: str
    destinations: tuple[str, ...]
    route: str
    messages: Sequence[Prepared]

    def events(self) -> list[dict[str, Any]]:
        return [
            {
                "seq": self.seq + n,
                "kind": "received",
                "at": self.at,
                "source": self.source,
                "route": self.route,
                "destinations": list(self.destinations),
                **message_summary(m.payload),
                "messageId": m.message_id,
            }
            for n, m in enumerate(self.messages)
        ]


class LiveFeed:
    """Recent debugger events, and the pages listening for new ones (module doc)."""

    def __init__(self, clock: Clock | None = None, kept: int = KEPT) -> None:
        self.clock = clock or SystemClock()
        self._kept: deque[_Stored | dict[str, Any]] = deque(maxlen=kept)
        #: source name -> its enabled destinations (looked up once a source)
        self._destinations: dict[str, tuple[str, ...]] = {}
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        #: The next event's number (a page that reconnects says the last it saw).
        self._seq = 1

    def _number(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for event in events:
            event["seq"] = self._seq
            self._seq += 1
        return events

    # --- what the pages see -----------------------------------------------------------------

    def recent(self, after: int = 0) -> list[dict[str, Any]]:
        """The kept events numbered above ``after``, oldest first."""
        out: list[dict[str, Any]] = []
        for item in self._kept:
            out.extend(item.events() if isinstance(item, _Stored) else [item])
        return [e for e in out if e["seq"] > after]

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """New events, as they come, while the block runs."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=BACKLOG)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    def _publish(self, events: list[dict[str, Any]]) -> None:
        for queue in list(self._listeners):
            for event in events:
                with contextlib.suppress(asyncio.QueueFull):  # a page far behind misses some
                    queue.put_nowait(event)

    # --- ingest -----------------------------------------------------------------------------

    def stored(self, source: Source, route: str, messages: Sequence[Prepared], now: float) -> None:
        destinations = self._destinations.get(source.name)
        if destinations is None:
            destinations = tuple(d.id for d in source.destinations if d.enabled)
            self._destinations[source.name] = destinations
        shown = messages if len(messages) <= PER_REQUEST else messages[:PER_REQUEST]
        item = _Stored(self._seq, now, source.name, destinations, route, shown)
        self._seq += len(shown)
        self._kept.append(item)
        if self._listeners:
            self._publish(item.events())

    def answered(self, route: str, status: int, seconds: float, body: bytes) -> None:
        if status < 400 or status == 503:
            return
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        event = {
            "kind": "refused",
            "at": self.clock.now(),
            "route": route,
            "status": status,
            "code": answer.get("code", ""),
            "message": answer.get("message", ""),
            "index": answer.get("index"),
        }
        self._kept.append(self._number([event])[0])
        self._publish([event])

    # --- delivery ---------------------------------------------------------------------------

    def prepared(self, job: Job, requests: Sequence[HeapRequest]) -> None:
        event = {
            "kind": "requests",
            "at": self.clock.now(),
            "job": job.id,
            "source": job.source,
            "destination": job.destination,
            "messageId": job.message_id,
            "requests": [r.to_json_obj() for r in requests],
        }
        self._kept.append(self._number([event])[0])
        self._publish([event])

    def sent(self, batch: Batch, answer: HeapAnswer, seconds: float) -> None:
        return None

    def paused(self, app_id: str, seconds: float) -> None:
        return None

    def finished(self, jobs: Sequence[Job], outcomes: Sequence[Outcome], now: float) -> None:
        by_id = {job.id: job for job in jobs}
        events = self._number(
            [outcome_event(by_id[o.id], o, now) for o in outcomes if o.id in by_id]
        )
        self._kept.extend(events)
        self._publish(events)


@dataclass(slots=True)
class History:
    """Queue stats sampled over time (the overview's charts): ``(time, stats)``, oldest first,
    at most ``points`` of them."""

    points: int = 720
    samples: deque[tuple[float, QueueStats]] = field(default_factory=deque)

    def add(self, at: float, stats: QueueStats) -> None:
        self.samples.append((at, stats))
        while len(self.samples) > self.points:
            self.samples.popleft()

    def latest(self) -> QueueStats | None:
        return self.samples[-1][1] if self.samples else None

    def series(self, destination: str) -> dict[str, list[float | None]]:
        """Per interval between two samples: events per second received, delivered, skipped
        and dead (from the totals), and the jobs unfinished at its end."""
        out: dict[str, list[float | None]] = {
            k: [] for k in ("t", "received", "delivered", "skipped", "dead", "unfinished")
        }
        previous: tuple[float, QueueStats] | None = None
        for at, stats in self.samples:
            if previous is not None and at > previous[0]:
                span = at - previous[0]
                before = previous[1].totals.get(destination, {})
                now = stats.totals.get(destination, {})
                out["t"].append(at)
                for k in ("received", "delivered", "skipped", "dead"):
                    out[k].append(max(0, now.get(k, 0) - before.get(k, 0)) / span)
                per = stats.by_destination.get(destination, {})
                out["unfinished"].append(
                    float(sum(per.get(s, 0) for s in ("pending", "leased", "retry")))
                )
            previous = (at, stats)
        return out
