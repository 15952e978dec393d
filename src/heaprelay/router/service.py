"""Delivery as a server background service (see :mod:`heaprelay.server`)."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from heaprelay.heap.client import HeapClient
from heaprelay.router.worker import Router

if TYPE_CHECKING:
    from heaprelay.server import Runtime

__all__ = ["delivery_service"]


async def delivery_service(runtime: Runtime) -> None:
    """Run the router workers on the server's queue until the server stops."""
    assert runtime.queue is not None, "the server opens the queue before starting services"
    settings = runtime.config.delivery
    async with HeapClient(
        timeout=settings.request_timeout, max_connections=max(4, settings.concurrency * 2)
    ) as client:
        router = Router(
            runtime.queue,
            runtime.config.destinations(),
            client,
            runtime.clock,
            settings,
            # Unique across processes and machines sharing a PostgreSQL queue.
            name=f"{socket.gethostname()}:{os.getpid()}",
            lease_seconds=settings.lease_seconds,
        )
        await router.run(runtime.stopping)
