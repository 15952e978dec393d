"""Delivery as a server background service (see :mod:`heaprelay.server`).

Sharing Heap's rate budget: Heap counts events per app_id (and per identity), whichever
process sends them. When the queue is shared by several worker processes (PostgreSQL, see
:class:`heaprelay.queue.base.WorkerRegistry`), each one heartbeats every
:data:`HEARTBEAT_SECONDS` and uses ``1 / live workers`` of the budget
(:meth:`heaprelay.router.ratelimit.RateLimiter.set_share`); a worker that stops cleanly leaves
the registry, one that dies drops out after :data:`HEARTBEAT_TTL` seconds.

The trade-off is to under-use the budget for a few seconds while workers join or leave rather
than over-use it (which Heap answers with 429s):

- a joining worker heartbeats, then waits one heartbeat interval before it claims anything,
  so that every running worker has seen it and cut its own share first;
- a worker that sees more workers cuts its share at once; one that sees fewer (a worker left
  or died) raises its share only at its next heartbeat, or after the dead one's TTL.

Bookings a worker made before cutting its share still go out at the old pace (at most a few
bulk requests ahead, see ``RateLimiter.claim_wait``; never more than a third of the lease):
well within the minute's budget Heap's own bucket holds while we keep ours to one request.
If the registry cannot be reached the last share is kept: the same database holds the queue,
so nothing new can be claimed meanwhile anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Final

from heaprelay.heap.client import HeapClient
from heaprelay.queue.base import WorkerRegistry
from heaprelay.router.worker import Router

if TYPE_CHECKING:
    from heaprelay.runtime import Runtime

__all__ = ["HEARTBEAT_SECONDS", "HEARTBEAT_TTL", "delivery_service"]

log = logging.getLogger("heaprelay.router")

#: Seconds between two heartbeats of a worker process.
HEARTBEAT_SECONDS: Final = 3.0
#: A worker not heard from for this many heartbeats is taken for dead.
HEARTBEAT_TTL_BEATS: Final = 3
HEARTBEAT_TTL: Final = HEARTBEAT_SECONDS * HEARTBEAT_TTL_BEATS


async def delivery_service(
    runtime: Runtime,
    *,
    name: str | None = None,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> None:
    """Run the router workers on the server's queue until the server stops.

    ``name`` identifies this worker process in the queue (default ``host:pid``, unique across
    processes and machines sharing a PostgreSQL queue); ``heartbeat`` is the interval of its
    heartbeats when the queue is a :class:`WorkerRegistry` (tests shorten it)."""
    assert runtime.queue is not None, "the server opens the queue before starting services"
    settings = runtime.config.delivery
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    async with HeapClient(
        timeout=settings.request_timeout, max_connections=max(4, settings.concurrency * 2)
    ) as client:
        router = Router(
            runtime.queue,
            runtime.config.destinations(),
            client,
            runtime.clock,
            settings,
            name=name,
            lease_seconds=settings.lease_seconds,
            observer=runtime.observer,
            scoped_keys=runtime.config.shared_app_destinations(),
        )
        runtime.routers.append(router)
        registry = runtime.queue
        if not isinstance(registry, WorkerRegistry) or not settings.rate_limits:
            await router.run(runtime.stopping)
            return
        ttl = heartbeat * HEARTBEAT_TTL_BEATS
        try:
            # Join: be seen by the others for one interval before sending anything.
            await _beat(registry, router, runtime, name, ttl)
            if await _stopped(runtime, heartbeat):
                return
            await _beat(registry, router, runtime, name, ttl)
            beats = asyncio.create_task(_heartbeats(registry, router, runtime, name, heartbeat))
            try:
                await router.run(runtime.stopping)
            finally:
                beats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beats
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(registry.leave(name), timeout=heartbeat)


async def _beat(
    registry: WorkerRegistry, router: Router, runtime: Runtime, name: str, ttl: float
) -> None:
    try:
        live = await registry.heartbeat(name, now=runtime.clock.now(), ttl=ttl)
    except Exception:  # keep the last share (see the module doc)
        log.exception("worker heartbeat failed")
        return
    share = 1.0 / max(1, live)
    if share != router.limiter.share:
        log.info("%d live worker(s): this one uses %.3g of Heap's rate budget", live, share)
        router.limiter.set_share(share, runtime.clock.monotonic())


async def _heartbeats(
    registry: WorkerRegistry, router: Router, runtime: Runtime, name: str, interval: float
) -> None:
    ttl = interval * HEARTBEAT_TTL_BEATS
    while not await _stopped(runtime, interval):
        await _beat(registry, router, runtime, name, ttl)


async def _stopped(runtime: Runtime, seconds: float) -> bool:
    """Wait ``seconds`` or until the server stops; say whether it stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.stopping.wait(), seconds)
    return runtime.stopping.is_set()
