"""The dashboard's pure parts: access rules and sessions, the live feed, the history."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from heaprelay.config import Destination, Source
from heaprelay.dashboard import Access, History, LiveFeed, is_loopback
from heaprelay.heap.models import HeapRequest
from heaprelay.messages.incoming import Prepared
from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import Delivered, Job, QueueStats, Skipped
from heaprelay.transform import DestinationSettings


def request(headers: dict[str, str] | None = None, cookie: str | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"host", b"127.0.0.1:8787"))
    if cookie:
        raw.append((b"cookie", f"heaprelay_session={cookie}".encode()))
    scope = {"type": "http", "method": "GET", "path": "/ui/", "headers": raw, "query_string": b""}
    scope |= {"scheme": "http", "server": ("127.0.0.1", 8787)}
    return Request(scope)


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "relay.internal"))


def test_sessions_are_signed_and_expire() -> None:
    access = Access("a-long-admin-token", "0.0.0.0")
    assert not access.open
    assert not access.closed
    cookie = access.new_session(now=1000.0)
    assert access.visitor(request(cookie=cookie), 1001.0).how == "session"
    assert access.visitor(request(cookie=cookie), 1000.0 + 13 * 3600) is None  # expired
    expiry, nonce, signature = cookie.split(".")
    assert access.visitor(request(cookie=f"{int(expiry) + 99}.{nonce}.{signature}"), 1001.0) is None
    # Another token (or another relay's) does not accept it.
    assert Access("another-admin-token", "0.0.0.0").visitor(request(cookie=cookie), 1001.0) is None
    # The same token on another relay does.
    assert Access("a-long-admin-token", "0.0.0.0").visitor(request(cookie=cookie), 1001.0)
    assert (
        access.visitor(request({"Authorization": "Bearer a-long-admin-token"}), 0).how == "bearer"
    )
    assert access.visitor(request({"Authorization": "Bearer nope"}), 0) is None
    assert access.visitor(request(), 0) is None


def test_csrf_is_bound_to_the_session_and_the_origin() -> None:
    access = Access("a-long-admin-token", "127.0.0.1")
    cookie = access.new_session(now=0)
    visitor = access.visitor(request(cookie=cookie), 1)
    assert visitor is not None
    assert visitor.csrf
    assert access.action_allowed(request(cookie=cookie), visitor, visitor.csrf)
    assert not access.action_allowed(request(cookie=cookie), visitor, None)
    other = access.visitor(request(cookie=access.new_session(now=0)), 1)
    assert other is not None
    assert not access.action_allowed(request(cookie=cookie), visitor, other.csrf)
    foreign = request({"Origin": "http://evil.example"}, cookie)
    assert not access.action_allowed(foreign, visitor, visitor.csrf)
    same = request({"Origin": "http://127.0.0.1:8787"}, cookie)
    assert access.action_allowed(same, visitor, visitor.csrf)
    # Behind a proxy that ends TLS: the page's origin is https, the relay sees http.
    proxied = request({"Origin": "https://127.0.0.1:8787"}, cookie)
    assert access.action_allowed(proxied, visitor, visitor.csrf)


def test_without_a_token_only_loopback_is_served() -> None:
    assert Access(None, "127.0.0.1").open
    assert Access(None, "127.0.0.1").visitor(request(), 0).how == "open"
    closed = Access(None, "0.0.0.0")
    assert closed.closed
    assert closed.visitor(request(), 0) is None
    assert closed.visitor(request({"Authorization": "Bearer anything-at-all"}), 0) is None
    assert "refused" in closed.describe()


def test_the_live_feed_numbers_events_and_replays_the_latest() -> None:
    feed = LiveFeed(kept=10)
    source = Source("web", "k", (Destination("heap", DestinationSettings(app_id="1")),))
    payload = b'{"type":"track","userId":"u","event":"E","messageId":"m1"}'
    job = Job(5, "web", "heap", "m1", "u", payload, 1.0, 0, None, 1)

    async def run() -> list[dict[str, object]]:
        async with feed.listen() as listener:
            feed.stored(source, "/v1/track", [Prepared("m1", "u", payload)], 1.0)
            feed.prepared(job, [HeapRequest("http://h", "track", {"app_id": "1", "event": "E"})])
            feed.finished([job], [Delivered(5, answer="200")], 2.0)
            feed.answered("/v1/track", 400, 0.001, b'{"code":"missing_identity","message":"m"}')
            return [listener.get_nowait() for _ in range(4)]

    live = asyncio.run(run())
    assert [e["kind"] for e in live] == ["received", "requests", "state", "refused"]
    assert [e["seq"] for e in live] == [1, 2, 3, 4]
    assert live[0]["event"] == "E"
    assert live[2]["state"] == "delivered"
    assert [e["seq"] for e in feed.recent(after=2)] == [3, 4]
    assert feed.recent() == live
    feed.finished([job], [Skipped(5, Reason.FILTERED_EVENT_NAME, "denied")], 3.0)
    assert feed.recent()[-1]["reason"] == "filtered_event_name"


def test_history_rates_from_the_totals() -> None:
    history = History(points=3)
    for t, received in ((0.0, 0), (10.0, 50), (20.0, 150), (30.0, 150)):
        stats = QueueStats(
            totals={"heap": {"received": received, "delivered": received // 2}},
            by_destination={"heap": {"pending": 7}},
        )
        history.add(t, stats)
    series = history.series("heap")
    assert series["t"] == [20.0, 30.0]  # three points kept: two intervals
    assert series["received"] == [10.0, 0.0]
    assert series["delivered"] == [5.0, 0.0]
    assert series["unfinished"] == [7.0, 7.0]
