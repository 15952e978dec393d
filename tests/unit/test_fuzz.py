"""Fuzzing (issue 12), the short run of every ``pytest``: every profile's transform on any
message and on values nested up to 1,100 levels, and ingest's pure path (parse, check,
enrich) on any body, then every profile on what it stored. The strategies and checks are
``heaprelay.testing.fuzz``'s; ``bench/fuzz.py`` runs them for minutes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from heaprelay.messages.incoming import MAX_DEPTH, Rejection
from heaprelay.testing.fuzz import (
    DEEP,
    MESSAGES,
    check_ingest,
    check_pipeline,
    check_transform,
    ci_settings,
    destination_settings,
    encode,
    nest,
)
from heaprelay.transform import PROFILE_NAMES, DestinationSettings


@ci_settings(300)
@given(MESSAGES, destination_settings())
def test_every_profile_on_any_message(message: dict[str, Any], settings: DestinationSettings):
    event(check_transform(message, settings))


@ci_settings(150)
@given(DEEP, destination_settings(), st.sampled_from(["track", "identify", "page"]))
def test_every_profile_on_deep_values(deep: Any, settings: DestinationSettings, kind: str):
    message = {"type": kind, "userId": "u1", "event": "E", "name": "N", "messageId": "m1"}
    check_transform({**message, "properties": {"p": deep}, "traits": {"t": deep}}, settings)
    check_transform({**message, "context": {"traits": {"t": deep}}}, settings)


@ci_settings(200)
@given(
    st.lists(MESSAGES, max_size=3).map(lambda items: {"batch": items}) | MESSAGES,
    destination_settings(),
    st.integers(0, 10_000) | st.none(),
)
def test_ingest_then_every_profile_on_any_body(
    value: dict[str, Any], settings: DestinationSettings, cut: int | None
):
    body = encode(value)
    if cut is not None:
        body = body[:cut]
    event(check_pipeline(body, None if "batch" in value else "track", settings))


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize("depth", [253, 254, 255, 600, 1023, 1024, 1100])
def test_ingest_depth_limit_and_every_profile(profile: str, depth: int):
    """A message ``depth`` levels deep (itself included): stored up to MAX_DEPTH, then
    refused with nesting_too_deep; what is stored goes through every profile."""
    settings = DestinationSettings(app_id="1", profile=profile, region_setting="US")
    body = encode({"userId": "u1", "event": "E", "properties": {"p": nest(depth - 2, 1, "oa")}})
    prepared = check_ingest(body, "track")
    if depth <= MAX_DEPTH:
        assert not isinstance(prepared, Rejection)
        check_pipeline(body, "track", settings)
    else:
        assert isinstance(prepared, Rejection)
        assert prepared.code == "nesting_too_deep"
