"""heaprelay's logging: :func:`configure` (what ``serve --log-level/--log-format`` sets up) and
:class:`FailureLog`.

:func:`configure` gives heaprelay's loggers (and uvicorn's) one handler on stderr, as text or
as one JSON object per line, at the level asked for; other libraries' loggers are held at
warning (httpx would log every request to Heap at info). Every line goes through
:class:`Redactor`, which masks the secrets it was told about (write keys, tokens, the queue
URL's password) and anything shaped like an ``Authorization`` header's credentials, wherever
they appear: a secret must never reach a log, even by way of an exception message.

:class:`FailureLog` turns a stream of failures into lines an operator can read: the first
failure of a *class* (say ``append:disk_full`` or ``heap:http_503``) is logged at once with its
detail; further failures of that class within ``interval`` seconds are only counted, and the
next line for the class (at the first failure after the interval, or at :meth:`flush`) says
how many there were and the latest detail. A failure storm (a full disk, Heap down) is then one
line per class per interval, not one traceback per request or per event.

A leaf module: it imports nothing of heaprelay, so every layer may use it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, TextIO

import orjson

__all__ = ["DEFAULT_INTERVAL", "FailureLog", "LogFormat", "Redactor", "configure"]

LogFormat = Literal["text", "json"]
MASK: Final = "***"
#: Credentials after an auth scheme (``Authorization: Basic …``, ``Bearer …``) and in URLs.
_CREDENTIALS: Final = re.compile(
    r"(?i)\b(basic|bearer|token)(\s+|=)([A-Za-z0-9+/=._~-]{4,})"
    r"|(?<=://)([^/@\s:]+):([^/@\s]+)@"
)
#: Secrets shorter than this are not masked as plain text (they would match everywhere).
MIN_SECRET: Final = 4


class Redactor(logging.Filter):
    """Masks ``secrets`` and credentials-shaped text in every record it filters (the message
    as formatted, and the exception text)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _CREDENTIALS.sub(_mask_credentials, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _mask_credentials(m: re.Match[str]) -> str:
    if m.group(1):
        return f"{m.group(1)}{m.group(2)}{MASK}"
    return f"{m.group(4)}:{MASK}@"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message`` (and ``exception``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


_TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Loggers set up by configure(): heaprelay's own, and uvicorn's (startup, errors).
OURS: Final = ("heaprelay", "uvicorn", "uvicorn.error")


def configure(
    level: str = "info",
    fmt: LogFormat = "text",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Log heaprelay's (and uvicorn's) records at ``level`` and above to ``stream`` (stderr),
    as ``fmt``, with ``secrets`` masked; quiet everyone else below warning. Replaces what an
    earlier call set up. Returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(Redactor(secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_heaprelay", False)]:
        root.removeHandler(old)
    handler._heaprelay = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    numeric = logging.getLevelName(level.upper())
    for name in OURS:
        logger = logging.getLogger(name)
        logger.setLevel(numeric)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # One warning per reconnection attempt (many a second while PostgreSQL is down): the
    # queue's users log the failures they meet once per class and interval instead.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    return handler


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

    def failure(self, kind: str, detail: str, *, exc_info: BaseException | None = None) -> None:
        """Record one failure of class ``kind`` (``detail``: one line, no secrets). With
        ``exc_info``, the first line of the class carries its traceback (an unexpected error
        is worth one), the counts after it do not."""
        now = self._monotonic()
        entry = self._classes.get(kind)
        if entry is None:
            self._classes[kind] = _Class(last_line=now)
            self.logger.log(self.level, "%s: %s", kind, detail, exc_info=exc_info)
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
