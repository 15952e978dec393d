"""Profile ``heap``: one test per rule (SPEC §3, reference/heap-api.md)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from heaprelay.heap.models import EU_BASE_URL
from heaprelay.messages.reasons import Reason
from heaprelay.transform import (
    DestinationSettings,
    SettingsError,
    Skip,
    transform,
    validate_settings,
)

APP = "1535634150"


def heap(message: dict[str, Any], **options: str) -> Any:
    return transform(message, DestinationSettings(app_id=APP, options=options))


def body(message: dict[str, Any], **options: str) -> dict[str, Any]:
    out = heap(message, **options)
    assert not isinstance(out, Skip), out
    assert len(out) == 1
    return out[0].body


def skip(message: dict[str, Any], **options: str) -> Skip:
    out = heap(message, **options)
    assert isinstance(out, Skip), out
    return out


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u1", "event": "E", "messageId": "m1", **fields}


def identify(**fields: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u1", **fields}


# --- requests -------------------------------------------------------------------------------


def test_track_request() -> None:
    out = heap(track(properties={"a": 1}, timestamp="2026-01-02T03:04:05.678Z"))
    assert not isinstance(out, Skip)
    (request,) = out
    assert request.url == "https://heapanalytics.com/api/track"
    assert request.method == "POST"
    assert request.body == {
        "app_id": APP,
        "identity": "u1",
        "event": "E",
        "timestamp": "2026-01-02T03:04:05.678Z",
        "properties": {"a": 1},
        "idempotency_key": "m1",
    }


def test_identify_request() -> None:
    out = heap(identify(traits={"plan": "pro"}))
    assert not isinstance(out, Skip)
    assert out[0].url == "https://heapanalytics.com/api/add_user_properties"
    assert out[0].body == {"app_id": APP, "identity": "u1", "properties": {"plan": "pro"}}


def test_region_and_base_url() -> None:
    eu = transform(track(), DestinationSettings(app_id=APP, region="eu"))
    assert not isinstance(eu, Skip)
    assert eu[0].url == EU_BASE_URL + "/api/track"
    fake = transform(track(), DestinationSettings(app_id=APP, base_url="http://127.0.0.1:9/"))
    assert not isinstance(fake, Skip)
    assert fake[0].url == "http://127.0.0.1:9/api/track"


# --- types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Track", "TRACK", "tRaCk"])
def test_type_is_matched_case_insensitively(kind: str) -> None:
    assert body(track(type=kind))["event"] == "E"


@pytest.mark.parametrize("kind", ["group", "alias", "Page", "screen", "bogus"])
def test_other_types_are_unsupported(kind: str) -> None:
    assert skip(track(type=kind)).reason is Reason.UNSUPPORTED_TYPE


@pytest.mark.parametrize("kind", [None, ""])
def test_missing_type(kind: Any) -> None:
    assert skip(track(type=kind)).reason is Reason.MISSING_TYPE


def test_non_string_type_is_unsupported() -> None:
    assert skip(track(type=["track"])).reason is Reason.UNSUPPORTED_TYPE


def test_page_and_screen_as_track_events_with_the_option() -> None:
    page = {"type": "page", "userId": "u", "name": "Home", "properties": {"path": "/", "name": "x"}}
    b = body(page, page_screen="track")
    assert b["event"] == "Page viewed"
    assert b["properties"] == {"path": "/", "name": "Home"}
    screen = {"type": "screen", "userId": "u"}
    assert body(screen, page_screen="track")["event"] == "Screen viewed"
    assert skip(page, page_screen="skip").reason is Reason.UNSUPPORTED_TYPE
    assert skip({"type": "group", "userId": "u"}, page_screen="track").reason is (
        Reason.UNSUPPORTED_TYPE
    )


# --- identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "identity"),
    [
        ({"userId": "a"}, "a"),
        ({"traits": {"userId": "b", "id": "c"}}, "b"),
        ({"traits": {"id": "c"}}, "c"),
        ({"context": {"traits": {"userId": "d", "id": "e"}}}, "d"),
        ({"context": {"traits": {"id": "e"}}}, "e"),
        ({"userId": 12345}, "12345"),
        ({"userId": 1.5}, "1.5"),
        ({"userId": "null", "traits": {"id": "c"}}, "c"),  # junk falls through
    ],
)
def test_identity_chain(fields: dict[str, Any], identity: str) -> None:
    message = {"type": "track", "event": "E", "anonymousId": "anon", **fields}
    assert body(message)["identity"] == identity


def test_anonymous_id_only_when_allowed() -> None:
    message = {"type": "track", "event": "E", "anonymousId": "anon-1"}
    s = skip(message)
    assert s.reason is Reason.MISSING_IDENTITY
    assert "anonymous_identity=allow" in s.detail
    assert body(message, anonymous_identity="allow")["identity"] == "anon-1"
    assert skip(message, anonymous_identity="deny").reason is Reason.MISSING_IDENTITY
    # a real userId still wins
    assert body({**message, "userId": "u"}, anonymous_identity="allow")["identity"] == "u"


@pytest.mark.parametrize(
    "junk",
    [
        "",
        " ",
        "\t",
        "null",
        "NULL",
        " undefined ",
        "None",
        "0",
        "NaN",
        0,
        0.0,
        False,
        True,
        None,
        [],
        {},
        ["u1"],
        {"id": "u1"},
        float("nan"),
        "[object Object]",
        # padded past 16 characters: still junk once the blanks are gone
        "       null       ",
        "\t" * 20 + "undefined",
    ],
)
def test_junk_identities_are_never_sent(junk: Any) -> None:
    message = {"type": "track", "event": "E", "userId": junk, "anonymousId": junk}
    assert skip(message, anonymous_identity="allow").reason is Reason.MISSING_IDENTITY


def test_identity_over_255_characters_is_refused_not_truncated() -> None:
    assert body(track(userId="x" * 255))["identity"] == "x" * 255
    s = skip(track(userId="x" * 256))
    assert s.reason is Reason.INVALID_FIELD
    assert "255" in s.detail
    # counted in UTF-16 units: 128 emoji are 256 units
    assert skip(track(userId="😀" * 128)).reason is Reason.INVALID_FIELD


# --- event ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, "", "   ", {}, [], True])
def test_missing_event(event: Any) -> None:
    assert skip(track(event=event)).reason is Reason.MISSING_EVENT


def test_event_is_cut_to_1024_characters() -> None:
    assert body(track(event="e" * 5000))["event"] == "e" * 1024
    assert body(track(event=42))["event"] == "42"


# --- properties -----------------------------------------------------------------------------


def test_property_cleaning() -> None:
    props = {
        "foo": {"bar": {"cheese": "american", "prop": [1, 2, 3]}},
        "products": [{"A": "Jello"}, {"B": "Peanut"}],
        "none": None,
        "nested_none": {"x": None},
        "yes": True,
        "no": False,
        "n": 1.5,
        "big": 2**60,
        "when": "2026-01-02T03:04:05.000Z",
        "empty": {},
        "empty_list": [],
    }
    assert body(track(properties=props))["properties"] == {
        "foo.bar.cheese": "american",
        "foo.bar.prop": "[1,2,3]",
        "products": '[{"A":"Jello"},{"B":"Peanut"}]',
        "yes": "true",
        "no": "false",
        "n": 1.5,
        "big": str(2**60),
        "when": "2026-01-02T03:04:05.000Z",
        "empty_list": "[]",
    }


def test_long_names_and_values_are_cut_below_1024() -> None:
    props = {"k" * 2000: "v", "long": "x" * 5000, "arr": ["y" * 3000], "emoji": "😀" * 600}
    p = body(track(properties=props))["properties"]
    assert p["k" * 1023] == "v"
    assert p["long"] == "x" * 1023
    assert p["arr"] == ('["' + "y" * 3000)[:1023]
    assert p["emoji"] == "😀" * 511  # 1022 UTF-16 units; one more would be 1024


def test_properties_that_are_not_an_object() -> None:
    assert skip(track(properties=[1, 2])).reason is Reason.INVALID_FIELD
    assert body(track(properties=None))["properties"] == {}


def test_event_properties_may_be_named_id() -> None:
    assert body(track(properties={"id": 1, "Email": "a@b"}))["properties"] == {
        "id": 1,
        "Email": "a@b",
    }


def test_user_property_id_is_renamed_in_any_casing() -> None:
    p = body(identify(traits={"id": "u1", "ID": 2, "iD": 3, "_Id": 4, "Id": 5}))["properties"]
    assert p == {"_id": "u1", "_ID": 2, "_iD": 3, "_Id": 4, "__Id": 5}
    assert not any(k.lower() == "id" for k in p)


def test_email_is_sent_under_the_key_heap_maps_to_its_email_property() -> None:
    assert body(identify(traits={"Email": "a@b"}))["properties"] == {"email": "a@b"}
    assert body(identify(traits={"EMAIL": "a@b", "email": "c@d"}))["properties"] == {
        "EMAIL": "a@b",
        "email": "c@d",
    }


def test_identify_traits_from_context_when_absent() -> None:
    message = {"type": "identify", "context": {"traits": {"userId": "u9", "plan": "x"}}}
    b = body(message)
    assert b["identity"] == "u9"
    assert b["properties"] == {"userId": "u9", "plan": "x"}


def test_identify_without_anything_to_update() -> None:
    assert skip(identify()).reason is Reason.NO_PROPERTIES
    assert skip(identify(traits={"a": None})).reason is Reason.NO_PROPERTIES


# --- idempotency key ------------------------------------------------------------------------


def test_idempotency_key_from_properties_then_message_id() -> None:
    b = body(track(properties={"idempotencyKey": "k-1", "a": 1}))
    assert b["idempotency_key"] == "k-1"
    assert b["properties"] == {"a": 1}
    assert body(track(properties={"idempotencyKey": 42}))["idempotency_key"] == "42"
    assert body(track(properties={"idempotencyKey": ""}))["idempotency_key"] == "m1"
    assert body(track(properties={"idempotencyKey": True}))["idempotency_key"] == "m1"
    assert body(track())["idempotency_key"] == "m1"


def test_idempotency_key_without_message_id_is_a_stable_digest() -> None:
    message = track()
    del message["messageId"]
    key = body(message)["idempotency_key"]
    assert key.startswith("digest:")
    assert body(copy.deepcopy(message))["idempotency_key"] == key
    assert body({**message, "event": "F"})["idempotency_key"] != key


def test_long_idempotency_key_is_hashed_not_cut() -> None:
    a = body(track(properties={"idempotencyKey": "k" * 300 + "a"}))["idempotency_key"]
    b = body(track(properties={"idempotencyKey": "k" * 300 + "b"}))["idempotency_key"]
    assert a != b
    assert len(a) <= 255


def test_identify_removes_idempotency_key_from_traits() -> None:
    assert body(identify(traits={"idempotencyKey": "k", "a": 1}))["properties"] == {"a": 1}


# --- timestamp ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timestamp": "2020-01-16T18:51:59.097+05:30"}, "2020-01-16T13:21:59.097Z"),
        ({"timestamp": "2020-01-16T13:21:59Z"}, "2020-01-16T13:21:59.000Z"),
        ({"timestamp": "2020-01-16T13:21:59.123456789Z"}, "2020-01-16T13:21:59.123Z"),
        ({"timestamp": "2020-01-16T13:21:59"}, "2020-01-16T13:21:59.000Z"),
        ({"originalTimestamp": "2020-01-01T00:00:00.000Z"}, "2020-01-01T00:00:00.000Z"),
        ({"timestamp": 1579181519097}, "2020-01-16T13:31:59.097Z"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "0001-01-01T00:00:00.000Z"),
    ],
)
def test_timestamp_is_iso_utc(fields: dict[str, Any], expected: str) -> None:
    assert body(track(**fields))["timestamp"] == expected


def test_timestamp_absent_or_invalid() -> None:
    assert "timestamp" not in body(track())
    for bad in ("yesterday", "2020-13-01T00:00:00Z", True, {"t": 1}):
        assert skip(track(timestamp=bad)).reason is Reason.INVALID_TIMESTAMP


# --- settings and purity --------------------------------------------------------------------


def test_settings() -> None:
    with pytest.raises(SettingsError, match="app_id"):
        validate_settings(DestinationSettings(app_id=""))
    with pytest.raises(SettingsError, match="page_screen"):
        validate_settings(DestinationSettings(app_id=APP, options={"page_screen": "yes"}))
    with pytest.raises(SettingsError, match="anonymous_identity"):
        validate_settings(DestinationSettings(app_id=APP, options={"anon": "allow"}))
    validate_settings(DestinationSettings(app_id=APP, options={"anonymous_identity": "allow"}))
    # transform() itself never raises, even on settings that were not validated
    assert skip_app(transform(track(), DestinationSettings(app_id="")))


def skip_app(out: Any) -> bool:
    return isinstance(out, Skip) and out.reason is Reason.INVALID_APP_ID


def test_input_is_not_changed() -> None:
    message = track(properties={"idempotencyKey": "k", "a": {"b": [1]}}, traits={"id": "x"})
    before = copy.deepcopy(message)
    heap(message)
    heap(identify(traits=message["traits"]))
    assert message == before
