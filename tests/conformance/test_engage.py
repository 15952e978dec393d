"""Engage (audience / journey step / computed trait) events, profile by profile.

``tests/data/engage/examples.ndjson``: Engage's documented payload shapes
(``reference/audiences.md`` §2: identify and track forms of an audience, a journey step and a
computed trait, with the fields of the real fixtures: ``personas_`` messageIds,
``"All": false`` integrations, nanosecond ``originalTimestamp``, ``sentAt: null``) and one
audience track without a userId. ``tests/data/engage/expected.json``: what each profile sends
for each example, in the conformance-vector format (``example`` names the input by its
messageId); bodies are compared as bytes by the conformance helpers.

The peers' Heap destinations have no audience handling (``audienceConfig: null``; the
RudderStack transformer knows only identify/track), so for the peer profiles an Engage event
must give exactly the requests of the same event without ``context.personas``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _vectors import Case, case_id, check_case, check_file_via_cli, settings_for

from heaprelay.transform import PROFILE_NAMES, Skip, audience_membership, engage_update, transform

DATA = Path(__file__).parents[1] / "data" / "engage"
EXAMPLES: dict[str, dict[str, Any]] = {
    m["messageId"]: m
    for m in (
        json.loads(line)
        for line in (DATA / "examples.ndjson").read_text(encoding="utf-8").splitlines()
    )
}


def _cases() -> list[Case]:
    cases: list[Case] = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
    for case in cases:
        case["input"] = copy.deepcopy(EXAMPLES[case.pop("example")])
    return cases


CASES = _cases()
PROFILE_RUNS = sorted({(c["profile"], json.dumps(c.get("options") or {})) for c in CASES})
PEERS = [p for p in PROFILE_NAMES if p != "heap"]


def test_every_profile_and_example_has_an_expectation() -> None:
    covered = {(c["profile"], c["input"]["messageId"]) for c in CASES}
    assert covered == {(p, m) for p in PROFILE_NAMES for m in EXAMPLES}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_example(case: Case) -> None:
    check_case(case)
    want_reason = case["expect"].get("reason")
    if want_reason is not None:
        out = transform(case["input"], settings_for(case))
        assert isinstance(out, Skip)
        assert out.reason == want_reason


@pytest.mark.parametrize(("profile", "options"), PROFILE_RUNS)
def test_command(profile: str, options: str) -> None:
    """``heaprelay transform`` on the examples prints the expected requests of the profile."""
    cases = [
        c
        for c in CASES
        if c["profile"] == profile and json.dumps(c.get("options") or {}) == options
    ]
    assert check_file_via_cli(cases) == 1


def test_examples_are_recognised() -> None:
    got = {mid: engage_update(m) for mid, m in EXAMPLES.items()}
    assert all(u is not None for u in got.values()), got
    trait = got["personas_trait_track"]
    assert trait is not None
    assert (trait.computation, trait.key, trait.value, trait.form) == (
        "trait",
        "total_revenue_180_days",
        450.0,
        "track",
    )
    assert audience_membership(EXAMPLES["personas_audience_identify_exited"]) is False
    assert audience_membership(EXAMPLES["personas_audience_track_entered"]) is True
    assert audience_membership(EXAMPLES["personas_journey_track"]) is True
    assert audience_membership(EXAMPLES["personas_trait_identify"]) is None


def _without_personas(message: dict[str, Any]) -> dict[str, Any]:
    plain = copy.deepcopy(message)
    del plain["context"]["personas"]
    return plain


def _not_engage(message: dict[str, Any], how: str) -> dict[str, Any]:
    """``message`` (an Engage audience track) changed so that Segment's rule does not take it."""
    m = copy.deepcopy(message)
    personas = m["context"]["personas"]
    key = personas["computation_key"]
    if how == "no personas":
        del m["context"]["personas"]
    elif how == "empty key":
        personas["computation_key"] = ""
    elif how == "string value":
        m["properties"][key] = "true"
    elif how == "number value":
        m["properties"][key] = 1
    elif how == "other class":
        personas["computation_class"] = "journey"
    elif how == "key absent":
        del m["properties"][key]
    elif how == "type case":
        m["type"] = "Track"
    else:  # pragma: no cover
        raise AssertionError(how)
    return m


NOT_ENGAGE = [
    "no personas",
    "empty key",
    "string value",
    "number value",
    "other class",
    "key absent",
    "type case",
]


@pytest.mark.parametrize("how", NOT_ENGAGE)
def test_ordinary_events_are_not_recognised(how: str) -> None:
    m = _not_engage(EXAMPLES["personas_audience_track_entered"], how)
    assert engage_update(m) is None
    assert audience_membership(m) is None


@pytest.mark.parametrize("how", NOT_ENGAGE)
def test_heap_sends_ordinary_events_as_a_track(how: str) -> None:
    """The heap profile: anything Segment's rule does not take is an ordinary track event."""
    m = _not_engage(EXAMPLES["personas_audience_track_entered"], how)
    settings = settings_for({"profile": "heap", "settings": {"app_id": "12345"}})
    out = transform(m, settings)
    assert not isinstance(out, Skip), out
    assert [r.endpoint for r in out] == ["track"]
    assert out[0].body["event"] == "Audience Entered"


@pytest.mark.parametrize("profile", PEERS)
@pytest.mark.parametrize("message_id", sorted(EXAMPLES))
def test_peers_have_no_audience_handling(profile: str, message_id: str) -> None:
    """A peer profile sends an Engage event as it sends the same event without personas."""
    case = next(c for c in CASES if c["profile"] == profile)
    settings = settings_for(case)
    message = EXAMPLES[message_id]
    assert transform(message, settings) == transform(_without_personas(message), settings)


def test_heap_computed_trait_without_a_value() -> None:
    """A computed trait whose value is null cleans to nothing: a visible no_properties, or
    the event alone with audience_events=track."""
    m = copy.deepcopy(EXAMPLES["personas_trait_track"])
    m["properties"]["total_revenue_180_days"] = None
    base = {"profile": "heap", "settings": {"app_id": "12345"}}
    out = transform(m, settings_for(base))
    assert isinstance(out, Skip)
    assert out.reason == "no_properties"
    assert "total_revenue_180_days" in out.detail
    out = transform(m, settings_for({**base, "options": {"audience_events": "track"}}))
    assert not isinstance(out, Skip)
    assert [r.endpoint for r in out] == ["track"]


def test_heap_keeps_heap_rules_for_the_key() -> None:
    """The user property of an Engage track follows the identify rules: a key named ``id``
    is renamed, an object value flattened, a long value cut below 1024 characters."""
    m = copy.deepcopy(EXAMPLES["personas_trait_track"])
    m["context"]["personas"]["computation_key"] = "id"
    m["properties"]["id"] = "x" * 2000
    out = transform(m, settings_for({"profile": "heap", "settings": {"app_id": "12345"}}))
    assert not isinstance(out, Skip)
    (request,) = out
    assert request.endpoint == "add_user_properties"
    assert list(request.body["properties"]) == ["_id"]
    assert len(request.body["properties"]["_id"]) == 1023
    m["context"]["personas"]["computation_key"] = "favourite"
    m["properties"]["favourite"] = {"colour": "green", "size": 3}
    out = transform(m, settings_for({"profile": "heap", "settings": {"app_id": "12345"}}))
    assert not isinstance(out, Skip)
    assert out[0].body["properties"] == {"favourite.colour": "green", "favourite.size": 3}


def test_readme_example() -> None:
    """README's "Engage events" command prints the line README shows."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("#### Engage events", 1)[1].split("\n### ", 1)[0]
    command = "heaprelay transform --app-id 12345 tests/data/engage/examples.ndjson"
    assert f"```sh\n{command}\n```" in section
    shown = section.split("prints, for the audience entered", 1)[1].split("```\n", 2)[1]
    proc = subprocess.run(
        [sys.executable, "-m", "heaprelay", *command.split()[1:]],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert shown.strip() in proc.stdout.splitlines()
    assert [json.loads(line)["reason"] for line in proc.stderr.splitlines()] == ["missing_identity"]
