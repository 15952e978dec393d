"""Audience keys, membership files and the updates' shape per profile (pure parts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heaprelay.audiences import (
    AudienceKeyError,
    MembershipFileError,
    audience_key,
    check_key,
    message_id,
    message_prefix,
    read_members,
)
from heaprelay.audiences.sync import update_messages
from heaprelay.heap.models import HeapRequest
from heaprelay.transform import DestinationSettings, transform


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Order Completed Last 30days", "order_completed_last_30days"),
        ("Dormant Shoppers", "dormant_shoppers"),
        ("high_value_users", "high_value_users"),
        ("  --Big  Spenders!!  ", "big_spenders"),
        ("Amazon Ads Audience 6 May 24", "amazon_ads_audience_6_may_24"),
        ("firstTimeShopper", "firsttimeshopper"),
        ("Käufer (DE)", "k_ufer_de"),
        ("a__b", "a_b"),
    ],
)
def test_audience_key_is_segments_snake_case(name: str, key: str) -> None:
    assert audience_key(name) == key


@pytest.mark.parametrize("name", ["", "!!!", "___", "   ", "日本"])
def test_a_name_without_letters_or_digits_has_no_key(name: str) -> None:
    with pytest.raises(AudienceKeyError, match="give --key"):
        audience_key(name)


def test_given_keys_are_checked() -> None:
    assert check_key("Big Spenders") == "Big Spenders"
    for bad, why in [("", "empty"), (" x", "white space"), ("k" * 256, "256 characters")]:
        with pytest.raises(AudienceKeyError, match=why):
            check_key(bad)


def test_message_ids_are_deterministic_short_and_per_sync() -> None:
    a = message_id("vip", 3, "u" * 255)
    assert a == message_id("vip", 3, "u" * 255)
    assert a.startswith(message_prefix("vip", 3))
    assert len(a) < 100
    assert len({a, message_id("vip", 4, "u" * 255), message_id("vip2", 3, "u" * 255)}) == 3


def test_csv_members_and_traits(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_bytes(
        b'\xef\xbb\xbfemail, user_id ,plan\r\nx@e.com,u1,pro\r\n,u2,\r\n\r\n"a\nb",u3,free\r\n'
    )
    assert read_members(f) == {
        "u1": {"email": "x@e.com", "plan": "pro"},
        "u2": {},
        "u3": {"email": "a\nb", "plan": "free"},
    }


def test_ndjson_members_and_format_by_content(tmp_path: Path) -> None:
    f = tmp_path / "members.txt"
    f.write_text('{"user_id": "u1", "ltv": 12.5, "x": null}\n\n{"user_id": 42}\n')
    assert read_members(f) == {"u1": {"ltv": 12.5}, "42": {}}
    g = tmp_path / "members.data"
    g.write_text("user_id\nu1\n")
    assert read_members(g) == {"u1": {}}
    with pytest.raises(MembershipFileError, match=":1: no user_id column"):
        read_members(f, "csv")  # --format wins over the content


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        ("a.csv", b"id\nu1\n", "a.csv:1: no user_id column"),
        ("a.csv", b"", "a.csv: empty file"),
        ("a.csv", b"user_id\nu1\n\n \nx\n\xff\n", "a.csv:6: not valid UTF-8"),
        ("a.csv", b"user_id,p\nu1,a\n,b\n", "a.csv:3: user_id is empty"),
        ("a.csv", b'user_id\nu1\n"u2\n', "a.csv:"),
        ("a.csv", b"user_id\nu1,extra\n", "a.csv:2: 2 cells"),
        ("a.csv", b"user_id\n" + b"x" * 256 + b"\n", "a.csv:2: user_id is 256 characters"),
        ("a.ndjson", b'{"user_id": "u1"}\n{"user_id": "u2"\n', "a.ndjson:2: not JSON"),
        ("a.ndjson", b'{"user_id": "u1"}\n[1]\n', "a.ndjson:2: must be a JSON object"),
        ("a.ndjson", b'{"user_id": true}\n', "a.ndjson:1: user_id must be a string"),
        ("a.ndjson", b'{"user_id": " "}\n', "a.ndjson:1: user_id is empty"),
        ("a.ndjson", b'{"id": "u1"}\n', "a.ndjson:1: no user_id"),
    ],
)
def test_bad_files_are_refused_with_the_line(
    tmp_path: Path, name: str, data: bytes, where: str
) -> None:
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(MembershipFileError) as e:
        read_members(f)
    assert str(e.value).startswith(str(tmp_path / where.split(":")[0]))
    assert where.partition(":")[2] in str(e.value)


def _properties(profile: str, message: dict[str, Any]) -> Any:
    settings = DestinationSettings(app_id="1", profile=profile)
    result = transform(message, settings)
    assert isinstance(result, list), result
    [request] = result
    assert isinstance(request, HeapRequest)
    assert "user_properties" in request.endpoint
    return request.body["properties"]


def test_updates_reach_each_profile_as_its_booleans() -> None:
    enter, leave = update_messages("vip", 1, ["u1"], ["u2"], {"u1": {"plan": "pro"}})
    assert enter["traits"] == {"plan": "pro", "vip": True}
    assert leave["traits"] == {"vip": False}
    assert _properties("heap", enter) == {"plan": "pro", "vip": "true"}
    assert _properties("heap", leave) == {"vip": "false"}
    assert _properties("segment-actions", leave) == {"vip": "false"}
    assert _properties("segment", enter)["vip"] is True
    assert _properties("segment", leave)["vip"] is False
    assert _properties("rudderstack", leave) == {"vip": False}
