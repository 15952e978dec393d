"""FailureLog: one line per failure class per interval, with the count of the others."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from heaprelay.logs import OURS, FailureLog, Redactor, configure


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


# --- configure(): handlers, formats, redaction ------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    loggers = {n: (logging.getLogger(n).level, logging.getLogger(n).handlers[:]) for n in OURS}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, (level, handlers) in loggers.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers


def test_configure_prints_heaprelays_loggers_at_the_level(restore_logging: None) -> None:
    out = io.StringIO()
    configure("info", "text", stream=out)
    logging.getLogger("heaprelay.router").info("delivered %d", 3)
    logging.getLogger("heaprelay.router").debug("not at info")
    logging.getLogger("httpx").info("HTTP Request: POST https://heapanalytics.com/api/track")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("INFO    heaprelay.router: delivered 3")
    configure("debug", "text", stream=out)
    logging.getLogger("heaprelay.router").debug("now at debug")
    assert "now at debug" in out.getvalue()


def test_json_format_is_one_object_a_line(restore_logging: None) -> None:
    out = io.StringIO()
    configure("info", "json", stream=out)
    log = logging.getLogger("heaprelay.delivery")
    log.warning("heap track 503: %s", "busy")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("a pass failed")
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert (first["level"], first["logger"], first["message"]) == (
        "warning",
        "heaprelay.delivery",
        "heap track 503: busy",
    )
    assert first["time"].endswith("+00:00")
    assert "RuntimeError: boom" in second["exception"]


def test_secrets_and_credentials_never_reach_the_log(restore_logging: None) -> None:
    out = io.StringIO()
    configure("info", "text", secrets=["wk-0123456789", "tok-abcdefghij"], stream=out)
    log = logging.getLogger("heaprelay.server")
    log.info("source web with write key %s", "wk-0123456789")
    log.info("headers: Authorization: Basic d2stMDEyMzQ1Njc4OTo= and Bearer tok-abcdefghij")
    log.info("queue postgresql://relay:hunter2pw@db:5432/heaprelay")
    try:
        raise ValueError("bad token tok-abcdefghij")
    except ValueError:
        log.exception("failed")
    text = out.getvalue()
    for secret in ("wk-0123456789", "tok-abcdefghij", "d2stMDEyMzQ1Njc4OTo", "hunter2pw"):
        assert secret not in text
    assert "Basic ***" in text
    assert "postgresql://relay:***@db:5432/heaprelay" in text
    assert Redactor(["abc"]).redact("abc") == "abc"  # too short to mask as plain text


def test_the_first_line_of_a_class_carries_the_traceback_the_counts_do_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failures = FailureLog(logging.getLogger("t"), interval=60, monotonic=lambda: now[0])
    error = RuntimeError("database or disk is full")
    for _ in range(20):
        failures.failure("pass", str(error), exc_info=error)
    now[0] = 61.0
    failures.failure("pass", str(error), exc_info=error)
    assert [r.exc_info is not None for r in caplog.records] == [True, False]
    assert "20 more" in caplog.records[1].getMessage()
