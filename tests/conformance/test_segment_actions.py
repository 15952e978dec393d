"""Conformance: profile segment-actions reproduces Segment's "Heap Cloud (Actions)" destination
on every vector of tests/data/conformance/segment-actions.json (url, method, headers, body,
requests in order; refusals as Skips; refused settings as SettingsError)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from heaprelay.transform import _base
from heaprelay.transform._base import DestinationSettings, SettingsError, Skip

FILE = Path(__file__).parents[1] / "data" / "conformance" / "segment-actions.json"
CASES: list[dict[str, Any]] = json.loads(FILE.read_text())


def settings_of(case: dict[str, Any]) -> DestinationSettings:
    # The vectors' settings mirror the peer's (appId, region "US"/"EU"): the region as written
    # goes to region_setting, which the profile checks like Segment; region is its us/eu form.
    raw = case["settings"].get("region")
    region = raw.lower() if isinstance(raw, str) and raw.lower() in ("us", "eu") else "us"
    return DestinationSettings(
        app_id=case["settings"]["app_id"],
        profile=case["profile"],
        region=region,  # type: ignore[arg-type]
        options=case.get("options", {}),
        region_setting=raw,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"][:90])
def test_vector(case: dict[str, Any]) -> None:
    s = settings_of(case)
    if case.get("settings_invalid"):
        with pytest.raises(SettingsError, match="region"):
            _base.validate_settings(s)
        return
    _base.validate_settings(s)
    out = _base.transform(case["input"], s)
    expect = case["expect"]
    if not expect["sent"]:
        assert isinstance(out, Skip), out
        return
    assert not isinstance(out, Skip), out
    want = expect.get("requests") or [expect]
    got = [
        {"url": r.url, "method": r.method, "headers": dict(r.headers), "body": r.body} for r in out
    ]
    assert got == [
        {"url": w["url"], "method": w["method"], "headers": w["headers"], "body": w["body"]}
        for w in want
    ]
    # byte for byte: the compact JSON of each body, in the peer's key order
    for r, w in zip(out, want, strict=True):
        assert json.dumps(r.body, separators=(",", ":"), ensure_ascii=False) == json.dumps(
            w["body"], separators=(",", ":"), ensure_ascii=False
        )
