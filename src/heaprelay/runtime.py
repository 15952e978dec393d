"""What one server process shares between its API and its background services.

A leaf module: the services (:mod:`heaprelay.router.service`, :mod:`heaprelay.queue.retention`)
take a :class:`Runtime`, and :mod:`heaprelay.server` builds it, so neither imports the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from heaprelay.clock import Clock
from heaprelay.config import Config
from heaprelay.queue.base import Queue

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


Service = Callable[[Runtime], Coroutine[Any, Any, None]]
