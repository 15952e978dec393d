"""Whether the queue accepts appends: what ``/readyz`` and ingest's 503s say.

Ingest tells :class:`AppendHealth` of every append's outcome. After a failed append the
queue counts as unable to accept until one of these:

- an append succeeds;
- for an SQLite queue, the filesystem of its file looks writable again (not mounted
  read-only, the directory writable, at least :data:`MIN_FREE_BYTES` free): checked by
  ``/readyz`` itself, at most once every :data:`PROBE_SECONDS`, so that a load balancer that
  took the relay out of rotation on a full disk sees it come back once space is freed, without
  an append having to get through first;
- for other queues (PostgreSQL), :data:`FAILURE_WINDOW` seconds without a failed append.

Failures are classified (:func:`classify`) into ``disk_full``, ``read_only`` and
``unavailable``, each with a one-line reason, and logged through a
:class:`~heaprelay.logs.FailureLog`: one line per class per interval, not a traceback per
request.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from heaprelay.logs import FailureLog

__all__ = [
    "FAILURE_WINDOW",
    "MIN_FREE_BYTES",
    "PROBE_SECONDS",
    "AppendFailure",
    "AppendHealth",
    "classify",
    "filesystem_problem",
]

FailureKind = Literal["disk_full", "read_only", "unavailable"]

#: A queue without a filesystem probe counts as unable to accept for this long after a
#: failed append (unless an append succeeds before).
FAILURE_WINDOW: Final = 5.0
#: Seconds between two filesystem probes of ``/readyz``.
PROBE_SECONDS: Final = 1.0
#: Free space under which an SQLite queue's filesystem counts as full.
MIN_FREE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class AppendFailure:
    kind: FailureKind
    #: One line: what is wrong and what the server said (no secret: no URL).
    reason: str


def classify(exc: BaseException) -> AppendFailure:
    """What kind of failure an append's exception is, with a one-line reason."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    lowered = text.lower()
    code = exc.errno if isinstance(exc, OSError) else None
    if (
        code in (errno.ENOSPC, errno.EDQUOT)
        or (isinstance(exc, sqlite3.DatabaseError) and "disk is full" in lowered)
        or "no space left" in lowered
        or "could not extend file" in lowered  # PostgreSQL out of space
    ):
        return AppendFailure("disk_full", f"disk full: the queue cannot store anything ({text})")
    if code == errno.EROFS or "readonly" in lowered or "read-only" in lowered:
        return AppendFailure(
            "read_only", f"read-only: the queue's storage cannot be written ({text})"
        )
    return AppendFailure("unavailable", f"the queue cannot store messages ({text})")


def filesystem_problem(path: Path, min_free: int = MIN_FREE_BYTES) -> AppendFailure | None:
    """Why the filesystem holding ``path`` (a file or directory) cannot take writes, if it
    cannot: mounted read-only, the directory not writable, less than ``min_free`` bytes free."""
    directory = path if path.is_dir() else path.parent
    try:
        st = os.statvfs(directory)
    except OSError as exc:
        return AppendFailure("unavailable", f"cannot look at {directory}: {exc.strerror or exc}")
    if st.f_flag & os.ST_RDONLY:
        return AppendFailure("read_only", f"read-only: {directory} is on a read-only filesystem")
    if not os.access(directory, os.W_OK):
        return AppendFailure("read_only", f"read-only: {directory} is not writable")
    free = st.f_bavail * st.f_frsize
    if free < min_free:
        return AppendFailure("disk_full", f"disk full: {free} bytes free for {directory}")
    return None


class AppendHealth:
    """The outcome of the latest appends (module doc). ``probe`` (SQLite: the filesystem of
    the queue file, :func:`filesystem_problem`) is asked whether the cause of a failure still
    holds; ``monotonic`` is the clock."""

    def __init__(
        self,
        log: FailureLog,
        *,
        monotonic: Callable[[], float],
        probe: Callable[[], AppendFailure | None] | None = None,
        window: float = FAILURE_WINDOW,
    ) -> None:
        self.log = log
        self.probe = probe
        self.window = window
        self._monotonic = monotonic
        self._failure: AppendFailure | None = None
        self._failed_at = 0.0
        self._probed_at = 0.0

    def failed(self, exc: BaseException) -> str:
        """An append failed with ``exc``: remember it, log it (one line per class per
        interval), and return its reason (:func:`classify`)."""
        failure = classify(exc)
        self._failure = failure
        self._failed_at = self._probed_at = self._monotonic()
        self.log.failure(f"append:{failure.kind}", failure.reason)
        return failure.reason

    def succeeded(self) -> None:
        if self._failure is not None:
            self.log.recovered(f"append:{self._failure.kind}")
            self._failure = None

    def problem(self) -> AppendFailure | None:
        """Why the queue cannot accept appends now, or ``None`` (see the module doc)."""
        failure = self._failure
        if failure is None:
            return None
        now = self._monotonic()
        if self.probe is None:
            if now - self._failed_at >= self.window:
                self.succeeded()
                return None
            return failure
        if now - self._probed_at >= PROBE_SECONDS:
            self._probed_at = now
            if self.probe() is None:
                self.succeeded()
                return None
        return failure
