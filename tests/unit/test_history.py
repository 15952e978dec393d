"""What a stored message adds to the audiences' history (``history_of``, pure) and how one
append's identifies merge (``merged_traits``)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from heaprelay.queue.base import HistoryEvent, history_of, merged_traits, trait_matches

TS = "2026-01-02T03:04:05.678Z"
SECONDS = 1767323045.678


def of(message: dict[str, Any]) -> HistoryEvent | None:
    return history_of("web", orjson.dumps(message))


def test_a_track_with_a_user_id_is_recorded_at_its_timestamp() -> None:
    track = {"type": "track", "event": "Order Completed", "timestamp": TS, "messageId": "m1"}
    got = of(track | {"userId": " u1 "})
    assert got == HistoryEvent("web", "u1", "Order Completed", SECONDS, None, "m1")
    assert of(track | {"userId": 42}) == HistoryEvent(
        "web", "42", "Order Completed", SECONDS, None, "m1"
    )


def test_an_identify_keeps_its_scalar_traits() -> None:
    traits = {"plan": "pro", "seats": 3, "vip": True, "gone": None, "address": {"city": "X"}}
    got = of({"type": "identify", "userId": "u1", "traits": traits, "timestamp": TS})
    assert got is not None
    assert (got.event, got.ts) == ("", SECONDS)
    assert got.traits is not None
    assert orjson.loads(got.traits) == {"plan": "pro", "seats": 3, "vip": True, "gone": None}


def test_an_identify_of_a_rudderstack_sdk_has_its_traits_in_the_context() -> None:
    message = {"type": "identify", "userId": "u1", "timestamp": TS}
    got = of(message | {"traits": {}, "context": {"traits": {"plan": "pro"}}})
    assert got is not None
    assert got.traits == b'{"plan":"pro"}'
    own = of(message | {"traits": {"plan": "free"}, "context": {"traits": {"plan": "pro"}}})
    assert own is not None
    assert own.traits == b'{"plan":"free"}'


@pytest.mark.parametrize(
    "message",
    [
        {"type": "track", "anonymousId": "a1", "event": "E", "timestamp": TS},
        {"type": "track", "userId": "", "event": "E", "timestamp": TS},
        {"type": "track", "userId": True, "event": "E", "timestamp": TS},
        {"type": "track", "userId": "u1", "event": "E"},
        {"type": "track", "userId": "u1", "event": "E" * 256, "timestamp": TS},
        {"type": "page", "userId": "u1", "name": "Home", "timestamp": TS},
        {"type": "identify", "userId": "u1", "traits": {"a": {"b": 1}}, "timestamp": TS},
        {"type": "identify", "userId": "u1", "timestamp": TS},
    ],
)
def test_what_is_not_recorded(message: dict[str, Any]) -> None:
    assert of(message) is None


def test_traits_merge_in_order_and_keep_nulls_to_remove_keys() -> None:
    def identify(user: str, traits: dict[str, Any]) -> HistoryEvent:
        return HistoryEvent("web", user, "", 1.0, orjson.dumps(traits))

    events = [
        identify("u1", {"plan": "free", "seats": 1}),
        HistoryEvent("web", "u1", "Order", 1.0),
        identify("u1", {"plan": "pro", "seats": None}),
        identify("u2", {"plan": "free"}),
    ]
    assert merged_traits(events) == {
        ("web", "u1"): {"plan": "pro", "seats": None},
        ("web", "u2"): {"plan": "free"},
    }


@pytest.mark.parametrize(
    ("have", "want", "equal"),
    [
        ("pro", "pro", True),
        ("2", 2, False),
        (2, 2.0, True),
        (1, True, False),
        (True, True, True),
        (False, 0, False),
        (None, "pro", False),
    ],
)
def test_trait_values_compare_as_json(have: Any, want: Any, equal: bool) -> None:
    assert trait_matches(have, want) is equal


def test_property_values_keep_numbers_only() -> None:
    from heaprelay.queue.base import property_values, sum_event

    track = HistoryEvent("web", "u1", "Order", 5.0, None, "m1")
    payload = orjson.dumps(
        {"properties": {"revenue": 12.5, "n": 3, "flag": True, "text": "7", "none": None}}
    )
    got = property_values(track, payload, ["revenue", "n", "flag", "text", "none", "missing"])
    assert got == [
        HistoryEvent("web", "u1", sum_event("Order", "revenue"), 5.0, None, "m1", 12.5),
        HistoryEvent("web", "u1", sum_event("Order", "n"), 5.0, None, "m1", 3.0),
    ]
    assert property_values(track, orjson.dumps({"properties": [1]}), ["revenue"]) == []
    assert property_values(track, b"{", ["revenue"]) == []
