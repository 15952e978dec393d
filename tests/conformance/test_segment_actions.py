"""Conformance: profile segment-actions reproduces Segment's "Heap Cloud (Actions)" destination
on every vector of tests/data/conformance/segment-actions.json: in process (url, method,
headers, bodies in order, Skips, refused settings) and black box through ``heaprelay transform``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from _vectors import case_id, check_case, check_file_via_cli, load_cases, settings_for

from heaprelay.transform import _base


def compact(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


CASES = load_cases("segment-actions.json")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vector(case: dict[str, Any]) -> None:
    check_case(case)


@pytest.mark.parametrize("case", [c for c in CASES if c["expect"]["sent"]], ids=case_id)
def test_body_bytes_in_peer_key_order(case: dict[str, Any]) -> None:
    out = _base.transform(case["input"], settings_for(case))
    assert isinstance(out, list)
    want = case["expect"].get("requests") or [case["expect"]]
    for got, w in zip(out, want, strict=True):
        assert compact(got.body) == compact(w["body"])


def test_vectors_through_the_command() -> None:
    pytest.importorskip("heaprelay.cli.transform", reason="heaprelay transform not there yet")
    assert check_file_via_cli(CASES) >= 1
