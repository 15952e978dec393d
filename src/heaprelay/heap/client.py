"""The Heap HTTP client: one pooled ``httpx.AsyncClient`` with an injectable transport.

Every call returns a :class:`HeapAnswer`. A non-2xx status is data (the retry policy decides
what it means), and so is a network failure: httpx's exceptions are caught here, at the
boundary, and become an answer with ``status == 0`` and ``error`` set. Nothing else of
httpx leaks out of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

__all__ = ["HeapAnswer", "HeapClient"]

#: How much of Heap's answer body is kept (dead letters, logs, the debugger).
MAX_BODY_CHARS = 2000


@dataclass(frozen=True, slots=True)
class HeapAnswer:
    """What came back for one request. ``status == 0``: no HTTP answer (``error`` says why)."""

    status: int
    body: str = ""
    #: The raw ``Retry-After`` header, if any (seconds or an HTTP date).
    retry_after: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        """A short one-line form kept with outcomes: ``"400 Bad Request: ..."``."""
        if self.status == 0:
            return f"network error: {self.error}"
        body = self.body.strip().replace("\n", " ")
        return f"{self.status} {body}".strip()


class HeapClient:
    """Send JSON bodies to Heap. Use as an async context manager or call :meth:`aclose`."""

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
        max_connections: int = 32,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": "heaprelay", **(headers or {})},
        )

    async def post(
        self, url: str, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None
    ) -> HeapAnswer:
        content = orjson.dumps(body)
        try:
            response = await self._client.post(
                url,
                content=content,
                headers={"Content-Type": "application/json", **(headers or {})},
            )
        except httpx.HTTPError as exc:
            return HeapAnswer(status=0, error=f"{type(exc).__name__}: {exc}"[:MAX_BODY_CHARS])
        return HeapAnswer(
            status=response.status_code,
            body=response.text[:MAX_BODY_CHARS],
            retry_after=response.headers.get("retry-after"),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HeapClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
