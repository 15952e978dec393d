"""Routes of the ingest API (see the package docstring and SPEC §2)."""

from __future__ import annotations

import base64
import binascii
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from heaprelay.clock import Clock
from heaprelay.config import Source
from heaprelay.ingest._observer import IngestObserver
from heaprelay.messages.incoming import (
    SHORT_TYPES,
    TYPES,
    PreparedRequest,
    Rejection,
    parse_json,
    prepare,
)
from heaprelay.queue.base import HistoryEvent, NewJob, Queue, history_of, property_values

#: Request headers the browser SDKs send cross-origin (analytics-next, RudderStack v3).
ALLOWED_HEADERS: Final = (
    "authorization, content-type, content-encoding, accept, anonymousid, sentat, "
    "x-retry-count, rsa-retry-attempt, rsa-retry-reason, rsa-since-first-attempt, "
    "rsa-since-last-attempt, rsa-recovered"
)
_SUCCESS: Final = b'{"success":true}'


class AppendTracker(Protocol):
    """Told of every append's outcome (:class:`heaprelay.queue.health.AppendHealth`)."""

    def failed(self, exc: BaseException) -> str:
        """An append failed: the one-line reason to answer (disk full, read-only, ...)."""
        ...

    def succeeded(self) -> None: ...


@dataclass(slots=True)
class IngestState:
    """What the routes need. ``queue`` is set once the server has opened it."""

    sources: tuple[Source, ...]
    clock: Clock
    queue: Queue | None = None
    #: Told of every request's answer and of what it stored (metrics, the debugger).
    observer: IngestObserver | None = None
    #: Told of every append's outcome (``/readyz``; one log line per failure class).
    health: AppendTracker | None = None
    by_key: dict[str, Source] = field(init=False)
    #: Largest request any source accepts (what is read before the write key is known).
    max_request_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.by_key = {s.write_key: s for s in self.sources}
        self.max_request_bytes = max((s.limits.max_request_bytes for s in self.sources), default=0)

    def allowing(self, origin: str, source: Source | None) -> list[Source]:
        """The sources that allow ``origin`` (:meth:`Source.allows_origin`): ``source`` alone
        when the write key is known, else every source (preflights and /v1/m carry no key)."""
        candidates = (source,) if source is not None else self.sources
        return [s for s in candidates if s.allows_origin(origin)]


def ingest_routes(state: IngestState) -> list[BaseRoute]:
    """The ``/v1/*`` and beacon routes (POST, and OPTIONS for CORS preflights)."""
    routes: list[BaseRoute] = []
    preflight = _preflight(state)

    def add(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        async def either(request: Request) -> Response:
            if request.method == "OPTIONS":
                return await preflight(request)
            if state.observer is None:
                return await endpoint(request)
            started = time.perf_counter()
            response = await endpoint(request)
            seconds = time.perf_counter() - started
            state.observer.answered(path, response.status_code, seconds, bytes(response.body))
            return response

        # One route a path, the busiest first: Starlette tries routes one by one.
        routes.append(Route(path, either, methods=["POST", "OPTIONS"]))

    add("/v1/batch", _ingest(state, None))
    for kind in ("track", *sorted(TYPES - {"track"})):
        add(f"/v1/{kind}", _ingest(state, kind))
    for path in ("/v1/import", "/v1/b", "/beacon/v1/batch"):
        add(path, _ingest(state, None))
    for short, kind in SHORT_TYPES.items():
        add(f"/v1/{short}", _ingest(state, kind))
    add("/v1/m", _metrics(state))
    return routes


# --- endpoints --------------------------------------------------------------------------


def _ingest(state: IngestState, route_type: str | None) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        headers = _wanted_headers(request)
        origin = headers.get("origin")
        source: Source | None = None
        try:
            header_key = basic_user(headers.get("authorization"))
        except ValueError as exc:
            return _error(state, origin, None, Rejection("invalid_auth", str(exc), 401))
        key = header_key or request.query_params.get("writeKey") or None
        if key is not None:
            source = state.by_key.get(key)
            if source is None:
                return _error(state, origin, None, _unknown_key())
            if origin is not None and not source.allows_origin(origin):
                return _origin_refused(state, origin)
        limit = source.limits.max_request_bytes if source else state.max_request_bytes
        raw = await _read_body(request, headers, limit)
        if isinstance(raw, Rejection):
            return _error(state, origin, source, raw)
        body = parse_json(raw)
        if isinstance(body, Rejection):
            return _error(state, origin, source, body)
        if source is None:
            body_key = body.get("writeKey")
            if not isinstance(body_key, str) or not body_key:
                return _error(
                    state,
                    origin,
                    None,
                    Rejection(
                        "missing_write_key",
                        "no write key: send it as the HTTP Basic user name (empty password) "
                        "or as 'writeKey' in the body",
                        401,
                    ),
                )
            source = state.by_key.get(body_key)
            if source is None:
                return _error(state, origin, None, _unknown_key())
            if origin is not None and not source.allows_origin(origin):
                return _origin_refused(state, origin)
            if len(raw) > source.limits.max_request_bytes:
                return _error(
                    state, origin, source, _request_too_large(source.limits.max_request_bytes)
                )
        if state.queue is None:
            return _error(
                state, origin, source, Rejection("not_ready", "the server is starting", 503)
            )
        now = state.clock.now()
        prepared = prepare(
            body,
            route_type=route_type,
            received_at=now,
            max_message_bytes=source.limits.max_message_bytes,
            body_bytes=len(raw),
            partial=source.partial_batches,
        )
        if isinstance(prepared, Rejection):
            return _error(state, origin, source, prepared)
        jobs = fan_out(source, prepared, now)
        try:
            await append(state.queue, source, prepared, jobs, now)
        except Exception as exc:
            reason = (
                state.health.failed(exc)
                if state.health is not None
                else f"the queue cannot store messages ({exc})"
            )
            message = f"{reason}; nothing of this request was stored, send it again later"
            return _error(state, origin, source, Rejection("queue_unavailable", message, 503))
        if state.health is not None:
            state.health.succeeded()
        if state.observer is not None:
            state.observer.stored(source, request.scope["path"], prepared.messages, now)
        if prepared.rejected:
            answer: dict[str, Any] = {
                "success": True,
                "stored": len(prepared.messages),
                "rejected": [r.as_json() for r in prepared.rejected],
            }
            return _json(200, orjson.dumps(answer), _cors(state, origin, source))
        return _json(200, _SUCCESS, _cors(state, origin, source))

    return endpoint


def _metrics(state: IngestState) -> Callable[[Request], Awaitable[Response]]:
    """analytics.js remote metrics: no credentials, never an error, nothing stored."""

    async def endpoint(request: Request) -> Response:
        async for _ in request.stream():
            pass
        return _json(200, _SUCCESS, _cors(state, request.headers.get("origin"), None))

    return endpoint


def _preflight(state: IngestState) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and not state.allowing(origin, None):
            return _origin_refused(state, origin, keyed=False)
        headers = _cors(state, origin, None)
        requested = request.headers.get("access-control-request-headers")
        headers["access-control-allow-headers"] = (
            f"{ALLOWED_HEADERS}, {requested}" if requested else ALLOWED_HEADERS
        )
        headers["access-control-allow-methods"] = "POST, OPTIONS"
        headers["access-control-max-age"] = "7200"
        return Response(status_code=204, headers=headers)

    return endpoint


# --- helpers ----------------------------------------------------------------------------


def fan_out(source: Source, prepared: PreparedRequest, now: float) -> list[NewJob]:
    """The jobs of a request: each message for each enabled destination of its source."""
    destinations = [d.id for d in source.destinations if d.enabled]
    window = source.dedupe_window
    return [
        NewJob(source.name, dest, m.message_id, m.order_key, m.payload, now, window)
        for m in prepared.messages
        for dest in destinations
    ]


def history_for(source: Source, prepared: PreparedRequest) -> list[HistoryEvent]:
    """What a request adds to its source's history for audiences (empty for a source that
    keeps none: ``Source.history_window`` 0)."""
    if source.history_window <= 0:
        return []
    name = source.name
    if not source.history_sums:
        return [h for m in prepared.messages if (h := history_of(name, m.payload)) is not None]
    # Computed traits' sums: the values of their properties too, for their events only.
    sums: dict[str, list[str]] = {}
    for event, prop in source.history_sums:
        sums.setdefault(event, []).append(prop)
    found: list[HistoryEvent] = []
    for m in prepared.messages:
        if (h := history_of(name, m.payload)) is not None:
            found.append(h)
            if h.traits is None and h.event in sums:
                found += property_values(h, m.payload, sums[h.event])
    return found


async def append(
    queue: Queue, source: Source, prepared: PreparedRequest, jobs: list[NewJob], now: float
) -> None:
    """Store a request's jobs and, in the same transaction, its history (acknowledge after)."""
    history = history_for(source, prepared)
    if history:
        await queue.append(jobs, now=now, history=history)
    else:
        await queue.append(jobs, now=now)


def basic_user(header: str | None) -> str | None:
    """The user name of a Basic Authorization header (the write key); ``None`` for no header
    or another scheme (Segment's OAuth sends ``Bearer`` plus ``writeKey`` in the body)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(
            "the Authorization header is not valid HTTP Basic (base64 of 'writeKey:')"
        ) from None
    user = decoded.partition(":")[0]
    return user or None


def _wanted_headers(request: Request) -> dict[str, str]:
    """The request headers ingest looks at, in one pass (ASGI names are lower-case; the
    first of repeated headers counts, as with Starlette's ``Headers.get``)."""
    found: dict[str, str] = {}
    for name, value in request.scope["headers"]:
        if name in _WANTED:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


_WANTED: Final = frozenset({b"origin", b"authorization", b"content-encoding", b"content-length"})


async def _read_body(request: Request, headers: dict[str, str], limit: int) -> bytes | Rejection:
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        return Rejection(
            "unsupported_encoding",
            f"Content-Encoding {encoding!r} is not supported; send plain or gzip",
            415,
        )
    compressed = encoding in ("gzip", "x-gzip")
    # gzip can make incompressible data slightly larger than it was.
    raw_limit = limit + limit // 100 + 1024 if compressed else limit
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > raw_limit:
        return _request_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > raw_limit:
            return _request_too_large(limit)
        chunks.append(chunk)
    data = b"".join(chunks)
    if not compressed:
        return data
    # A gzip body may hold several members, one after the other (RFC 1952 §2.2; pigz and
    # streaming writers make them): the body is all of them, never just the first.
    members: list[bytes] = []
    inflated_size = 0
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            member = inflater.decompress(data, limit + 1 - inflated_size)
        except zlib.error as exc:
            return Rejection("invalid_gzip", f"the gzip body does not inflate: {exc}")
        inflated_size += len(member)
        if inflated_size > limit:
            return _request_too_large(limit, inflated=True)
        if not inflater.eof:
            return Rejection("invalid_gzip", "the gzip body is truncated")
        members.append(member)
        data = inflater.unused_data
        if not data:
            return members[0] if len(members) == 1 else b"".join(members)


def _request_too_large(limit: int, *, inflated: bool = False) -> Rejection:
    what = "inflates to more than" if inflated else "is over"
    return Rejection(
        "request_too_large",
        f"the request body {what} this source's request limit of {limit} bytes (max_request_bytes)",
        413,
    )


def _unknown_key() -> Rejection:
    return Rejection("invalid_write_key", "the write key is not known to this relay", 401)


def _cors(state: IngestState, origin: str | None, source: Source | None) -> dict[str, str]:
    if origin is None:
        return {}
    allowing = state.allowing(origin, source)
    if not allowing:
        return {}
    headers = {
        "access-control-allow-origin": origin,
        "access-control-expose-headers": "Retry-After",
        "vary": "Origin",
    }
    if any(s.cors_credentials for s in allowing):
        headers["access-control-allow-credentials"] = "true"
    return headers


def _origin_refused(state: IngestState, origin: str, keyed: bool = True) -> Response:
    """403 for a page whose origin the source does not allow (no CORS headers: that page
    is not to read the answer). Nothing is stored."""
    rejection = Rejection(
        "origin_not_allowed",
        f"origin {origin!r} is not in "
        + ("this source's cors_origins" if keyed else "the cors_origins of any source"),
        403,
    )
    return _error(state, None, None, rejection)


def _error(
    state: IngestState, origin: str | None, source: Source | None, rejection: Rejection
) -> Response:
    headers = _cors(state, origin, source)
    if rejection.status == 503:
        headers["retry-after"] = "1"
    return _json(rejection.status, orjson.dumps(rejection.as_json()), headers)


def _json(status: int, body: bytes, headers: dict[str, str]) -> Response:
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def all_paths(routes: Iterable[BaseRoute]) -> list[str]:
    """The paths served (for docs and tests)."""
    return sorted({r.path for r in routes if isinstance(r, Route)})
