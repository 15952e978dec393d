"""Conformance: profiles ``segment-actions`` and ``segment-heap-cloud`` reproduce Segment's
"Heap Cloud (Actions)" and "Heap Cloud" (2026) destinations on every vector of
tests/data/conformance/segment-actions.json and segment-heap-cloud.json: in process (url,
method, headers, bodies in order, Skips, refused settings), body bytes in the peer's key order,
and black box through ``heaprelay transform``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from _vectors import case_id, check_case, check_file_via_cli, load_cases, settings_for

from heaprelay.transform import _base

FILES = ("segment-actions.json", "segment-heap-cloud.json")
CASES = {name: load_cases(name) for name in FILES}
ALL = [(name, case) for name in FILES for case in CASES[name]]


def compact(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _id(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0].removesuffix('.json')}:{case_id(item[1])}"


@pytest.mark.parametrize("item", ALL, ids=_id)
def test_vector(item: tuple[str, dict[str, Any]]) -> None:
    check_case(item[1])


@pytest.mark.parametrize("item", [i for i in ALL if i[1]["expect"]["sent"]], ids=_id)
def test_body_bytes_in_peer_key_order(item: tuple[str, dict[str, Any]]) -> None:
    case = item[1]
    out = _base.transform(case["input"], settings_for(case))
    assert isinstance(out, list)
    want = case["expect"].get("requests") or [case["expect"]]
    for got, w in zip(out, want, strict=True):
        assert compact(got.body) == compact(w["body"])


@pytest.mark.parametrize("name", FILES)
def test_vectors_through_the_command(name: str) -> None:
    assert check_file_via_cli(CASES[name]) >= 1
