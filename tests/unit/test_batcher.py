import pytest

from heaprelay.heap.models import HeapRequest
from heaprelay.router.batcher import batch, items_of
from heaprelay.router.worker import split_parts, with_idempotency_key

US = "https://heapanalytics.com"
EU = "https://c.eu.heap-api.com"


def track(app: str, identity: str, n: int, base: str = US) -> HeapRequest:
    return HeapRequest(base, "track", {"app_id": app, "identity": identity, "event": f"e{n}"})


def test_single_track_requests_become_one_bulk_request_in_order() -> None:
    reqs = [(i, track("1", f"u{i % 3}", i)) for i in range(5)]
    [b] = batch(reqs)
    assert b.url == US + "/api/track"
    assert b.body() == {
        "app_id": "1",
        "events": [{"identity": f"u{i % 3}", "event": f"e{i}"} for i in range(5)],
    }
    assert b.owners() == [0, 1, 2, 3, 4]


def test_grouped_by_url_and_app_id_at_most_1000_items() -> None:
    reqs = [(i, track("1", "u", i)) for i in range(2500)]
    reqs += [(9000, track("2", "u", 0)), (9001, track("1", "u", 0, base=EU))]
    batches = batch(reqs)
    sizes = [(b.url, b.app_id, len(b.items)) for b in batches]
    assert sizes == [
        (US + "/api/track", "1", 1000),
        (US + "/api/track", "1", 1000),
        (US + "/api/track", "1", 500),
        (US + "/api/track", "2", 1),
        (EU + "/api/track", "1", 1),
    ]
    assert [i.body["event"] for i in batches[1].items][:2] == ["e1000", "e1001"]


def test_user_properties_use_the_users_array() -> None:
    req = HeapRequest(
        US, "add_user_properties", {"app_id": "1", "identity": "a", "properties": {"plan": "pro"}}
    )
    [b] = batch([(1, req), (2, req)])
    assert b.body() == {
        "app_id": "1",
        "users": [{"identity": "a", "properties": {"plan": "pro"}}] * 2,
    }


def test_integration_endpoints_concatenate_arrays_under_the_shared_envelope() -> None:
    def ev(n: int, library: str = "server") -> HeapRequest:
        return HeapRequest(
            US,
            "integrations/track",
            {"app_id": "1", "library": library, "events": [{"event": f"e{n}"}]},
        )

    batches = batch([(1, ev(1)), (2, ev(2)), (3, ev(3, "other"))])
    assert [b.body() for b in batches] == [
        {"app_id": "1", "library": "server", "events": [{"event": "e1"}, {"event": "e2"}]},
        {"app_id": "1", "library": "other", "events": [{"event": "e3"}]},
    ]


def test_a_bulk_body_contributes_all_its_items() -> None:
    req = HeapRequest(US, "track", {"app_id": "1", "events": [{"event": "a"}, {"event": "b"}]})
    assert items_of(req) == ({"app_id": "1"}, [{"event": "a"}, {"event": "b"}])
    [b] = batch([(4, req)], max_items=1000)
    assert b.owners() == [4]
    left, right = b.split()
    assert [i.body for i in left.items] == [{"event": "a"}]
    assert [i.body for i in right.items] == [{"event": "b"}]


@pytest.mark.parametrize(("n", "parts"), [(10, 3), (7, 7), (3, 5), (1000, 160), (2, 2)])
def test_split_into_parts_keeps_every_item_in_order(n: int, parts: int) -> None:
    req = HeapRequest(US, "track", {"app_id": "1", "events": [{"n": i} for i in range(n)]})
    [b] = batch([(1, req)], max_items=1000)
    pieces = b.split(parts)
    assert len(pieces) == min(n, parts)
    assert [i.body["n"] for p in pieces for i in p.items] == list(range(n))
    sizes = [len(p.items) for p in pieces]
    assert max(sizes) - min(sizes) <= 1


def test_split_parts_halves_until_refusals_are_known_then_follows_their_share() -> None:
    assert split_parts(1000, None) == 2
    assert split_parts(2, 0.5) == 2
    assert split_parts(1, None) == 1
    assert split_parts(1000, 0.0) == 2  # refused requests held no refused item: halves
    assert split_parts(1000, 0.001) == 4
    assert split_parts(1000, 0.04) == 160  # ~4 parts per refused item expected
    assert split_parts(500, 0.04) == 80
    assert split_parts(10, 0.9) == 10  # at most one part per item


def test_idempotency_key_added_only_where_missing() -> None:
    r = with_idempotency_key(track("1", "u", 0), "msg-1")
    assert r.body["idempotency_key"] == "msg-1"
    kept = HeapRequest(
        US, "track", {"app_id": "1", "event": "e", "identity": "u", "idempotency_key": "theirs"}
    )
    assert with_idempotency_key(kept, "msg-1") is kept
    users = HeapRequest(US, "add_user_properties", {"app_id": "1", "identity": "u"})
    assert with_idempotency_key(users, "msg-1") is users
    bulk = HeapRequest(
        US,
        "integrations/track",
        {"app_id": "1", "events": [{"event": "a"}, {"event": "b", "idempotency_key": "k"}]},
    )
    assert [e["idempotency_key"] for e in with_idempotency_key(bulk, "m").body["events"]] == [
        "m",
        "k",
    ]
