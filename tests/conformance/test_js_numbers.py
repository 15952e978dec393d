"""Conformance: numbers are sent as the peers' bytes. Every peer runs on Node.js, so a number
it sends is what ``JSON.stringify`` writes (``67.0`` from a Python SDK arrives as ``67``);
tests/data/conformance/js-numbers.json holds one case per profile and call, compared as bytes,
in process and through ``heaprelay transform``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from _vectors import assert_same_bytes, case_id, check_case, check_file_via_cli, load_cases

from heaprelay.transform import DestinationSettings, transform

CASES = load_cases("js-numbers.json")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['profile']}:{case_id(c)}")
def test_vector(case: dict[str, Any]) -> None:
    check_case(case)


def test_every_profile_has_a_case() -> None:
    profiles = {c["profile"] for c in CASES}
    assert profiles == {"rudderstack", "segment", "segment-actions", "segment-heap-cloud"}


def test_every_vector_through_the_command() -> None:
    assert check_file_via_cli(CASES) >= 4


@pytest.mark.parametrize(
    ("value", "javascript"),
    [
        (67.0, "67"),
        (-0.0, "0"),
        (1e-7, "1e-7"),
        (0.000001, "0.000001"),
        (4.2e-6, "0.0000042"),
        (1.5, "1.5"),
        (-123.25, "-123.25"),
        (9007199254740992.0, "9007199254740992"),
    ],
)
def test_heap_sends_numbers_as_javascript_writes_them(value: float, javascript: str) -> None:
    # The default profile too, within ±2^53 (a deliberate choice: the peers' bytes).
    sent = _heap_sends(value)
    assert_same_bytes(sent, {"n": value}, str(value))
    assert sent == b'{"n":' + javascript.encode() + b"}"


def test_heap_keeps_the_digits_of_numbers_beyond_2_53() -> None:
    # Integers as text (a JSON number would lose digits); a double stays the double it is.
    assert _heap_sends(12345678901234567890) == b'{"n":"12345678901234567890"}'
    assert orjson.loads(_heap_sends(1e20)) == {"n": 1e20}


def _heap_sends(value: float) -> bytes:
    message = {"type": "track", "userId": "u", "event": "E", "properties": {"n": value}}
    out = transform(message, DestinationSettings(app_id="1"))
    assert isinstance(out, list)
    return orjson.dumps(out[0].body["properties"])
