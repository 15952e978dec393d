"""Profiles ``segment`` and ``rudderstack``: behaviour beyond the conformance vectors."""

from __future__ import annotations

from typing import Any

import pytest

from heaprelay.messages.reasons import Reason
from heaprelay.transform import DestinationSettings, Skip, transform
from heaprelay.transform._properties import TOO_DEEP, rudder_flatten


def run(profile: str, message: dict[str, Any]) -> Any:
    return transform(message, DestinationSettings(app_id="7", profile=profile))


def test_segment_timestamp_is_utc_with_milliseconds() -> None:
    out = run(
        "segment",
        {"type": "track", "userId": "u", "event": "E", "timestamp": "2020-01-16T18:51:59+05:30"},
    )
    assert not isinstance(out, Skip)
    assert out[0].body["timestamp"] == "2020-01-16T13:21:59.000Z"
    bad = run("segment", {"type": "track", "userId": "u", "event": "E", "timestamp": "never"})
    assert isinstance(bad, Skip)
    assert bad.reason is Reason.INVALID_TIMESTAMP


def test_segment_property_order_is_the_peers() -> None:
    # scalars (with _email and id appended, as the facade does), segment_library, then
    # flattened objects, then stringified top-level arrays
    out = run(
        "segment",
        {
            "type": "identify",
            "userId": "123",
            "traits": {"email": "e", "list": [1], "obj": {"a": {"b": None, "c": 1}}, "n": 2},
            "context": {"library": {"name": "lib"}},
        },
    )
    assert not isinstance(out, Skip)
    assert list(out[0].body["properties"].items()) == [
        ("n", 2),
        ("_email", "e"),
        ("id", "123"),
        ("segment_library", "lib"),
        ("obj.a.c", 1),
        ("list", "[1]"),
    ]


def test_segment_refuses_what_the_peer_refuses() -> None:
    assert run("segment", {"type": "track", "userId": "u"}).reason is Reason.MISSING_EVENT
    assert run("segment", {"type": "page", "userId": "u"}).reason is Reason.UNSUPPORTED_TYPE
    assert run("segment", {"userId": "u"}).reason is Reason.MISSING_TYPE


def test_rudder_flatten_edge_cases() -> None:
    assert rudder_flatten({}) == {}
    assert rudder_flatten(None) == {"": None}
    assert rudder_flatten("x") == {"": "x"}
    assert rudder_flatten([]) == {"": []}
    assert rudder_flatten([{"a": [[]]}]) == {"[0].a[0]": []}
    # JavaScript key order: integer-like keys first, ascending
    assert list(rudder_flatten({"b": 1, "10": 2, "2": {"x": 3}})) == ["2.x", "10", "b"]


def test_rudderstack_identity_keeps_the_peers_types() -> None:
    out = run("rudderstack", {"type": "identify", "userId": 12.5, "traits": {"a": True}})
    assert not isinstance(out, Skip)
    assert out[0].body == {"identity": 12.5, "properties": {"a": True}, "app_id": "7"}
    assert list(out[0].body) == ["identity", "properties", "app_id"]


@pytest.mark.parametrize("kind", ["track", "identify"])
@pytest.mark.parametrize(
    ("profile", "detail"),
    [
        ("heap", TOO_DEEP),
        ("rudderstack", TOO_DEEP),
        ("segment", TOO_DEEP),
        ("segment-actions", "properties nested too deeply"),
        ("segment-heap-cloud", "properties nested too deeply"),
    ],
)
def test_nesting_deeper_than_the_stack_is_skipped_not_raised(
    profile: str, detail: str, kind: str
) -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(5000):  # deeper than Python's recursion limit
        inner["a"] = {}
        inner = inner["a"]
    message = {
        "type": kind,
        "userId": "u",
        "anonymousId": "a",
        "event": "E",
        "messageId": "m",
        "properties": {"x": deep},
        "traits": {"x": deep},
    }
    region = "US" if profile.startswith("segment-") else None
    settings = DestinationSettings(app_id="7", profile=profile, region_setting=region)
    out = transform(message, settings)
    assert out == Skip(Reason.INVALID_FIELD, detail)


def _identify_properties(options: dict[str, str], traits: dict[str, Any]) -> Any:
    settings = DestinationSettings(app_id="7", profile="segment", options=options)
    out = transform({"type": "identify", "userId": "u1", "traits": traits}, settings)
    assert not isinstance(out, Skip)
    return out[0].body["properties"]


def test_segment_adds_id_as_the_peer_does_unless_told_otherwise() -> None:
    traits = {"plan": "pro", "ID": "x"}
    assert _identify_properties({}, traits) == {
        "plan": "pro",
        "ID": "x",
        "id": "u1",
        "segment_library": "",
    }
    assert _identify_properties({"id_property": "id"}, traits) == _identify_properties({}, traits)
    # Heap refuses any casing of id: renamed with "_" (as profile heap does), or left out.
    renamed = _identify_properties({"id_property": "_id"}, {**traits, "_id": "taken"})
    assert list(renamed.items()) == [
        ("plan", "pro"),
        ("_ID", "x"),
        ("_id", "taken"),
        ("__id", "u1"),
        ("segment_library", ""),
    ]
    assert _identify_properties({"id_property": "omit"}, traits) == {
        "plan": "pro",
        "segment_library": "",
    }


def test_segment_warns_about_id_until_id_property_is_chosen() -> None:
    from heaprelay.transform import settings_warnings

    (warning,) = settings_warnings(DestinationSettings(app_id="7", profile="segment"))
    assert "id_property=_id" in warning
    assert "dead-lettered" in warning
    for mode in ("id", "_id", "omit"):
        options = {"id_property": mode}
        assert settings_warnings(DestinationSettings("7", "segment", options=options)) == []
    assert settings_warnings(DestinationSettings(app_id="7", profile="heap")) == []
