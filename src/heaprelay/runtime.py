"""What one server process shares between its API and its background services.

A leaf module: the services (:mod:`heaprelay.router.service`, :mod:`heaprelay.queue.retention`)
take a :class:`Runtime`, and :mod:`heaprelay.server` builds it, so neither imports the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heaprelay.clock import Clock
from heaprelay.config import Config
from heaprelay.queue.base import Queue
from heaprelay.router.observer import DeliveryObserver, Observers

if TYPE_CHECKING:
    from heaprelay.router.worker import Router

__all__ = ["Runtime", "Service"]


@dataclass(slots=True)
class Runtime:
    """What is shared by the API and the background services of one server process.
    Available to routes as ``request.app.state.runtime``."""

    config: Config
    clock: Clock
    queue: Queue | None = None
    #: Set when the server starts shutting down: services finish what they hold and return.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    ready: bool = False
    #: Set as soon as the server is told to stop (before in-flight requests finish): long
    #: requests (the debugger's event stream) end then.
    closing: bool = False
    #: Given to the delivery routers (metrics, logs, the dashboard's debugger).
    observer: DeliveryObserver = field(default_factory=Observers)
    #: The delivery routers this process runs (the dashboard reads their rate budget).
    routers: list[Router] = field(default_factory=list)


Service = Callable[[Runtime], Coroutine[Any, Any, None]]
