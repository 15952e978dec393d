"""Profiles segment-actions / segment-heap-cloud: the rules of reference/segment-actions.md that
the conformance vectors do not pin down on their own (dates, coercion, key order, settings)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from heaprelay.heap.models import EU_BASE_URL, US_BASE_URL, HeapRequest
from heaprelay.messages.reasons import Reason
from heaprelay.transform import _base
from heaprelay.transform._base import DestinationSettings, SettingsError, Skip, validate_settings
from heaprelay.transform.profiles._actions import (
    dayjs_utc,
    flat_into,
    is_date_like,
    is_defined,
    iso_string,
)

ACTIONS = "segment-actions"
CLOUD = "segment-heap-cloud"


def settings(profile: str, **kw: Any) -> DestinationSettings:
    kw.setdefault("region_setting", "US")
    return DestinationSettings(app_id="42", profile=profile, **kw)


def run(profile: str, message: dict[str, Any], **kw: Any) -> list[HeapRequest] | Skip:
    s = settings(profile, **kw)
    validate_settings(s)
    return _base.transform(message, s)


def track(**kw: Any) -> dict[str, Any]:
    return {"type": "track", "event": "E", "messageId": "m-1", "anonymousId": "a-1"} | kw


# --- dates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2024-03-05T15:50:30.123+05:30", "2024-03-05T10:20:30.123Z"),
        ("2024-03-05T10:20:30Z", "2024-03-05T10:20:30.000Z"),
        ("2024-03-05T10:20:30.123456789Z", "2024-03-05T10:20:30.123Z"),
        ("2024-03-05T10:20:30.5", "2024-03-05T10:20:30.005Z"),  # dayjs reads "5" as 5 ms
        ("2024-03-05", "2024-03-05T00:00:00.000Z"),
        ("2024/03/05 10:20", "2024-03-05T10:20:00.000Z"),
        ("2024-03-05 10:20:30+05:30", "2024-03-05T04:50:30.000Z"),
        ("2024-03-05T10:20:30.123-0800", "2024-03-05T18:20:30.123Z"),
        ("2024-02-30T00:00:00Z", "2024-03-01T00:00:00.000Z"),
        ("0099-01-01", "1999-01-01T00:00:00.000Z"),  # Date.UTC maps years 0..99 to 19xx
        ("Tue, 05 Mar 2024 10:20:30 GMT", "2024-03-05T10:20:30.000Z"),
        ("March 5, 2024 10:20 PM", "2024-03-05T22:20:00.000Z"),
        ("Mar 5", "2001-03-05T00:00:00.000Z"),  # V8's legacy default year
        ("Tue Mar 05 2024 11:20:30 GMT+0100 (CET)", "2024-03-05T10:20:30.000Z"),
        ("+012024-03-05T00:00:00Z", "+012024-03-05T00:00:00.000Z"),
    ],
)
def test_dayjs_utc_to_iso_string(text: str, iso: str) -> None:
    t = dayjs_utc(text)
    assert t is not None
    assert iso_string(t) == iso
    assert is_date_like(text)


@pytest.mark.parametrize(
    "text", ["not-a-date", "2024-13-45T99:00:00Z", "true", "", "2024-03-05T10:20:30+25:00"]
)
def test_not_date_like(text: str) -> None:
    assert not is_date_like(text)


def test_unix_time_strings_are_date_like() -> None:
    assert is_date_like("1709634030")
    assert is_date_like("1709634030123")
    assert not is_date_like("1e+21")  # beyond the Date range once multiplied by 1000


def test_timestamp_as_a_number_is_coerced_then_parsed_like_dayjs() -> None:
    # ajv coerces 1709634030 to "1709634030"; dayjs's own pattern then reads it as
    # year 1709, month 63, day 40, hour 30 (what Segment really sends).
    out = run(ACTIONS, track(timestamp=1709634030))
    assert isinstance(out, list)
    assert out[0].body["events"][0]["timestamp"] == "1714-04-10T06:00:00.000Z"
    out = run(CLOUD, track(timestamp=1709634030))
    assert isinstance(out, list)
    assert out[0].body["events"][0]["timestamp"] == "1709634030"  # heap-cloud: unchanged


# --- flat, isDefined --------------------------------------------------------------------


def test_flat_integer_like_keys_first_then_insertion_order() -> None:
    out: dict[str, Any] = {}
    flat_into(out, {"b": 1, "10": 2, "a": {"2": None, "1": [True, 1.5]}, "1": "x"})
    assert list(out) == ["1", "10", "b", "a.1.0", "a.1.1", "a.2"]
    assert out == {"1": "x", "10": "2", "b": "1", "a.1.0": "true", "a.1.1": "1.5", "a.2": "null"}


def test_flat_collision_keeps_first_position_and_last_value() -> None:
    out: dict[str, Any] = {"segment_library": "m"}
    flat_into(out, {"a.b": 1, "segment_library": "mine", "a": {"b": 2}})
    assert list(out.items()) == [("segment_library", "mine"), ("a.b", "2")]
    assert json.dumps(out, separators=(",", ":")) == '{"segment_library":"mine","a.b":"2"}'


@pytest.mark.parametrize(
    ("value", "defined"),
    [(None, False), ("", False), (0, False), ("0", False), ({}, False), (0.0, False)],
)
def test_is_defined_false(value: Any, defined: bool) -> None:
    assert is_defined(value) is defined


@pytest.mark.parametrize("value", ["00", " ", "a", 1, False, {"a": None}, []])
def test_is_defined_true(value: Any) -> None:
    assert is_defined(value)


# --- settings and options ---------------------------------------------------------------


@pytest.mark.parametrize("profile", [ACTIONS, CLOUD])
@pytest.mark.parametrize("raw", ["eu", "us", "Eu", "EUROPE", ""])
def test_region_outside_the_peer_choices_is_refused(profile: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=r"region .*accepts exactly US or EU"):
        validate_settings(settings(profile, region_setting=raw))


def test_region_absent() -> None:
    validate_settings(settings(ACTIONS, region_setting=None))  # Segment defaults to US
    with pytest.raises(SettingsError, match=r"needs the region setting.*US or EU"):
        validate_settings(settings(CLOUD, region_setting=None))


@pytest.mark.parametrize("profile", [ACTIONS, CLOUD])
def test_region_picks_the_host(profile: str) -> None:
    for raw, region, host in (("US", "us", US_BASE_URL), ("EU", "eu", EU_BASE_URL)):
        out = run(profile, track(), region=region, region_setting=raw)
        assert isinstance(out, list)
        assert out[-1].url == host + "/api/integrations/track"


@pytest.mark.parametrize("profile", [ACTIONS, CLOUD])
def test_missing_app_id_refused(profile: str) -> None:
    with pytest.raises(SettingsError, match="app_id"):
        validate_settings(DestinationSettings(app_id="", profile=profile, region_setting="US"))


@pytest.mark.parametrize(
    ("profile", "options", "message"),
    [
        (ACTIONS, {"identity": "anonymousId"}, "accepted values: userId"),
        (ACTIONS, {"nested_properties_mode": "drop"}, "accepted options: identity"),
        (CLOUD, {"nested_properties_mode": "squash"}, "accepted values: flatten, stringify, drop"),
        (CLOUD, {"identity": "userId"}, "accepted options: nested_properties_mode"),
    ],
)
def test_unknown_options_refused(profile: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        validate_settings(settings(profile, options=options))


# --- events -----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [ACTIONS, CLOUD])
@pytest.mark.parametrize(
    "field",
    [{"anonymousId": {"a": 1}}, {"event": ["a", "b"]}, {"properties": "x"}, {"messageId": {}}],
)
def test_values_ajv_cannot_coerce_are_refused(profile: str, field: dict[str, Any]) -> None:
    out = run(profile, track(**field))
    assert isinstance(out, Skip)
    assert out.reason == Reason.INVALID_FIELD
    assert next(iter(field)) in out.detail


@pytest.mark.parametrize("profile", [ACTIONS, CLOUD])
def test_one_item_arrays_and_scalars_are_coerced_to_strings(profile: str) -> None:
    out = run(profile, track(anonymousId=[7], event=True, messageId=12.5))
    assert isinstance(out, list)
    event = out[-1].body["events"][0]
    assert event["user_identifier"] == {"anonymous_id": "7"}
    assert event["event"] == "true"
    assert event["idempotency_key"] == "12.5"


@pytest.mark.parametrize("profile", [ACTIONS, CLOUD])
@pytest.mark.parametrize("kind", ["group", "alias", "Track", None, 3])
def test_unsubscribed_types(profile: str, kind: Any) -> None:
    out = run(profile, track(type=kind))
    assert isinstance(out, Skip)
    assert out.reason == Reason.NOT_SUBSCRIBED


def test_actions_identity_option_profile_update_from_context_traits() -> None:
    msg = track(userId=42, anonymousId="0", context={"traits": {"plan": {"tier": 2}}})
    out = run(ACTIONS, msg, options={"identity": "userId"})
    assert isinstance(out, list)
    profile, event = out
    # anonymousId "0" is not "defined": left out of the profile, traits make it worth sending
    assert profile.body == {"app_id": "42", "identity": "42", "properties": {"plan.tier": "2"}}
    assert profile.url == US_BASE_URL + "/api/add_user_properties"
    assert event.body["events"][0]["user_identifier"] == {"identity": "42"}
    assert dict(event.headers) == {
        "Content-Type": "application/json",
        "User-Agent": "Segment (Actions)",
    }


def test_actions_name_on_a_track_event_is_added_when_defined() -> None:
    out = run(ACTIONS, track(name=5, properties={"name": "p"}))
    assert isinstance(out, list)
    assert out[0].body["events"][0]["custom_properties"]["name"] == "5"


def test_actions_identify_without_message_id_or_traits() -> None:
    out = run(ACTIONS, {"type": "identify", "userId": "u", "anonymousId": "0"})
    assert isinstance(out, list)
    assert out[0].body == {"identity": "u", "app_id": "42", "properties": {"anonymous_id": "0"}}


def test_cloud_email_is_validated_and_goes_to_user_identifier() -> None:
    bad = run(CLOUD, track(context={"traits": {"email": "not an email"}}, userId="u"))
    assert isinstance(bad, Skip)
    assert bad.reason == Reason.INVALID_EMAIL
    ok = run(CLOUD, track(email="x@example.com", context={"traits": {"email": "y@example.com"}}))
    assert isinstance(ok, Skip)  # context.traits present, but no identity to attach them to
    assert ok.reason == Reason.MISSING_IDENTITY
    out = run(CLOUD, track(email="x@example.com", anonymousId=None))
    assert isinstance(out, list)
    assert out[0].body["events"][0]["user_identifier"] == {"email": "x@example.com"}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("flatten", {"a.b": 1.5, "a.c": 2, "t.0": True, "n": None}),
        ("stringify", {"a": '{"b":1.5,"c":2}', "t": "[true]", "n": None}),
        ("drop", {"n": None}),
    ],
)
def test_cloud_profile_properties_keep_json_types(mode: str, expected: dict[str, Any]) -> None:
    traits = {"a": {"b": 1.5, "c": 2.0}, "t": [True], "n": None}
    out = run(
        CLOUD,
        {"type": "identify", "userId": " u ", "messageId": "m", "traits": traits},
        options={"nested_properties_mode": mode},
    )
    assert isinstance(out, list)
    (req,) = out
    assert req.url == US_BASE_URL + "/api/integrations/add_user_properties"
    user = req.body["users"][0]
    assert user["user_identifier"] == {"identity": "u"}
    assert user["custom_properties"] == expected
    if mode == "flatten":
        assert type(user["custom_properties"]["a.c"]) is int  # JSON.stringify writes 2, not 2.0


def test_cloud_identify_with_only_containers_in_drop_mode_has_nothing_to_send() -> None:
    msg = {"type": "identify", "userId": "u", "messageId": "m", "traits": {"a": {"b": 1}}}
    out = run(CLOUD, msg, options={"nested_properties_mode": "drop"})
    assert isinstance(out, Skip)
    assert out.reason == Reason.NO_PROPERTIES


def test_deep_nesting_is_a_skip_not_an_exception() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = {"k": deep}
    for profile in (ACTIONS, CLOUD):
        out = run(profile, track(properties=deep))
        assert isinstance(out, Skip)
        assert out.reason == Reason.INVALID_FIELD


def test_non_ascii_digit_keys_are_ordinary_keys() -> None:
    out: dict[str, Any] = {}
    flat_into(out, {"b": 1, "¹": 2, "٣": 3, "1": 4})  # only ASCII integer-like keys go first
    assert list(out) == ["1", "b", "¹", "٣"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", CLOUD], "needs the region setting"),
        (["--profile", ACTIONS, "--region", "eu"], "accepts exactly US or EU"),
        (["--profile", CLOUD, "--region", "eu"], "accepts exactly US or EU"),
    ],
)
def test_serve_refuses_what_segment_refuses_before_starting(
    tmp_path: Any, args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from heaprelay.cli.serve import command

    base = ["--app-id", "1", "--write-key", "k", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(command, base + args)
    assert result.exit_code == 2
    assert message in result.output


def test_serve_passes_the_region_as_written() -> None:
    from pathlib import Path

    from heaprelay.cli.serve import config_from_flags

    kw: dict[str, Any] = {"app_id": "1", "write_key": "k", "host": "127.0.0.1", "port": 1}
    kw |= {"data_dir": Path("."), "base_url": None, "queue_url": None}
    s = config_from_flags(profile=CLOUD, region="EU", **kw).sources[0].destinations[0].settings
    assert (s.region, s.region_setting, s.heap_base_url) == ("eu", "EU", EU_BASE_URL)
    validate_settings(s)
    s = config_from_flags(profile="heap", region=None, **kw).sources[0].destinations[0].settings
    assert (s.region, s.region_setting) == ("us", None)
