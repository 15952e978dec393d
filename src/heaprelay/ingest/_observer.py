"""What ingest tells whoever watches it (metrics, the dashboard's debugger)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from heaprelay.config import Source
from heaprelay.messages.incoming import Prepared


class IngestObserver(Protocol):
    """Called by the routes; must be quick and must not raise."""

    def stored(self, source: Source, route: str, messages: Sequence[Prepared], now: float) -> None:
        """``messages`` of a request to ``route`` were committed to the queue for ``source``'s
        destinations (each ``Prepared`` holds the message as stored)."""

    def answered(self, route: str, status: int, seconds: float, body: bytes) -> None:
        """A request to ``route`` was answered ``status`` (``body``: the JSON answer, with the
        ``code`` and ``message`` of a refusal) after ``seconds``."""
