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
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (2.0**60, "1152921504606847000"),
        (12345678901234567890, "12345678901234567000"),
        (10**30, "1e+30"),
        (1.5, "1.5"),
    ],
)
def test_heap_sends_numbers_as_javascript_writes_them(value: float, javascript: str) -> None:
    # The default profile too (a deliberate choice: the same bytes as the peers).
    message = {"type": "track", "userId": "u", "event": "E", "properties": {"n": value}}
    out = transform(message, DestinationSettings(app_id="1"))
    assert isinstance(out, list)
    sent = orjson.dumps(out[0].body["properties"])
    if isinstance(value, int):  # integers beyond 2^53 keep their digits, as text
        assert sent == orjson.dumps({"n": str(value)})
    else:
        assert_same_bytes(sent, {"n": value}, str(value))
        assert sent == b'{"n":' + javascript.encode() + b"}"
