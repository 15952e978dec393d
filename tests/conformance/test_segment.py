"""Conformance: profile ``segment`` reproduces Segment's classic Heap cloud-mode destination on
every vector of tests/data/conformance/segment.json, in process and through the command."""

from __future__ import annotations

from typing import Any

import pytest
from _vectors import case_id, check_case, check_file_via_cli, load_cases

CASES = load_cases("segment.json")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_vector(case: dict[str, Any]) -> None:
    check_case(case)


def test_every_vector_through_the_command() -> None:
    assert check_file_via_cli(CASES) >= 1
