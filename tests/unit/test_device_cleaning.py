"""The device-mode cleaning vectors (``tests/data/device/cleaning.json``), in Python: the calls
:func:`heaprelay.transform.browser.browser_calls` makes on ``window.heap``. The same file runs
against the JavaScript integration in Chromium (``tests/acceptance/test_device_mode.py``).

A vector's message is what a page hands the SDK, in JSON with two markers for what JSON
cannot hold: ``{"$date": ISO}`` (a ``Date``: the SDK sends its ISO string) and
``{"$undefined": true}`` (the key is not sent). :func:`as_sent` turns it into what the relay
receives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from heaprelay.transform import DestinationSettings, transform
from heaprelay.transform._properties import classic_clean, segment_clean
from heaprelay.transform.browser import DEVICE_PROFILES, WEB_MAX_NAME_CHARS, browser_calls

VECTORS_FILE = Path(__file__).parents[1] / "data" / "device" / "cleaning.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))


def as_sent(value: Any) -> Any:
    """The message as JSON carries it: dates as their ISO string, undefined keys gone."""
    if isinstance(value, dict):
        if "$date" in value:
            return value["$date"]
        return {k: as_sent(v) for k, v in value.items() if v != {"$undefined": True}}
    if isinstance(value, list):
        return [None if v == {"$undefined": True} else as_sent(v) for v in value]
    return value


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_in_python(vector: dict[str, Any]) -> None:
    assert browser_calls(as_sent(vector["message"]), vector["profile"]) == vector["calls"]


def test_vectors_cover_both_profiles_and_the_classic_test_cases() -> None:
    assert {v["profile"] for v in VECTORS} == set(DEVICE_PROFILES)
    classic = [v for v in VECTORS if v["source"].startswith("segmentio/analytics.js-integrations")]
    assert len(classic) == 10  # every case of reference/device-mode.md §1.5
    assert len({v["name"] for v in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v["profile"] == "heap"], ids=lambda v: v["name"]
)
def test_heap_cleaning_is_the_server_side_profiles(vector: dict[str, Any]) -> None:
    """Profile heap in the browser cleans as the server-side profile heap does: the same
    properties (the web SDK's shorter limit on names aside) and the same identity."""
    message = as_sent(vector["message"])
    calls = {call[0]: call[1:] for call in browser_calls(message, "heap")}
    kind = message["type"]
    if kind == "track":
        message = {**message, "userId": "someone"}  # the server needs an identity
    result = transform(message, DestinationSettings(app_id="1", profile="heap"))
    if isinstance(result, list):
        body = result[-1].body
        server = {n[:WEB_MAX_NAME_CHARS]: v for n, v in body["properties"].items()}
        if kind == "identify":
            assert calls["identify"] == [body["identity"]]
            assert calls["addUserProperties"] == [server]
        else:
            assert calls["track"][1] == server
            assert calls["track"][0] == body["event"][:255]
    else:  # not sent server-side: nothing to identify or track with in the browser either
        assert "track" not in calls
        if kind == "identify":
            assert "identify" not in calls or result.reason == "no_properties"


def test_classic_clean_differs_from_cloud_mode_only_where_the_peers_do() -> None:
    """Segment's classic browser integration keeps nested nulls and empty objects, and adds
    no segment_library; its cloud mode drops the nulls (reference/device-mode.md §1.5)."""
    props = {"a": {"b": None, "c": {}, "d": 1}, "e": [1, {"f": None}], "g": None}
    assert classic_clean(props) == {"a.b": None, "a.c": {}, "a.d": 1, "e": '[1,{"f":null}]'}
    assert segment_clean(props, "") == {"segment_library": "", "a.d": 1, "e": '[1,{"f":null}]'}


def test_other_profiles_have_no_browser_integration() -> None:
    with pytest.raises(ValueError, match="rudderstack"):
        browser_calls({"type": "track", "event": "e"}, "rudderstack")
