"""Time, injected. Nothing in heaprelay reads the system clock except through a ``Clock``."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (timestamps, retry times, leases)."""
        ...

    def monotonic(self) -> float:
        """A monotonic reading in seconds (rate limiting, timeouts)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class ScaledClock:
    """System time running ``factor`` times faster, from the moment it is made: ``now()`` and
    ``monotonic()`` advance ``factor`` seconds per real second, ``sleep(s)`` takes ``s /
    factor`` real seconds. For tests and demos of things that take hours (a 30-minute Heap
    outage, a 4-hour retry window) in seconds; Heap's rate limits have ``time_scale``."""

    def __init__(self, factor: float) -> None:
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
        self.factor = factor
        self._wall = time.time()
        self._start = time.monotonic()

    def _elapsed(self) -> float:
        return (time.monotonic() - self._start) * self.factor

    def now(self) -> float:
        return self._wall + self._elapsed()

    def monotonic(self) -> float:
        return self._elapsed()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)
