"""Idempotency keys scoped per source when several sources share a Heap app_id (issue 12.3),
except the keys a peer profile reproduces byte for byte."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from heaprelay.clock import ManualClock
from heaprelay.config import Config, Destination, Source
from heaprelay.heap.client import HeapClient
from heaprelay.queue.base import Job
from heaprelay.queue.memory import MemoryQueue
from heaprelay.router.batcher import items_of
from heaprelay.router.worker import Router, scoped_key, with_scoped_keys
from heaprelay.transform import DestinationSettings


def dest(name: str, app_id: str, profile: str = "heap") -> Destination:
    region = "US" if profile.startswith("segment-") else None
    return Destination(
        name, DestinationSettings(app_id=app_id, profile=profile, region_setting=region)
    )


def test_destinations_sharing_an_app_id_across_sources() -> None:
    config = Config(
        sources=(
            Source("web", "k1", (dest("web-prod", "1"), dest("web-dev", "2"))),
            Source("backend", "k2", (dest("backend-prod", "1"),)),
            # Two destinations of one source on one app: one source, nothing to scope.
            Source("ios", "k3", (dest("ios-a", "3"), dest("ios-b", "3"))),
        )
    )
    assert config.shared_app_destinations() == {"web-prod", "backend-prod"}


def test_scoped_key_stays_within_heaps_length() -> None:
    assert scoped_key("web", "m-1") == "web:m-1"
    long = scoped_key("web", "x" * 300)
    assert long.startswith("sha256:")
    assert len(long) < 255
    assert long != scoped_key("backend", "x" * 300)


def keys_sent(profile: str, message: dict[str, Any], *, shared: bool) -> list[str]:
    router = Router(
        MemoryQueue(),
        {"d": dest("d", "1", profile)},
        HeapClient(),
        ManualClock(),
        scoped_keys={"d"} if shared else (),
    )
    job = Job(1, "web", "d", message["messageId"], "u1", orjson.dumps(message), 0.0, 0, None)
    requests = router._prepare(job)
    assert isinstance(requests, list)
    return [
        item["idempotency_key"]
        for r in requests
        if r.endpoint.endswith("track")
        for item in items_of(r)[1]
    ]


TRACK: dict[str, Any] = {
    "type": "track",
    "event": "Played",
    "userId": "u1",
    "anonymousId": "a1",
    "messageId": "m-1",
    "timestamp": "2026-01-01T00:00:00Z",
    "properties": {"n": 1},
}
EXPLICIT = {**TRACK, "properties": {"n": 1, "idempotencyKey": "order-7"}}


@pytest.mark.parametrize(
    ("profile", "message", "alone", "shared"),
    [
        # heaprelay's own profile: every key is its own choice, so every key is scoped.
        ("heap", TRACK, "m-1", "web:m-1"),
        ("heap", EXPLICIT, "order-7", "web:order-7"),
        # Peers send the messageId (Segment's Actions destinations) or the explicit key
        # (RudderStack) themselves: kept byte for byte.
        ("segment-actions", TRACK, "m-1", "m-1"),
        ("segment-heap-cloud", TRACK, "m-1", "m-1"),
        ("rudderstack", EXPLICIT, "order-7", "order-7"),
        # Where the peer sends none, the router's key is heaprelay's own: scoped.
        ("rudderstack", TRACK, "m-1", "web:m-1"),
        ("segment", TRACK, "m-1", "web:m-1"),
    ],
)
def test_keys_per_profile(profile: str, message: dict[str, Any], alone: str, shared: str) -> None:
    assert keys_sent(profile, message, shared=False) == [alone]
    assert keys_sent(profile, message, shared=True) == [shared]


def test_with_scoped_keys_on_bulk_bodies() -> None:
    from heaprelay.heap.models import HeapRequest

    bulk = HeapRequest(
        "https://heapanalytics.com",
        "track",
        {"app_id": "1", "events": [{"event": "a", "idempotency_key": "k"}, {"event": "b"}]},
    )
    scoped = with_scoped_keys(bulk, "web")
    assert scoped.body["events"] == [{"event": "a", "idempotency_key": "web:k"}, {"event": "b"}]
    single = HeapRequest("https://heapanalytics.com", "track", {"app_id": "1", "event": "a"})
    assert with_scoped_keys(single, "web") is single
