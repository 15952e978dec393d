"""The dashboard at ``/ui``: an overview per destination, the live event debugger and search,
the dead-letter queue with replay and purge. Server-rendered (Jinja2); its script and the
chart library (uPlot) are served by the relay itself (no CDN).

Access (:mod:`heaprelay.dashboard._auth`): the admin token, by login form (a signed session
cookie) or ``Authorization: Bearer``; without a token, only while listening on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

from starlette.routing import Mount

from heaprelay.dashboard._app import Dashboard, dashboard_app, heap_requests
from heaprelay.dashboard._auth import Access, is_loopback
from heaprelay.dashboard._live import History, LiveFeed
from heaprelay.runtime import Runtime

__all__ = [
    "Access",
    "Dashboard",
    "History",
    "LiveFeed",
    "Monitor",
    "dashboard_mount",
    "heap_requests",
    "is_loopback",
]

#: Seconds between two samples of the queue's counts (the overview's charts).
SAMPLE_SECONDS: Final = 5.0


def dashboard_mount(board: Dashboard) -> Mount:
    """The dashboard, to mount on the server (at ``/ui``)."""
    return Mount("/ui", app=dashboard_app(board))


class Monitor:
    """A server service: every ``interval`` seconds, read the queue's counts (for the charts
    and, on PostgreSQL, to keep its counters compacted) and run ``tick`` (the delivery log's
    held-back counts)."""

    def __init__(
        self,
        history: History,
        *,
        interval: float = SAMPLE_SECONDS,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.history = history
        self.interval = interval
        self.tick = tick

    async def __call__(self, runtime: Runtime) -> None:
        assert runtime.queue is not None, "the server opens the queue before starting services"
        while not runtime.stopping.is_set():
            with contextlib.suppress(Exception):  # a failed read: the next sample catches up
                self.history.add(runtime.clock.now(), await runtime.queue.stats())
            if self.tick is not None:
                self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.stopping.wait(), self.interval)
