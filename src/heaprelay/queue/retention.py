"""Retention: delivered and skipped jobs are deleted once they are older than
``Config.retention`` (dead letters stay until replayed or purged); the audiences' history
keeps each source's events for its ``Source.history_window`` (the events of a source that
keeps none any more are deleted). A server background service
(:data:`heaprelay.runtime.Service`); several processes running it against one queue is fine,
each prune deletes what is due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from heaprelay.queue.base import AudienceHistory

if TYPE_CHECKING:
    from heaprelay.runtime import Runtime

log = logging.getLogger("heaprelay.retention")

#: Seconds between two prunes.
PRUNE_INTERVAL: Final = 300.0


async def retention_service(runtime: Runtime, *, interval: float = PRUNE_INTERVAL) -> None:
    """Prune at start and then every ``interval`` seconds until the server stops."""
    assert runtime.queue is not None, "the server opens the queue before starting services"
    while not runtime.stopping.is_set():
        try:
            pruned = await runtime.queue.prune(
                delivered_before=runtime.clock.now() - runtime.config.retention
            )
            if pruned:
                log.info("retention: deleted %d finished jobs", pruned)
            if isinstance(runtime.queue, AudienceHistory):
                windows = runtime.config.history_windows()
                now = runtime.clock.now()
                old = await runtime.queue.prune_history(windows, now=now)
                if old:
                    log.info("retention: deleted %d events of the audiences' history", old)
        except Exception:  # a failed prune must not stop the server; the next one catches up
            log.exception("retention: prune failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.stopping.wait(), interval)
