"""heaprelay's logging helpers.

:class:`FailureLog` turns a stream of failures into lines an operator can read: the first
failure of a *class* (say ``append:disk_full`` or ``heap:http_503``) is logged at once with its
detail; further failures of that class within ``interval`` seconds are only counted, and the
next line for the class (at the first failure after the interval, or at :meth:`flush`) says
how many there were and the latest detail. A failure storm (a full disk, Heap down) is then one
line per class per interval, not one traceback per request or per event.

A leaf module: it imports nothing of heaprelay, so every layer may use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_INTERVAL", "FailureLog"]

#: Seconds between two lines of the same failure class.
DEFAULT_INTERVAL: Final = 60.0


@dataclass(slots=True)
class _Class:
    last_line: float
    #: Failures since the last line.
    count: int = 0
    detail: str = ""


class FailureLog:
    """At most one log line per failure class per ``interval`` (module doc).

    ``monotonic`` is the clock (injectable for tests). Not thread-safe: use one per thread or
    event loop."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        level: int = logging.WARNING,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self._monotonic = monotonic
        self._classes: dict[str, _Class] = {}

    def failure(self, kind: str, detail: str) -> None:
        """Record one failure of class ``kind`` (``detail``: one line, no secrets)."""
        now = self._monotonic()
        entry = self._classes.get(kind)
        if entry is None:
            self._classes[kind] = _Class(last_line=now)
            self.logger.log(self.level, "%s: %s", kind, detail)
            return
        entry.count += 1
        entry.detail = detail
        if now - entry.last_line >= self.interval:
            self._emit(kind, entry, now)

    def recovered(self, kind: str) -> None:
        """``kind`` works again: say how many failures were not logged yet, and forget it (its
        next failure is logged at once)."""
        entry = self._classes.pop(kind, None)
        if entry is not None and entry.count:
            self._emit(kind, entry, self._monotonic())

    def flush(self) -> None:
        """Log the classes with failures not logged yet whose interval has passed (call it
        now and then, so that the last count of a storm is not held back for ever)."""
        now = self._monotonic()
        for kind, entry in self._classes.items():
            if entry.count and now - entry.last_line >= self.interval:
                self._emit(kind, entry, now)

    def _emit(self, kind: str, entry: _Class, now: float) -> None:
        seconds = now - entry.last_line
        self.logger.log(
            self.level,
            "%s: %d more in the last %.0fs (latest: %s)",
            kind,
            entry.count,
            seconds,
            entry.detail,
        )
        entry.count = 0
        entry.last_line = now
