"""Slow clients: how long a connection may take to send a request's headers and its body.

uvicorn closes a connection idle between two requests after ``timeout_keep_alive``, and
answers 503 past ``limit_concurrency`` connections, but it waits for ever for headers or a
body that trickle in a byte at a time: a few thousand such connections hold the server's
connections (and, with a cap, keep everyone else out). So:

- :class:`Protocol` (uvicorn's httptools protocol) gives a connection ``header_timeout``
  seconds, from when it opens or from the first byte of its next request, to send the whole
  header block; past that it answers ``408`` (JSON) and closes the connection;
- :class:`BodyDeadline` (ASGI middleware) gives a request ``body_timeout`` seconds from its
  headers to its body's last byte; past that it answers ``408`` (JSON) with
  ``Connection: close`` and the route's work is abandoned (nothing of the request is stored:
  ingest stores only a body read whole).

It also answers what HTTP/1.1 refuses (:meth:`Protocol.send_400_response`) in JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BodyDeadline", "Protocol", "UvicornConfig"]

_HEADER_TIMEOUT_BODY: Final = (
    b'{"code":"request_timeout","message":"the request headers did not arrive in time '
    b'(header_timeout)"}'
)
HEADER_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_HEADER_TIMEOUT_BODY)).encode() + b"\r\n\r\n"
) + _HEADER_TIMEOUT_BODY
_BODY_TIMEOUT_BODY: Final = (
    b'{"code":"request_timeout","message":"the request body did not arrive in time '
    b'(body_timeout); nothing of it was stored"}'
)


class UvicornConfig(uvicorn.Config):
    """uvicorn's config plus ``header_timeout`` (read by :class:`Protocol`)."""

    def __init__(self, app: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout


class Protocol(HttpToolsProtocol):
    """httptools' protocol with a deadline on the header block (module doc)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout: float = getattr(config, "header_timeout", 10.0)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request HTTP/1.1 itself refuses (a negative or doubled Content-Length, one with
        chunked, a malformed request line): 400 as JSON, as every other refusal, then close
        (uvicorn answers it in plain text)."""
        body = orjson.dumps(
            {
                "code": "invalid_http",
                "message": f"{msg.rstrip('.')}: the request is not valid HTTP/1.1 "
                "(Content-Length, Transfer-Encoding or the request line)",
            }
        )
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        self.transport.close()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(HEADER_TIMEOUT_RESPONSE)
            self.transport.close()


class BodyTimeout(Exception):
    """The request body did not arrive before its deadline (the 408 is sent already)."""


class BodyDeadline:
    """ASGI middleware: a request's body must arrive within ``seconds`` (module doc)."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_done = False
        started = False
        timed_out = False

        async def timed_receive() -> Any:
            nonlocal body_done, timed_out
            if body_done:  # waiting for a disconnect after the body: no deadline
                return await receive()
            # A bare timer that cancels this task: every request pays for it, and it costs
            # less than asyncio.timeout_at (a loop of 200,000 requests with a body already
            # there: 5.2-5.5 us a request added, against 6.8-9.1 us with timeout_at).
            task = asyncio.current_task()
            assert task is not None
            fired = False

            def fire() -> None:
                nonlocal fired
                fired = True
                task.cancel()

            timer = loop.call_at(deadline, fire)
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not fired:
                    raise
                task.uncancel()
                timed_out = True
                if not started:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 408,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"connection", b"close"),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": _BODY_TIMEOUT_BODY})
                raise BodyTimeout from None
            finally:
                timer.cancel()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if timed_out:  # the 408 went out instead (an error page of the app's, say)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except BodyTimeout:
            pass
        except Exception:
            if not timed_out:
                raise
