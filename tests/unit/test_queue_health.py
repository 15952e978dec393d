"""What /readyz and ingest's 503 say after a failed append (heaprelay.queue.health)."""

from __future__ import annotations

import errno
import logging
import sqlite3
from pathlib import Path

import pytest

from heaprelay.logs import FailureLog
from heaprelay.queue.health import (
    FAILURE_WINDOW,
    PROBE_SECONDS,
    AppendFailure,
    AppendHealth,
    classify,
    filesystem_problem,
)


@pytest.mark.parametrize(
    ("exc", "kind", "says"),
    [
        (sqlite3.OperationalError("database or disk is full"), "disk_full", "disk full"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk_full", "disk full"),
        (
            sqlite3.OperationalError("attempt to write a readonly database"),
            "read_only",
            "read-only",
        ),
        (OSError(errno.EROFS, "Read-only file system"), "read_only", "read-only"),
        (Exception('could not extend file "base/1/2": No space left'), "disk_full", "disk full"),
        (TimeoutError("couldn't get a connection after 5.00 sec"), "unavailable", "cannot store"),
    ],
)
def test_failures_are_classified_with_a_one_line_reason(
    exc: BaseException, kind: str, says: str
) -> None:
    failure = classify(exc)
    assert failure.kind == kind
    assert says in failure.reason
    assert "\n" not in failure.reason


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_a_probe_the_failure_holds_for_the_window_or_until_an_append_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    health = AppendHealth(FailureLog(logging.getLogger("t"), monotonic=clock), monotonic=clock)
    assert health.problem() is None
    for _ in range(50):
        health.failed(sqlite3.OperationalError("database or disk is full"))
    assert health.problem() == classify(sqlite3.OperationalError("database or disk is full"))
    assert len(caplog.records) == 1  # one line for the class, not one per failure
    health.succeeded()
    assert health.problem() is None
    health.failed(OSError(errno.EROFS, "Read-only file system"))
    clock.now += FAILURE_WINDOW
    assert health.problem() is None


def test_a_probe_says_when_the_cause_is_gone() -> None:
    clock = Clock()
    cause: list[AppendFailure | None] = [AppendFailure("disk_full", "disk full: 0 bytes free")]
    health = AppendHealth(
        FailureLog(logging.getLogger("t"), monotonic=clock), monotonic=clock, probe=lambda: cause[0]
    )
    health.failed(sqlite3.OperationalError("database or disk is full"))
    clock.now += FAILURE_WINDOW * 10
    assert health.problem() is not None  # the probe still sees a full disk
    cause[0] = None
    assert health.problem() is not None  # probed at most every PROBE_SECONDS
    clock.now += PROBE_SECONDS
    assert health.problem() is None


def test_a_writable_directory_has_no_filesystem_problem(tmp_path: Path) -> None:
    assert filesystem_problem(tmp_path / "heaprelay.db") is None
    assert filesystem_problem(tmp_path, min_free=2**62) is not None
