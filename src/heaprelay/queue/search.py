"""The debugger's search index, kept up to date in the background (a server service,
:data:`heaprelay.runtime.Service`): :meth:`Queue.index` indexes the jobs appended since, so
that appends never pay for it. Several processes running it against one queue is fine (one
indexes at a time).

While ingest outpaces it (a burst), it takes at most :data:`SHARE` of the time, so that the
writer it shares with appends (SQLite) stays theirs: the index then lags, and catches up when
the burst is over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Final

from heaprelay.logs import FailureLog

if TYPE_CHECKING:
    from heaprelay.runtime import Runtime

log = logging.getLogger("heaprelay.search")

#: Jobs indexed a pass at most.
BATCH: Final = 2000
#: Seconds between two looks when there was nothing (or little) to index.
IDLE: Final = 0.5
#: Share of the time the indexer may be busy while it is behind.
SHARE: Final = 0.25


async def search_index_service(runtime: Runtime, *, idle: float = IDLE) -> None:
    """Index new jobs until the server stops."""
    assert runtime.queue is not None, "the server opens the queue before starting services"
    # A full disk or a database that is down fails every pass: one line per interval.
    failures = FailureLog(log, level=logging.ERROR, monotonic=runtime.clock.monotonic)
    while not runtime.stopping.is_set():
        started = time.perf_counter()
        try:
            done = await runtime.queue.index(limit=BATCH)
        except Exception as exc:  # the next pass tries again
            detail = " ".join(str(exc).split()) or type(exc).__name__
            failures.failure(
                f"search index: a pass failed:{type(exc).__name__}", detail, exc_info=exc
            )
            done = 0
        busy = time.perf_counter() - started
        pause = idle if done < BATCH else busy * (1 - SHARE) / SHARE
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stopping.wait(), pause)
