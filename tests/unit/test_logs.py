"""FailureLog: one line per failure class per interval, with the count of the others."""

from __future__ import annotations

import logging

import pytest

from heaprelay.logs import FailureLog


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_storm_is_one_line_per_class_per_interval(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = FailureLog(logging.getLogger("t.storm"), interval=10.0, monotonic=clock)
    with caplog.at_level(logging.WARNING, "t.storm"):
        for n in range(1000):
            clock.t = n * 0.01  # 10 s of failures, 100 a second
            log.failure("append:disk_full", f"no space left ({n})")
            log.failure("append:read_only", "read-only file system")
        assert lines(caplog) == [
            "append:disk_full: no space left (0)",
            "append:read_only: read-only file system",
        ]
        clock.t = 10.0
        log.failure("append:disk_full", "no space left (1000)")
        assert lines(caplog)[2:] == [
            "append:disk_full: 1000 more in the last 10s (latest: no space left (1000))"
        ]


def test_flush_and_recovered_say_the_count_held_back(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    log = FailureLog(logging.getLogger("t.flush"), interval=5.0, monotonic=clock)
    with caplog.at_level(logging.WARNING, "t.flush"):
        log.failure("heap:http_503", "503 Service Unavailable")
        log.failure("heap:http_503", "503 again")
        log.flush()  # within the interval: nothing yet
        assert len(caplog.records) == 1
        clock.t = 6.0
        log.flush()
        assert lines(caplog)[1] == "heap:http_503: 1 more in the last 6s (latest: 503 again)"
        log.failure("heap:http_503", "503 once more")
        log.recovered("heap:http_503")
        assert lines(caplog)[2] == "heap:http_503: 1 more in the last 0s (latest: 503 once more)"
        log.failure("heap:http_503", "back again")  # forgotten: logged at once
        assert lines(caplog)[3] == "heap:http_503: back again"
        log.recovered("never-failed")  # nothing to say
        assert len(caplog.records) == 4
