"""heaprelay.messages.incoming: checking, enrichment, skew correction, ordering key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heaprelay.messages.incoming import (
    PreparedRequest,
    Rejection,
    _iso,
    _parse_time,
    corrected_timestamp,
    order_key,
    parse_json,
    prepare,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
BIG = 1 << 20


def _single(
    message: dict[str, Any], route: str = "track", **kw: Any
) -> PreparedRequest | Rejection:
    return prepare(
        message,
        route_type=route,
        received_at=NOW,
        max_message_bytes=kw.pop("max_message_bytes", BIG),
        body_bytes=len(orjson.dumps(message)),
        new_id=lambda: "generated-id",
        **kw,
    )


def _batch(body: dict[str, Any], **kw: Any) -> PreparedRequest | Rejection:
    return prepare(
        body,
        route_type=None,
        received_at=NOW,
        max_message_bytes=kw.pop("max_message_bytes", BIG),
        body_bytes=len(orjson.dumps(body)),
        new_id=lambda: "generated-id",
        **kw,
    )


def _stored(result: PreparedRequest | Rejection, index: int = 0) -> dict[str, Any]:
    assert isinstance(result, PreparedRequest), result
    value: dict[str, Any] = orjson.loads(result.messages[index].payload)
    return value


def test_fills_message_id_received_at_and_type():
    msg = _stored(_single({"userId": "u1", "event": "Signed Up"}))
    assert msg["messageId"] == "generated-id"
    assert msg["type"] == "track"
    assert msg["receivedAt"] == "2024-05-01T12:00:00.000Z"
    # No client time at all: the event happened when it arrived.
    assert msg["timestamp"] == "2024-05-01T12:00:00.000Z"


def test_keeps_the_clients_message_id():
    result = _single({"userId": "u1", "event": "E", "messageId": "abc"})
    assert isinstance(result, PreparedRequest)
    assert result.messages[0].message_id == "abc"
    assert _stored(result)["messageId"] == "abc"


def test_timestamp_is_corrected_for_client_clock_skew():
    # The client's clock is 1 hour fast: it stamped the event 10 s before sending.
    msg = _stored(
        _single(
            {
                "userId": "u1",
                "event": "E",
                "timestamp": "2024-05-01T12:59:50.000Z",
                "sentAt": "2024-05-01T13:00:00.000Z",
            }
        )
    )
    assert msg["timestamp"] == "2024-05-01T11:59:50.000Z"
    assert msg["originalTimestamp"] == "2024-05-01T12:59:50.000Z"


def test_original_timestamp_is_preferred_and_offsets_and_nanoseconds_parse():
    msg = _stored(
        _single(
            {
                "anonymousId": "a1",
                "event": "E",
                "originalTimestamp": "2024-05-01T14:00:00.123456789+02:00",
                "sentAt": "2024-05-01T12:00:01.123456+00:00",
            }
        )
    )
    assert msg["timestamp"] == "2024-05-01T11:59:59.000Z"


def test_a_rudderstack_node_backfill_keeps_the_callers_timestamp():
    # @rudderstack/rudder-sdk-node: the caller's timestamp next to originalTimestamp and
    # sentAt (both the call's time); RudderStack's server keeps the timestamp as it is.
    sent = {
        "userId": "u1",
        "event": "Imported",
        "timestamp": "2024-04-01T12:30:00.000Z",
        "originalTimestamp": "2024-05-01T12:59:59.000Z",
        "sentAt": "2024-05-01T13:00:00.000Z",
        "channel": "server",
    }
    msg = _stored(_single(dict(sent)))
    assert msg["timestamp"] == "2024-04-01T12:30:00.000Z"
    assert msg["originalTimestamp"] == sent["originalTimestamp"]
    assert msg["sentAt"] == sent["sentAt"]


def test_a_kept_timestamp_needs_no_channel_when_original_timestamp_is_there():
    msg = _stored(
        _single(
            {
                "userId": "u1",
                "event": "E",
                "timestamp": "2024-04-01T14:30:00.5+02:00",
                "originalTimestamp": "2024-05-01T12:59:59.000Z",
                "sentAt": "2024-05-01T13:00:00.000Z",
            }
        )
    )
    # Rewritten with milliseconds in its own offset, as RudderStack's server does.
    assert msg["timestamp"] == "2024-04-01T14:30:00.500+02:00"


def test_rudder_sdk_python_timestamps_are_kept_without_skew_correction():
    # rudder-sdk-python sends only timestamp (microseconds, an offset) and a batch sentAt;
    # it marks its messages with channel "server". Its clock here is an hour fast.
    body = {
        "sentAt": "2024-05-01T13:00:00.000000+00:00",
        "batch": [
            {
                "type": "track",
                "userId": "u1",
                "event": "E",
                "channel": "server",
                "timestamp": "2024-04-01T12:30:00.123956+00:00",
            }
        ],
    }
    msg = _stored(_batch(body))
    assert msg["timestamp"] == "2024-04-01T12:30:00.123Z"  # truncated, as Go formats it
    assert msg["originalTimestamp"] == "2024-04-01T12:30:00.123956+00:00"


def test_segment_sdks_backfills_are_skew_corrected_and_kept_as_original_timestamp():
    # segment-analytics-python / @segment/analytics-node: only timestamp (the caller's) and
    # a batch sentAt; Segment: timestamp = receivedAt - (sentAt - originalTimestamp).
    body = {
        "sentAt": "2024-05-01T12:00:02.000Z",
        "batch": [
            {
                "type": "track",
                "userId": "u1",
                "event": "E",
                "timestamp": "2024-04-01T12:30:00.000+00:00",
            }
        ],
    }
    msg = _stored(_batch(body))
    assert msg["timestamp"] == "2024-04-01T12:29:58.000Z"
    assert msg["originalTimestamp"] == "2024-04-01T12:30:00.000+00:00"


def test_rudderstack_js_sends_only_original_timestamp_which_is_skew_corrected():
    msg = _stored(
        _single(
            {
                "anonymousId": "a1",
                "event": "E",
                "channel": "web",
                "originalTimestamp": "2024-05-01T12:59:50.000Z",
                "sentAt": "2024-05-01T13:00:00.000Z",
            }
        )
    )
    assert msg["timestamp"] == "2024-05-01T11:59:50.000Z"
    assert msg["originalTimestamp"] == "2024-05-01T12:59:50.000Z"


def test_without_sent_at_the_client_time_is_kept():
    msg = _stored(_single({"userId": "u", "event": "E", "timestamp": "2020-01-01T00:00:00Z"}))
    assert msg["timestamp"] == "2020-01-01T00:00:00.000Z"


def test_batch_sent_at_applies_to_items_and_write_key_is_dropped():
    body = {
        "writeKey": "secret",
        "sentAt": "2024-05-01T12:00:05Z",
        "batch": [
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "timestamp": "2024-05-01T12:00:00Z",
                "writeKey": "secret",
            },
        ],
    }
    msg = _stored(_batch(body))
    assert msg["timestamp"] == "2024-05-01T11:59:55.000Z"
    assert "writeKey" not in msg


def test_batch_context_and_integrations_are_merged_item_values_win():
    body = {
        "context": {"library": {"name": "lib", "version": "1"}, "ip": "1.2.3.4"},
        "integrations": {"All": True, "Heap": False},
        "batch": [
            {
                "type": "identify",
                "userId": "u",
                "context": {"library": {"version": "2"}},
                "integrations": {"Heap": True},
            },
            {"type": "identify", "userId": "v"},
        ],
    }
    first, second = _stored(_batch(body), 0), _stored(_batch(body), 1)
    assert first["context"] == {"library": {"name": "lib", "version": "2"}, "ip": "1.2.3.4"}
    assert first["integrations"] == {"All": True, "Heap": True}
    assert second["context"] == body["context"]
    assert second["integrations"] == body["integrations"]


@pytest.mark.parametrize(
    ("message", "route", "code"),
    [
        ({"event": "E"}, "track", "missing_identity"),
        ({"userId": "", "anonymousId": None, "event": "E"}, "track", "missing_identity"),
        ({"userId": "u"}, "track", "missing_event"),
        ({"userId": "u", "event": ""}, "track", "missing_event"),
        ({"userId": "u", "event": 3}, "track", "missing_event"),
        ({"userId": "u", "type": "identify"}, "track", "invalid_type"),
        ({"userId": "u"}, "group", "missing_group_id"),
        ({"userId": "u"}, "alias", "missing_previous_id"),
        ({"userId": "u", "event": "E", "timestamp": "yesterday"}, "track", "invalid_timestamp"),
        ({"userId": "u", "event": "E", "sentAt": 12345}, "track", "invalid_timestamp"),
        ({"userId": "u", "event": "E", "properties": [1]}, "track", "invalid_field"),
        ({"userId": "u", "traits": "x"}, "identify", "invalid_field"),
        ({"userId": "u", "event": "E", "messageId": "m" * 100}, "track", "invalid_field"),
    ],
)
def test_invalid_single_messages_are_rejected(message, route, code):
    result = _single(message, route)
    assert isinstance(result, Rejection)
    assert result.code == code
    assert result.status == 400
    assert result.message


def test_numeric_user_id_is_an_identity():
    result = _single({"userId": 42, "event": "E"})
    assert isinstance(result, PreparedRequest)
    assert result.messages[0].order_key == "42"


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"userId": "u"}, "missing_type"),
        ({"type": "purchase", "userId": "u"}, "invalid_type"),
        ("not an object", "invalid_message"),
    ],
)
def test_batch_with_one_bad_item_is_refused_whole(item, code):
    good = {"type": "track", "userId": "u", "event": "E"}
    result = _batch({"batch": [good, good, item]})
    assert isinstance(result, Rejection)
    assert result.code == code
    assert result.index == 2
    assert result.message.startswith("batch[2]: ")


def test_partial_mode_keeps_the_good_items_and_lists_the_bad():
    good = {"type": "track", "userId": "u", "event": "E"}
    result = _batch({"batch": [good, {"type": "track", "userId": "u"}, good]}, partial=True)
    assert isinstance(result, PreparedRequest)
    assert len(result.messages) == 2
    assert [(r.index, r.code) for r in result.rejected] == [(1, "missing_event")]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_body"),
        ({"batch": {}}, "invalid_body"),
        ({"batch": []}, "empty_batch"),
        ({"batch": [{"type": "track"}], "context": []}, "invalid_field"),
        ({"batch": [{"type": "track"}], "sentAt": "soon"}, "invalid_timestamp"),
    ],
)
def test_bad_batch_bodies(body, code):
    result = _batch(body)
    assert isinstance(result, Rejection)
    assert result.code == code


def test_message_over_the_limit_is_413_naming_the_limit():
    big = {"type": "track", "userId": "u", "event": "E", "properties": {"x": "y" * 2000}}
    small = {"type": "track", "userId": "u", "event": "E"}
    result = _batch({"batch": [small, big]}, max_message_bytes=1000)
    assert isinstance(result, Rejection)
    assert (result.status, result.code, result.index) == (413, "message_too_large", 1)
    assert "max_message_bytes" in result.message
    single = _single(big, max_message_bytes=1000)
    assert isinstance(single, Rejection)
    assert single.status == 413


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{nope", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'"text"', "invalid_body"),
    ],
)
def test_parse_json(body, code):
    result = parse_json(body)
    assert isinstance(result, Rejection)
    assert result.code == code


@pytest.mark.parametrize(
    ("message", "key"),
    [
        ({"userId": "u1", "anonymousId": "a"}, "u1"),
        ({"userId": " ", "traits": {"userId": "t1", "id": "t2"}, "anonymousId": "a"}, "t1"),
        ({"traits": {"id": 7}, "anonymousId": "a"}, "7"),
        ({"context": {"traits": {"userId": "c1"}}, "anonymousId": "a"}, "c1"),
        ({"context": {"traits": {"id": "c2"}}, "anonymousId": "a"}, "c2"),
        ({"anonymousId": "a"}, "a"),
        ({}, ""),
    ],
)
def test_order_key(message, key):
    assert order_key(message) == key


def test_corrected_timestamp_rule():
    assert corrected_timestamp(100.0, 50.0, 40.0) == 90.0
    assert corrected_timestamp(100.0, None, 40.0) == 40.0
    assert corrected_timestamp(100.0, 50.0, None) == 100.0


@given(st.floats(min_value=0, max_value=253_402_300_798, allow_nan=False))
def test_iso_times_round_trip_to_the_millisecond(seconds: float):
    text = _iso(seconds)
    assert text.endswith("Z")
    assert len(text) == 24
    back = datetime.fromisoformat(text).timestamp()
    assert abs(back - seconds) <= 0.0005 + 1e-6 * max(1.0, seconds / 1e9)


def test_prepare_enriches_the_parsed_body_in_place():
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}
    first = _stored(_batch(body))
    assert first["messageId"] == "generated-id"
    assert body["batch"][0]["receivedAt"] == first["receivedAt"]  # enriched in place


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    [
        "type",
        "userId",
        "anonymousId",
        "event",
        "messageId",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "context",
        "integrations",
        "properties",
        "traits",
        "groupId",
        "previousId",
        "writeKey",
        "batch",
    ]
)
_messages = st.dictionaries(_field_names, _json_values, max_size=8)


@given(_messages, st.sampled_from([None, "track", "identify", "alias", "group"]))
def test_any_json_gives_messages_or_a_rejection_never_an_exception(message, route):
    body = {"batch": [message, dict(message)], "context": message.get("context")}
    for candidate, route_type in ((message, route), (body, None)):
        result = prepare(
            orjson.loads(orjson.dumps(candidate)),
            route_type=route_type,
            received_at=NOW,
            max_message_bytes=BIG,
            body_bytes=100,
        )
        if isinstance(result, Rejection):
            assert result.status in (400, 413)
            assert result.code
            assert result.message
        else:
            for prepared in result.messages:
                stored = orjson.loads(prepared.payload)
                assert stored["messageId"] == prepared.message_id
                assert stored["type"] in ("identify", "track", "page", "screen", "group", "alias")


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1, 0, 0, 1), max_value=datetime(9999, 12, 31, 23, 59, 58)
    ),
    st.integers(min_value=0, max_value=999),
)
def test_canonical_times_parse_as_the_general_parser_does(moment: datetime, millis: int):
    # "YYYY-MM-DDTHH:MM:SS.mmmZ" takes a fast path (cached seconds): same value, first and
    # second time (cached), as fromisoformat gives.
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"
    expected = datetime.fromisoformat(text).timestamp()
    assert _parse_time(text) == expected
    assert _parse_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00.12xZ",
        "2024-05-01T12:00:00.1\u00b23Z",  # a superscript digit
        "2024-05-01T12:00:00.-12Z",
        "2024-13-01T12:00:00.123Z",
        "2024-05-01T12:00:60.123Z",
    ],
)
def test_near_canonical_bad_times_are_refused_after_the_good_ones_warmed_the_cache(text: str):
    assert _parse_time("2024-05-01T12:00:00.123Z") is not None
    assert _parse_time(text) is None
