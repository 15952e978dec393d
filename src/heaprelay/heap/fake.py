"""A fake Heap server (a Starlette app) that enforces Heap's documented rules and limits and
can inject failures. For users' own testing (``heaprelay fake-heap``), for ``serve
--sandbox``, and for our tests.

Endpoints (each also under ``/us`` and ``/eu`` prefixes, recorded as the region):

- ``POST /api/track`` — single event or bulk ``{"app_id", "events": [...]}`` (≤ 1000);
- ``POST /api/add_user_properties`` — single user or bulk ``{"app_id", "users": [...]}``;
- ``POST /api/integrations/track`` and ``/api/integrations/add_user_properties``.

Answers, in this order: injected latency; an outage window or injected error (``503``);
``400 Bad Request: <what is wrong>`` for a body breaking a documented rule (the whole
request is refused, nothing is recorded); ``429`` with ``Retry-After`` when rate limits are
on and the request does not fit (15,000 bulk-track events per minute per app_id, 1,000 per
minute per identity per app_id, 30 single-event requests per 30 s per identity per app_id;
windows divided by ``time_scale``); otherwise ``200`` with an empty body. Track events
whose ``(app_id, idempotency_key)`` was accepted before are counted as duplicates and not
stored again, as Heap does. User properties are merged per (app_id, identity), last value
wins.

Test/demo endpoints: ``GET /_fake/report`` (counters), ``GET /_fake/events`` and
``GET /_fake/users`` (what Heap holds), ``GET /_fake/requests`` (recent requests),
``POST /_fake/settings`` (change failure injection or limits at run time, e.g.
``{"outage_seconds": 10}``), ``POST /_fake/reset``.

Heap in the browser (device mode): ``GET /js/heap-{app_id}.js`` (classic heap.js) and
``GET /config/{app_id}/heap_config.js`` (heap.js 5) serve a recording heap.js that behaves
like Heap's loader — it drains the calls the snippet queued (``window.heap`` entries, or
``heapReadyCb``), replaces the stubs with real methods (``identify``, ``addUserProperties``,
``track``, ``resetIdentity`` …, ``heap.appid``, ``heap.loaded``) — and posts every call to
``POST /js/record``. ``GET /_fake/browser`` (``?app_id=``) lists the script loads and the
calls, in the order each page made them.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from heaprelay.clock import Clock, SystemClock
from heaprelay.config import Config, parse_origin
from heaprelay.heap import _fake_rules as rules

__all__ = ["SANDBOX_PATH", "FakeHeap", "FakeHeapSettings", "sandbox"]

#: Where ``serve --sandbox`` mounts the embedded fake Heap on the relay's own port.
SANDBOX_PATH = "/fake-heap"


@dataclass(frozen=True, slots=True)
class FakeHeapSettings:
    rate_limits: bool = True
    #: Divides every rate-limit window (compressed-time benchmarks).
    time_scale: float = 1.0
    app_events_per_minute: int = 15_000
    identity_events_per_minute: int = 1_000
    single_requests_per_30s: int = 30
    #: Fraction of requests answered ``error_status`` (before validation).
    error_rate: float = 0.0
    error_status: int = 503
    #: ``Retry-After`` seconds sent with injected errors (0: none), e.g. a storm of 429s.
    error_retry_after: float = 0.0
    #: Fraction of valid requests that are recorded but answered 503 (a lost answer).
    accept_then_fail_rate: float = 0.0
    #: Seconds added before answering.
    latency: float = 0.0
    #: Outage windows ``(start, end)`` in seconds after the fake started: answered 503.
    outages: tuple[tuple[float, float], ...] = ()
    seed: int | None = None
    #: Injected rejection: items for these identities are refused with 400 (a stand-in for
    #: any item-level refusal, e.g. to rehearse dead letters and ``dlq replay``).
    reject_identities: tuple[str, ...] = ()
    #: Keep every accepted event and user in memory (turn off for long benchmarks).
    keep_items: bool = True
    #: At most this many accepted events are kept (the oldest are forgotten first).
    max_kept_events: int = 1_000_000
    max_request_log: int = 10_000


@dataclass(slots=True)
class _Bucket:
    """A leaky bucket holding up to ``capacity`` tokens, refilled at ``rate`` per second."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def wait_for(self, n: float, now: float) -> float:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate


@dataclass(slots=True)
class _State:
    started: float
    by_status: Counter[int] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    events: list[dict[str, Any]] = field(default_factory=list)
    users: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    keys: set[tuple[str, str]] = field(default_factory=set)
    accepted_events: int = 0
    accepted_users: int = 0
    duplicates: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    buckets: dict[tuple[str, ...], _Bucket] = field(default_factory=dict)
    first_accept_at: float | None = None
    last_accept_at: float | None = None
    outage_until: float = 0.0
    #: Device mode: heap.js served (``{app_id, path, at, referer}``) and the calls pages made.
    script_loads: list[dict[str, Any]] = field(default_factory=list)
    browser_calls: list[dict[str, Any]] = field(default_factory=list)


def _identity(item: Mapping[str, Any]) -> str | None:
    ident = item.get("user_identifier")
    if isinstance(ident, Mapping):
        return str(ident.get("identity") or ident.get("anonymous_id") or "")
    value = item.get("identity", item.get("user_id"))
    return None if value is None else str(value)


_CHECKS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "track": rules.check_track,
    "add_user_properties": rules.check_users,
    "integrations/track": rules.check_integrations_track,
    "integrations/add_user_properties": rules.check_integrations_users,
}


class FakeHeap:
    """The fake's state and rules; :attr:`app` is the ASGI app serving them."""

    def __init__(
        self, settings: FakeHeapSettings | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings or FakeHeapSettings()
        self.clock = clock or SystemClock()
        self._rng = random.Random(self.settings.seed)
        self._state = _State(started=self.clock.monotonic())
        self.app = self._build_app()

    # --- the rules ------------------------------------------------------------------------

    async def handle(
        self, endpoint: str, raw: bytes, region: str = "us"
    ) -> tuple[int, str, dict[str, str]]:
        """Answer one request: ``(status, body, headers)``."""
        s, st = self.settings, self._state
        if s.latency > 0:
            await self.clock.sleep(s.latency)
        now = self.clock.monotonic()
        elapsed = now - st.started
        items = 0
        if now < st.outage_until or any(a <= elapsed < b for a, b in s.outages):
            return self._log(endpoint, 503, "Service Unavailable (outage)", items)
        if s.error_rate and self._rng.random() < s.error_rate:
            headers = {"Retry-After": f"{s.error_retry_after:g}"} if s.error_retry_after else {}
            return self._log(endpoint, s.error_status, "injected error", items, headers)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._log(endpoint, 400, "Bad Request: body is not JSON", items)
        if not isinstance(body, dict):
            return self._log(endpoint, 400, "Bad Request: body is not a JSON object", items)
        array = "events" if endpoint.endswith("track") else "users"
        # Items in the request, refused or not (the request log shows what was sent).
        items = len(body[array]) if isinstance(body.get(array), list) else 1
        problem = _CHECKS[endpoint](body) or self._injected_rejection(body)
        if problem:
            return self._log(endpoint, 400, f"Bad Request: {problem}", items)
        entries: list[dict[str, Any]] = (
            list(body[array])
            if isinstance(body.get(array), list)
            else [{k: v for k, v in body.items() if k != "app_id"}]
        )
        items = len(entries)
        app_id = str(body["app_id"])
        if s.rate_limits:
            wait = self._rate_wait(endpoint, app_id, entries, bulk=array in body, now=now)
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait)))
                return self._log(
                    endpoint, 429, "Too Many Requests", items, {"Retry-After": retry_after}
                )
        self._accept(endpoint, app_id, entries, region)
        if s.accept_then_fail_rate and self._rng.random() < s.accept_then_fail_rate:
            return self._log(endpoint, 503, "answer lost after accepting", items)
        return self._log(endpoint, 200, "", items)

    def _injected_rejection(self, body: Mapping[str, Any]) -> str | None:
        if not self.settings.reject_identities:
            return None
        for name in ("events", "users"):
            items = body.get(name)
            if isinstance(items, list):
                for n, item in enumerate(items):
                    if _identity(item) in self.settings.reject_identities:
                        return f"{name}[{n}]: identity refused (injected)"
                return None
        if _identity(body) in self.settings.reject_identities:
            return "identity refused (injected)"
        return None

    def _log(
        self,
        endpoint: str,
        status: int,
        text: str,
        items: int,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, dict[str, str]]:
        st = self._state
        st.by_status[status] += 1
        st.by_endpoint[endpoint] += 1
        st.requests.append(
            {"at": self.clock.now(), "endpoint": endpoint, "status": status, "items": items}
        )
        if len(st.requests) > self.settings.max_request_log:
            del st.requests[: len(st.requests) - self.settings.max_request_log]
        return status, text, headers or {}

    def _bucket(self, key: tuple[str, ...], limit: int, window: float, now: float) -> _Bucket:
        bucket = self._state.buckets.get(key)
        if bucket is None:
            window /= self.settings.time_scale
            bucket = self._state.buckets[key] = _Bucket(limit / window, limit, limit, now)
        return bucket

    def _rate_wait(
        self,
        endpoint: str,
        app_id: str,
        entries: list[dict[str, Any]],
        *,
        bulk: bool,
        now: float,
    ) -> float:
        s = self.settings
        needs: list[tuple[_Bucket, int]] = []
        if endpoint == "track":
            per_identity = Counter(str(e.get("identity", e.get("user_id"))) for e in entries)
            needs.append(
                (self._bucket(("app", app_id), s.app_events_per_minute, 60.0, now), len(entries))
            )
            for identity, n in per_identity.items():
                if bulk:
                    key = ("identity", app_id, identity)
                    b = self._bucket(key, s.identity_events_per_minute, 60.0, now)
                else:
                    key = ("single", app_id, identity)
                    b = self._bucket(key, s.single_requests_per_30s, 30.0, now)
                    n = 1
                needs.append((b, n))
        elif endpoint == "add_user_properties" and not bulk:
            identity = str(entries[0].get("identity"))
            b = self._bucket(("single", app_id, identity), s.single_requests_per_30s, 30.0, now)
            needs.append((b, 1))
        wait = max((bucket.wait_for(k, now) for bucket, k in needs), default=0.0)
        if wait == 0:
            for bucket, k in needs:
                bucket.tokens -= k
        return wait

    def _accept(
        self, endpoint: str, app_id: str, entries: list[dict[str, Any]], region: str
    ) -> None:
        st, keep = self._state, self.settings.keep_items
        now = self.clock.now()
        st.first_accept_at = st.first_accept_at or now
        st.last_accept_at = now
        for entry in entries:
            if endpoint.endswith("track"):
                key = entry.get("idempotency_key")
                if isinstance(key, str):
                    if (app_id, key) in st.keys:
                        st.duplicates += 1
                        continue
                    st.keys.add((app_id, key))
                st.accepted_events += 1
                if keep:
                    record = dict(entry)
                    if isinstance(record.get("properties"), Mapping):
                        record["properties"] = rules.accepted_properties(record["properties"])
                    if len(st.events) >= self.settings.max_kept_events:
                        del st.events[: len(st.events) - self.settings.max_kept_events + 1]
                    st.events.append(
                        {
                            "app_id": app_id,
                            "endpoint": endpoint,
                            "region": region,
                            "received_at": now,
                            **record,
                        }
                    )
            else:
                st.accepted_users += 1
                if endpoint == "add_user_properties":
                    identity = str(entry["identity"])
                    props = entry.get("properties", {})
                else:
                    ident = entry["user_identifier"]
                    identity = str(ident.get("identity") or next(iter(ident.values())))
                    props = entry.get("custom_properties", {})
                st.users.setdefault((app_id, identity), {}).update(props)

    # --- reports --------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        st = self._state
        return {
            "requests": sum(st.by_status.values()),
            "by_status": {str(k): v for k, v in sorted(st.by_status.items())},
            "by_endpoint": dict(st.by_endpoint),
            "accepted_events": st.accepted_events,
            "accepted_users": st.accepted_users,
            "duplicates": st.duplicates,
            "rate_limited": st.by_status.get(429, 0),
            "rejected": st.by_status.get(400, 0),
            "first_accept_at": st.first_accept_at,
            "last_accept_at": st.last_accept_at,
            "settings": {
                k: getattr(self.settings, k)
                for k in ("rate_limits", "time_scale", "error_rate", "latency")
            },
        }

    def events(self, app_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self._state.events if app_id is None or e["app_id"] == app_id]

    def users(self, app_id: str | None = None) -> dict[str, dict[str, Any]]:
        return {
            identity: dict(props)
            for (a, identity), props in self._state.users.items()
            if app_id is None or a == app_id
        }

    def requests(self) -> list[dict[str, Any]]:
        return list(self._state.requests)

    def browser(self, app_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """What reached Heap in browsers: ``{"loads": [...], "calls": [...]}``."""
        st = self._state
        return {
            "loads": [x for x in st.script_loads if app_id is None or x["app_id"] == app_id],
            "calls": [x for x in st.browser_calls if app_id is None or x["app_id"] == app_id],
        }

    def heap_js(self, app_id: str, path: str, referer: str | None, depth: int = 1) -> bytes:
        """The recording heap.js for ``app_id``, requested at ``path`` (the load is recorded),
        ``depth`` folders below the fake's root."""
        st = self._state
        st.script_loads.append(
            {"app_id": app_id, "path": path, "at": self.clock.now(), "referer": referer}
        )
        del st.script_loads[: -self.settings.max_request_log]
        return (
            _heap_js()
            .replace("__APP_ID__", orjson.dumps(app_id).decode())
            .replace("__DEPTH__", str(depth))
            .encode()
        )

    def record_browser_call(self, raw: bytes) -> str | None:
        """One call the recording heap.js posted; the problem when it is not one."""
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "body is not JSON"
        if not isinstance(record, dict) or not isinstance(record.get("method"), str):
            return 'expected {"method": ..., "args": [...]}'
        if not isinstance(record.get("args"), list):
            return "args must be a list"
        record["app_id"] = str(record.get("app_id", ""))
        record["received_at"] = self.clock.now()
        st = self._state
        st.browser_calls.append(record)
        del st.browser_calls[: -self.settings.max_request_log]
        return None

    def reset(self) -> None:
        self._state = _State(started=self.clock.monotonic())

    def update(self, changes: Mapping[str, Any]) -> None:
        """Change settings at run time; ``outage_seconds``: answer 503 for that long from now.

        Every value is checked first (:data:`SETTING_CHECKS`); ``ValueError`` saying which
        and what is accepted, and nothing changed, when one is wrong."""
        changes = dict(changes)
        unknown = set(changes) - set(SETTING_CHECKS)
        if unknown:
            raise ValueError(
                f"unknown settings {sorted(unknown)}; accepted: {sorted(SETTING_CHECKS)}"
            )
        for name, value in changes.items():
            accepts, check = SETTING_CHECKS[name]
            if not check(value):
                raise ValueError(f"{name}: {json_text(value)} is not {accepts}")
        if isinstance(changes.get("reject_identities"), list):
            changes["reject_identities"] = tuple(changes["reject_identities"])
        if "outage_seconds" in changes:
            seconds = float(changes.pop("outage_seconds"))
            self._state.outage_until = self.clock.monotonic() + seconds
        self.settings = replace(self.settings, **changes)
        if "seed" in changes:
            self._rng = random.Random(self.settings.seed)
        if {"time_scale", "app_events_per_minute", "identity_events_per_minute"} & set(changes):
            self._state.buckets.clear()

    # --- HTTP -----------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        def endpoint_route(endpoint: str, region: str) -> Callable[[Request], Any]:
            async def route(request: Request) -> Response:
                status, text, headers = await self.handle(endpoint, await request.body(), region)
                return Response(text, status_code=status, headers=headers, media_type="text/plain")

            return route

        def json(obj: Any, status: int = 200) -> Response:
            return Response(orjson.dumps(obj), status_code=status, media_type="application/json")

        async def report(request: Request) -> Response:
            return json(self.report())

        async def events(request: Request) -> Response:
            return json(self.events(request.query_params.get("app_id")))

        async def users(request: Request) -> Response:
            return json(self.users(request.query_params.get("app_id")))

        async def requests(request: Request) -> Response:
            return json(self.requests())

        async def reset(request: Request) -> Response:
            self.reset()
            return json({"ok": True})

        async def settings(request: Request) -> Response:
            try:
                changes = orjson.loads(await request.body() or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("settings must be a JSON object")
                self.update(changes)
            except (ValueError, TypeError) as exc:
                return json({"code": "invalid_setting", "message": str(exc)}, 400)
            return json(self.report()["settings"])

        def heap_js(depth: int) -> Callable[[Request], Any]:
            async def route(request: Request) -> Response:
                body = self.heap_js(
                    request.path_params["app_id"],
                    request.url.path,
                    request.headers.get("referer"),
                    depth,
                )
                headers = {"cache-control": "no-store", "access-control-allow-origin": "*"}
                return Response(body, headers=headers, media_type="application/javascript")

            return route

        async def record(request: Request) -> Response:
            # What the recording heap.js posts from any page, as Heap's own script posts to
            # Heap: open to every origin (like the delivery endpoints), unlike /_fake/*.
            cors = {"access-control-allow-origin": "*"}
            if request.method == "OPTIONS":
                cors["access-control-allow-methods"] = "POST, OPTIONS"
                cors["access-control-allow-headers"] = "content-type"
                return Response(status_code=204, headers=cors)
            problem = self.record_browser_call(await request.body())
            if problem:
                return Response(orjson.dumps({"error": problem}), 400, cors, "application/json")
            return Response(status_code=204, headers=cors)

        async def browser(request: Request) -> Response:
            return json(self.browser(request.query_params.get("app_id")))

        def control(
            endpoint: Callable[[Request], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            async def guarded(request: Request) -> Response:
                refusal = control_refusal(request)
                if refusal is not None:
                    status, code, message = refusal
                    return json({"code": code, "message": message}, status)
                return await endpoint(request)

            return guarded

        routes = [
            Route("/js/heap-{app_id}.js", heap_js(1), methods=["GET"]),
            Route("/config/{app_id}/heap_config.js", heap_js(2), methods=["GET"]),
            Route("/js/record", record, methods=["POST", "OPTIONS"]),
            Route("/_fake/browser", control(browser), methods=["GET"]),
            Route("/_fake/report", control(report), methods=["GET"]),
            Route("/_fake/events", control(events), methods=["GET"]),
            Route("/_fake/users", control(users), methods=["GET"]),
            Route("/_fake/requests", control(requests), methods=["GET"]),
            Route("/_fake/reset", control(reset), methods=["POST"]),
            Route("/_fake/settings", control(settings), methods=["POST"]),
        ]
        for endpoint in _CHECKS:
            for prefix, region in (("", "us"), ("/us", "us"), ("/eu", "eu")):
                routes.append(
                    Route(
                        f"{prefix}/api/{endpoint}",
                        endpoint_route(endpoint, region),
                        methods=["POST"],
                    )
                )
        return Starlette(routes=routes)


def control_refusal(request: Request) -> tuple[int, str, str] | None:
    """Why a ``/_fake/*`` request (what Heap received, and the fake's controls) is refused, as
    (status, code, message); ``None`` to answer it. They answer loopback clients only, never
    a page of another site (``Sec-Fetch-Site: cross-site``, an ``Origin`` other than the
    fake's own, a ``Host`` that is not a loopback name: a DNS-rebound page), and their POSTs
    need ``Content-Type: application/json`` (which an HTML form cannot send)."""
    client = request.client.host if request.client else ""
    if not _loopback(client):
        return (
            403,
            "loopback_only",
            f"/_fake/* answers only clients on this machine (127.0.0.0/8, ::1), not {client}",
        )
    host = request.headers.get("host", "")
    own = parse_origin(f"{request.url.scheme}://{host}")
    if own is None or not (_loopback(own[1]) or own[1] == "localhost"):
        return (403, "cross_site", f"/_fake/* answers only a loopback Host, not {host!r}")
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" or (
        origin is not None and parse_origin(origin) != own
    ):
        return (403, "cross_site", "/_fake/* does not answer pages of other sites")
    if request.method == "POST":
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return (
                415,
                "json_required",
                f"POST /_fake/* takes Content-Type: application/json, not {media or 'none'!r}",
            )
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@cache
def _heap_js() -> str:
    return (resources.files("heaprelay.heap") / "fake-heap.js").read_text(encoding="utf-8")


def _number(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (low < value if low_open else low <= value) and value <= high

    return check


def _integer(low: int, high: int | None = None) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return low <= value and (high is None or value <= high)

    return check


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


#: What ``POST /_fake/settings`` accepts: setting -> (what it takes, in words; the check).
SETTING_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "rate_limits": ("true or false", _boolean),
    "time_scale": ("a number above 0", _number(0, low_open=True)),
    "app_events_per_minute": ("an integer from 1", _integer(1)),
    "identity_events_per_minute": ("an integer from 1", _integer(1)),
    "single_requests_per_30s": ("an integer from 1", _integer(1)),
    "error_rate": ("a number from 0 to 1", _number(0, 1)),
    "error_status": ("an HTTP status from 400 to 599", _integer(400, 599)),
    "error_retry_after": ("a number of seconds from 0", _number(0)),
    "accept_then_fail_rate": ("a number from 0 to 1", _number(0, 1)),
    "latency": ("a number of seconds from 0", _number(0)),
    "outage_seconds": ("a number of seconds from 0", _number(0)),
    "seed": ("an integer or null", lambda v: v is None or _integer(-(2**63))(v)),
    "reject_identities": (
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    ),
    "keep_items": ("true or false", _boolean),
    "max_kept_events": ("an integer from 1", _integer(1)),
    "max_request_log": ("an integer from 1", _integer(1)),
}


def json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def sandbox(config: Config) -> tuple[Config, Mount]:
    """``serve --sandbox``: a fake Heap mounted at :data:`SANDBOX_PATH` on the relay's own
    host and port, and ``config`` with every destination's base URL pointing at it, and its
    ``heap_script_url`` at the fake's recording heap.js (a path: browsers take it on the
    relay's URL as they reach it)."""
    fake = FakeHeap(FakeHeapSettings(max_kept_events=10_000))
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    if ":" in host:
        host = f"[{host}]"
    base_url = f"http://{host}:{config.port}{SANDBOX_PATH}"
    sources = tuple(
        replace(
            source,
            destinations=tuple(
                # Under the fake's /us or /eu prefix, so that its report keeps the region.
                replace(
                    d,
                    settings=replace(d.settings, base_url=f"{base_url}/{d.settings.region}"),
                    heap_script_url=f"{SANDBOX_PATH}/js/heap-{{app_id}}.js",
                )
                for d in source.destinations
            ),
        )
        for source in config.sources
    )
    return replace(config, sources=sources, sandbox=True), Mount(SANDBOX_PATH, app=fake.app)
