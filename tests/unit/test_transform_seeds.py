"""The seeds' own examples, through ``heaprelay transform`` (a real subprocess): what the
seed documents (copies in tests/data/seeds) say Heap receives is what the command prints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SEEDS = Path(__file__).parents[1] / "data" / "seeds"
SEGMENT_DOC = SEEDS / "001_de2ae91da5cb6754.txt"  # Segment's Heap destination page
HEAP_DOC = SEEDS / "002_e85b3f9e26234a5a.txt"  # Heap's "Segment Installation" page
RUDDER_DOC = SEEDS / "003_4d5cf41e7e4b2f79.txt"  # RudderStack's Heap.io page


def transform(profile: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per event: its request body (plus ``url``), or ``{"skip": reason}``."""
    p = subprocess.run(
        [sys.executable, "-m", "heaprelay", "transform", "--profile", profile, "--app-id", "7"],
        input="".join(json.dumps(e) + "\n" for e in events),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    skipped = {(r := json.loads(line))["index"]: r["reason"] for line in p.stderr.splitlines()}
    sent = iter(json.loads(line) for line in p.stdout.splitlines())
    out: list[dict[str, Any]] = []
    for i in range(len(events)):
        if i in skipped:
            out.append({"skip": skipped[i]})
        else:
            request = next(sent)
            out.append({**request["body"], "url": request["url"]})
    assert next(sent, None) is None
    return out


def documented_flattening() -> dict[str, Any]:
    """The "properties would be sent as" block of Segment's page, as JSON values (the page
    quotes loosely: ``'[1,2,3]'``, ``"[{'A': 'Jello'},{'B': 'Peanut'}]"``)."""
    text = SEGMENT_DOC.read_text(encoding="utf-8")
    block = text.split("The properties would be sent as:", 1)[1].split("```javascript", 1)[1]
    block = block.split("```", 1)[0]
    found: dict[str, Any] = {}
    for line in block.strip().splitlines():
        key, _, value = line.partition(": ")
        literal = value.strip()[1:-1]  # the outer quotes
        try:
            found[key] = json.loads(literal.replace("'", '"'))
        except json.JSONDecodeError:
            found[key] = literal
    return found


SIGNED_UP = {  # analytics.track('Signed Up', {foo: {bar: {...}}}) of the same page
    "type": "track",
    "userId": "u1",
    "event": "Signed Up",
    "properties": {
        "foo": {
            "bar": {
                "cheese": "american",
                "prop": [1, 2, 3],
                "products": [{"A": "Jello"}, {"B": "Peanut"}],
            }
        }
    },
}


@pytest.mark.parametrize("profile", ["segment", "heap"])
def test_nested_objects_and_arrays_are_flattened_and_stringified(profile: str) -> None:
    expected = documented_flattening()
    assert set(expected) == {"foo.bar.cheese", "foo.bar.prop", "foo.bar.products"}
    (body,) = transform(profile, [SIGNED_UP])
    props = body["properties"]
    for key, value in expected.items():
        sent = props[key]
        assert (json.loads(sent) if isinstance(value, list) else sent) == value
    assert props["foo.bar.prop"] == "[1,2,3]"  # compact, as JSON.stringify
    assert props["foo.bar.products"] == '[{"A":"Jello"},{"B":"Peanut"}]'


@pytest.mark.parametrize("profile", ["segment", "heap"])
def test_dates_are_iso_strings_and_anonymous_server_events_are_not_sent(profile: str) -> None:
    assert "convert it into an ISO string" in SEGMENT_DOC.read_text(encoding="utf-8")
    when = "2016-01-01T00:00:00.000Z"
    identify = {"type": "identify", "userId": "u1", "traits": {"since": when}}
    anonymous = {"type": "track", "anonymousId": "a1", "event": "E"}
    sent, skipped = transform(profile, [identify, anonymous])
    assert sent["properties"]["since"] == when
    assert skipped == {"skip": "missing_identity"}


@pytest.mark.parametrize("profile", ["segment", "heap", "rudderstack"])
def test_only_identify_and_track(profile: str) -> None:
    assert "We do not currently support page, alias, or group calls" in HEAP_DOC.read_text()
    events = [
        {"type": t, "userId": "u1", "event": "E", "traits": {"a": 1}}
        for t in ("identify", "track", "page", "alias", "group", "screen")
    ]
    results = transform(profile, events)
    assert [r["url"].rsplit("/", 1)[1] for r in results[:2]] == ["add_user_properties", "track"]
    assert all(r == {"skip": "unsupported_type"} for r in results[2:])


def test_segment_sends_email_as_underscore_email() -> None:
    assert "will start with an underscore, _email" in HEAP_DOC.read_text(encoding="utf-8")
    (body,) = transform(
        "segment", [{"type": "identify", "userId": "u1", "traits": {"email": "a@b"}}]
    )
    assert body["properties"]["_email"] == "a@b"
    assert "email" not in body["properties"]
    # heaprelay's own profile uses the key Heap maps to its built-in Email property
    (body,) = transform("heap", [{"type": "identify", "userId": "u1", "traits": {"email": "a@b"}}])
    assert body["properties"] == {"email": "a@b"}


def test_rudderstack_identity_mapping_and_idempotency_key() -> None:
    doc = RUDDER_DOC.read_text(encoding="utf-8")
    chain = re.search(
        r"userId\ntraits\.userId\ntraits\.id\ncontext\.traits\.userId\n"
        r"context\.traits\.id\nanonymousId",
        doc,
    )
    assert chain, "the seed's identity list changed"
    assert "properties.idempotencyKey to the top-level idempotency_key" in doc
    events = [
        {"type": "track", "event": "E", "traits": {"id": "t-id"}, "anonymousId": "an"},
        {"type": "track", "event": "E", "context": {"traits": {"userId": "c-uid"}}},
        {"type": "track", "event": "E", "anonymousId": "an"},
        {
            "type": "track",
            "event": "E",
            "userId": "u",
            "properties": {"idempotencyKey": "k", "x": 1},
        },
        {"type": "identify", "userId": "u", "context": {"traits": {"idempotencyKey": "k", "p": 2}}},
    ]
    r = transform("rudderstack", events)
    assert [x["identity"] for x in r] == ["t-id", "c-uid", "an", "u", "u"]
    assert r[3]["idempotency_key"] == "k"
    assert r[3]["properties"] == {"x": 1}
    assert r[4]["properties"] == {"p": 2}


def test_engage_audience_property() -> None:
    assert "order_completed_last_30days: true" in SEGMENT_DOC.read_text(encoding="utf-8")
    event = {"type": "identify", "userId": "u1", "traits": {"order_completed_last_30days": True}}
    (segment,) = transform("segment", [event])
    assert segment["properties"]["order_completed_last_30days"] is True
    (heap,) = transform("heap", [event])  # Heap stores strings and numbers only
    assert heap["properties"] == {"order_completed_last_30days": "true"}
