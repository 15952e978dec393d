"""Property tests: for ANY JSON event the ``heap`` profile gives a Skip with a reason, or
requests that satisfy every documented Heap limit (reference/heap-api.md); the peer profiles
never raise and never change their input; every profile is deterministic."""

from __future__ import annotations

import copy
import math
from datetime import datetime
from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from heaprelay.messages.reasons import Reason
from heaprelay.transform import DestinationSettings, Skip, transform

TEXT = st.text(max_size=8) | st.text(max_size=1400) | st.sampled_from(["😀" * 600, "é" * 1100])
KEYS = (
    st.text(max_size=6)
    | st.sampled_from(["id", "ID", "Id", "email", "Email", "idempotencyKey", "0", "a.b", ""])
    | st.text(min_size=1020, max_size=1030)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=24,
)
IDS = (
    st.sampled_from(["u-1", "", " ", "0", "null", "undefined", "None", "x" * 255, "x" * 256])
    | st.integers(-2, 2**60)
    | st.floats()
    | st.text(max_size=300)
    | JSON
)
TIMES = (
    st.sampled_from(
        ["2026-01-02T03:04:05.678Z", "2026-01-02T03:04:05+05:30", "2026-01-02", "nope", ""]
    )
    | st.integers(-(10**15), 10**15)
    | JSON
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "userId": IDS,
    "anonymousId": IDS,
    "event": TEXT | JSON,
    "name": TEXT,
    "messageId": TEXT | JSON,
    "timestamp": TIMES,
    "originalTimestamp": TIMES,
    "properties": st.dictionaries(KEYS, JSON, max_size=6) | JSON,
    "traits": st.dictionaries(KEYS, JSON, max_size=6) | st.fixed_dictionaries({"id": IDS}),
    "context": st.fixed_dictionaries(
        {}, optional={"traits": st.dictionaries(KEYS, JSON, max_size=4), "library": JSON}
    )
    | JSON,
}
GOOD_IDS = st.sampled_from(["u-1", "x" * 255, "😀" * 127]) | st.text(min_size=1, max_size=20) | IDS
GOOD_TIMES = st.datetimes().map(lambda d: d.isoformat() + "Z") | TIMES
# Mostly events that should go out (so that the limits are really exercised), then any JSON.
WELL_FORMED = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "identify", "page", "screen"]),
        "userId": GOOD_IDS,
        "event": st.text(min_size=1, max_size=30) | TEXT,
        "messageId": st.text(min_size=1, max_size=40),
    },
    optional={
        "timestamp": GOOD_TIMES,
        "properties": st.dictionaries(KEYS, JSON, max_size=8),
        "traits": st.dictionaries(KEYS, JSON, min_size=1, max_size=8),
        "context": st.fixed_dictionaries({"traits": st.dictionaries(KEYS, JSON, max_size=4)}),
    },
)
ANY = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "screen", "Track"]) | JSON},
    optional=FIELDS,
) | st.dictionaries(st.text(max_size=6), JSON, max_size=5)
MESSAGES = WELL_FORMED | WELL_FORMED | ANY
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "anonymous_identity": st.sampled_from(["deny", "allow"]),
        "page_screen": st.sampled_from(["skip", "track"]),
    },
)
JUNK = {"", "null", "undefined", "none", "nan", "infinity", "-infinity", "0", "[object object]"}


def units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def check_value(key: Any, value: Any) -> None:
    assert isinstance(key, str)
    assert units(key) < 1024, "property name of 1024 characters or more"
    if isinstance(value, str):
        assert units(value) < 1024, f"{key[:20]}: value of 1024 characters or more"
    else:
        assert type(value) in (int, float), f"{key[:20]}: {type(value).__name__} value"
        assert math.isfinite(value)
        if type(value) is int:  # beyond 2^53 a JSON number loses digits in Heap's parsers
            assert abs(value) <= 2**53


def check_identity(identity: Any) -> None:
    assert isinstance(identity, str)
    assert 0 < units(identity) <= 255
    assert identity.strip().casefold() not in JUNK


@settings(max_examples=300, deadline=None)
@given(MESSAGES, OPTIONS)
def test_heap_profile_respects_every_heap_limit(message: dict[str, Any], options: Any) -> None:
    s = DestinationSettings(app_id="1535634150", options=options)
    before = copy.deepcopy(message)
    out = transform(message, s)
    assert message == before, "the input was changed"
    event(out.reason if isinstance(out, Skip) else out[0].endpoint)
    if isinstance(out, Skip):
        assert isinstance(out.reason, Reason)
        assert out.detail
        return
    assert len(out) == 1
    (request,) = out
    b = request.body
    orjson.dumps(b)  # plain JSON, nothing exotic
    assert b["app_id"] == "1535634150"
    check_identity(b["identity"])
    assert isinstance(b["properties"], dict)
    for key, value in b["properties"].items():
        check_value(key, value)
    if request.endpoint == "add_user_properties":
        assert set(b) == {"app_id", "identity", "properties"}
        assert b["properties"], "an empty user property update"
        assert not any(k.lower() == "id" for k in b["properties"])
        return
    assert request.endpoint == "track"
    assert set(b) - {"timestamp"} == {
        "app_id",
        "identity",
        "event",
        "properties",
        "idempotency_key",
    }
    assert isinstance(b["event"], str)
    assert b["event"].strip()
    assert units(b["event"]) <= 1024
    assert isinstance(b["idempotency_key"], str)
    assert 0 < len(b["idempotency_key"]) <= 255
    if "timestamp" in b:
        ts = b["timestamp"]
        assert ts.endswith("Z")
        assert len(ts) == 24
        datetime.fromisoformat(ts)


@settings(max_examples=150, deadline=None)
@given(MESSAGES, st.sampled_from(["heap", "rudderstack", "segment"]))
def test_profiles_never_raise_and_are_deterministic(message: dict[str, Any], profile: str) -> None:
    s = DestinationSettings(app_id="1", profile=profile)
    before = copy.deepcopy(message)
    first = transform(message, s)
    assert message == before
    # Compared as what goes on the wire: bodies may hold orjson.Fragments (numbers written
    # as the peer's bytes), which compare by identity.
    assert wire(transform(copy.deepcopy(message), s)) == wire(first)
    if isinstance(first, Skip):
        assert isinstance(first.reason, Reason)
    else:
        assert first
        for request in first:
            assert isinstance(request.body, dict)


def wire(result: Any) -> Any:
    if isinstance(result, Skip):
        return result
    return [(r.base_url, r.endpoint, r.method, orjson.dumps(r.body)) for r in result]


def nested(depth: int, kind: type) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if kind is dict else [value]
    return value


@pytest.mark.parametrize("profile", ["heap", "rudderstack", "segment"])
def test_deep_nesting_is_a_reason_not_an_exception(profile: str) -> None:
    s = DestinationSettings(app_id="1", profile=profile)
    message = {"type": "track", "userId": "u", "event": "E", "messageId": "m"}
    ok = transform({**message, "properties": {"d": nested(100, dict), "l": nested(100, list)}}, s)
    assert not isinstance(ok, Skip)
    for deep in (nested(5000, dict), nested(5000, list)):
        out = transform({**message, "properties": {"x": deep}}, s)
        assert isinstance(out, Skip)
        assert out.reason is Reason.INVALID_FIELD
