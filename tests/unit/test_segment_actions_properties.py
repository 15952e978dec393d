"""Property tests: for any JSON event, segment-actions and segment-heap-cloud give a Skip with a
reason, or requests whose bodies have exactly the keys and value types of
reference/segment-actions.md for their endpoint (profile update first, then the track)."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from heaprelay.messages.reasons import Reason
from heaprelay.transform._base import DestinationSettings, Skip, transform, validate_settings
from heaprelay.transform._js import number_to_string
from heaprelay.transform.profiles._actions import (
    dayjs_utc,
    is_date_like,
    iso_string,
    leaf_string,
    utc_iso,
)

ISO = re.compile(r"([+-]\d{6}|\d{4})-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
OBJ = st.dictionaries(st.text(max_size=6), JSON, max_size=5)
# Mostly well-formed values (so that requests come out), sometimes any JSON at all.
IDS = st.sampled_from(["", "0", " ", "u-1", " u-2 ", "u-3"]) | st.integers(0, 3) | st.none()
DATES = st.sampled_from(
    ["2024-03-05T10:20:30.123Z", "2024-03-05T15:50:30+05:30", "2024-03-05", "nope", "Mar 5 2024"]
)
EMAILS = st.sampled_from(["a@example.com", "b.c@d.example", "bad", " a@example.com", ""])
TEXT = st.text(max_size=8)
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "event": TEXT,
    "name": TEXT,
    "userId": IDS,
    "timestamp": DATES,
    "email": EMAILS,
    "properties": OBJ,
    "traits": OBJ,
    "context": st.fixed_dictionaries(
        {}, optional={"traits": OBJ | st.dictionaries(st.just("email"), EMAILS)}
    ),
}
WELL_FORMED = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "page", "screen", "identify"]),
        "messageId": st.just("m-1") | TEXT,
        "anonymousId": IDS,
        "userId": IDS,
    },
    optional={k: v for k, v in GOOD.items() if k != "userId"},
)
# Any JSON in any field.
ANY = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "group", "alias"]) | JSON},
    optional={k: v | JSON for k, v in GOOD.items()}
    | {"anonymousId": IDS | JSON, "messageId": JSON},
) | st.dictionaries(st.text(max_size=5), JSON, max_size=4)
MESSAGES = WELL_FORMED | WELL_FORMED | ANY


def strings(d: Any) -> bool:
    return isinstance(d, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in d.items()
    )


def check_track_event(event: Any, heap_cloud: bool) -> None:
    required = ["event", "custom_properties", "idempotency_key", "user_identifier"]
    assert set(event) - {"timestamp"} == set(required)
    assert isinstance(event["event"], str)
    assert event["event"] != "" or heap_cloud
    # Usually the messageId; it can be "" when Segment's validation coerces a messageId of
    # [null] to the empty string after the empty-value cleaning has run (the peer sends that).
    assert isinstance(event["idempotency_key"], str)
    assert strings(event["custom_properties"])
    assert "segment_library" in event["custom_properties"]
    ident = event["user_identifier"]
    assert strings(ident)
    if heap_cloud:
        order = ["identity", "anonymous_id", "email"]
        assert list(ident) == [k for k in order if k in ident]
        assert ident
        assert all(v == v.strip() and v for v in ident.values())
        if "timestamp" in event:
            assert isinstance(event["timestamp"], str)
    else:
        assert len(ident) == 1
        assert next(iter(ident)) in ("identity", "anonymous_id")
        assert next(iter(ident.values())) not in ("", "0")
        if "timestamp" in event:
            assert ISO.fullmatch(event["timestamp"])


def run(profile: str, message: dict[str, Any], **kw: Any) -> Any:
    s = DestinationSettings(app_id="7", profile=profile, region_setting="US", **kw)
    validate_settings(s)
    out = transform(message, s)
    if isinstance(out, Skip):
        assert isinstance(out.reason, Reason)
        assert out.detail
        return out
    assert out
    for req in out:
        # JSON round trip: the bodies are plain JSON
        assert json.loads(json.dumps(req.body)) == req.body
        assert req.method == "POST"
        assert req.body["app_id"] == "7"
    return out


@settings(max_examples=300, deadline=None)
@given(MESSAGES, st.booleans())
def test_segment_actions_bodies(message: dict[str, Any], identity_option: bool) -> None:
    options = {"identity": "userId"} if identity_option else {}
    out = run("segment-actions", message, options=options)
    if isinstance(out, Skip):
        return
    *profiles, last = out
    assert len(profiles) <= 1
    for req in profiles:
        assert req.endpoint == "add_user_properties"
        assert list(req.body) == ["app_id", "identity", "properties"]
        assert isinstance(req.body["identity"], str)
        assert strings(req.body["properties"])
    if last.endpoint == "add_user_properties":  # identify: one request
        assert not profiles
        assert message["type"] == "identify"
        assert list(last.body) == ["identity", "app_id", "properties"]
        assert isinstance(last.body["identity"], str)
        assert last.body["identity"] not in ("", "0")
        assert strings(last.body["properties"])
        return
    assert last.endpoint == "integrations/track"
    assert message["type"] in ("track", "page", "screen")
    assert list(last.body) == ["app_id", "events", "library"]
    assert last.body["library"] == "server"
    (event,) = last.body["events"]
    check_track_event(event, heap_cloud=False)
    if profiles:
        assert identity_option
        assert event["user_identifier"] == {"identity": profiles[0].body["identity"]}


@settings(max_examples=300, deadline=None)
@given(MESSAGES, st.sampled_from(["flatten", "stringify", "drop"]))
def test_segment_heap_cloud_bodies(message: dict[str, Any], mode: str) -> None:
    out = run("segment-heap-cloud", message, options={"nested_properties_mode": mode})
    if isinstance(out, Skip):
        return
    *profiles, last = out
    if last.endpoint == "integrations/add_user_properties":
        assert message["type"] == "identify"
        assert not profiles
        profiles = [last]
    else:
        assert last.endpoint == "integrations/track"
        assert message["type"] in ("track", "page", "screen")
        assert list(last.body) == ["app_id", "library", "events"]
        assert last.body["library"] == "server"
        (event,) = last.body["events"]
        check_track_event(event, heap_cloud=True)
    assert len(profiles) <= 1
    for req in profiles:
        assert req.endpoint == "integrations/add_user_properties"
        assert list(req.body) == ["app_id", "library", "users"]
        (user,) = req.body["users"]
        assert list(user) == ["user_identifier", "custom_properties"]
        assert list(user["user_identifier"]) == ["identity"]
        identity = user["user_identifier"]["identity"]
        assert isinstance(identity, str)
        assert identity == identity.strip()
        assert identity
        props = user["custom_properties"]
        assert props
        assert all(v is None or isinstance(v, str | int | float | bool) for v in props.values())
        if mode != "flatten":
            assert all(not isinstance(v, dict | list) for v in props.values())


@given(st.floats(allow_nan=False, allow_infinity=False) | st.integers())
def test_leaf_string_fast_path_is_number_to_string(value: float) -> None:
    assert leaf_string(value) == number_to_string(value)


@given(
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.integers(0, 999),
)
def test_canonical_timestamp_fast_path_agrees(
    y: int, mo: int, d: int, h: int, mi: int, s: int, ms: int
) -> None:
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{ms:03d}Z"
    t = dayjs_utc(text)
    assert utc_iso(text) == (None if t is None else iso_string(t))
    assert is_date_like(text) == (t is not None)
