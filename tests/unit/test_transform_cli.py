"""``heaprelay transform``: the I/O contract of issue 2 item 6 (input forms, stdout/stderr
lines in input order, exit codes), run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TRACK = {"type": "track", "userId": "u1", "event": "E", "messageId": "m1"}
IDENTIFY = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "messageId": "m2"}
PAGE = {"type": "page", "userId": "u1", "messageId": "m3"}


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heaprelay", "transform", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines()]


def ndjson(*events: Any) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def test_ndjson_in_requests_and_skips_out_in_input_order() -> None:
    p = run("--app-id", "42", stdin=ndjson(TRACK, PAGE, IDENTIFY))
    assert p.returncode == 0, p.stderr
    out = lines(p.stdout)
    assert [o["url"] for o in out] == [
        "https://heapanalytics.com/api/track",
        "https://heapanalytics.com/api/add_user_properties",
    ]
    assert all(set(o) == {"method", "url", "body"} and o["method"] == "POST" for o in out)
    assert out[0]["body"]["idempotency_key"] == "m1"
    assert out[1]["body"] == {"app_id": "42", "identity": "u1", "properties": {"plan": "pro"}}
    (err,) = lines(p.stderr)
    assert err["index"] == 1
    assert err["messageId"] == "m3"
    assert err["reason"] == "unsupported_type"
    assert err["detail"]


def test_json_array_file_and_batch_object(tmp_path: Path) -> None:
    f = tmp_path / "events.json"
    f.write_text(json.dumps([TRACK, IDENTIFY]))
    p = run("--app-id", "42", str(f))
    assert p.returncode == 0, p.stderr
    assert len(lines(p.stdout)) == 2
    batch = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "E", "context": {"library": {"v": 2}}},
            {"type": "track", "userId": "u2", "event": "F"},
        ],
        "context": {"library": {"name": "analytics-python", "v": 1}},
    }
    p = run("--profile", "segment", "--app-id", "42", stdin=json.dumps(batch, indent=2))
    assert p.returncode == 0, p.stderr
    out = lines(p.stdout)
    # batch-level context merged into every item (the item's own values win)
    assert [o["body"]["properties"]["segment_library"] for o in out] == [
        "analytics-python",
        "analytics-python",
    ]
    assert [o["body"]["identity"] for o in out] == ["u1", "u2"]


def test_region_base_url_and_profile() -> None:
    p = run("--app-id", "42", "--region", "eu", stdin=ndjson(TRACK))
    assert lines(p.stdout)[0]["url"] == "https://c.eu.heap-api.com/api/track"
    p = run("--app-id", "42", "--region", "EU", stdin=ndjson(TRACK))
    assert lines(p.stdout)[0]["url"] == "https://c.eu.heap-api.com/api/track"
    p = run("--app-id", "42", "--base-url", "http://127.0.0.1:8/", stdin=ndjson(TRACK))
    assert lines(p.stdout)[0]["url"] == "http://127.0.0.1:8/api/track"
    p = run("--profile", "rudderstack", "--app-id", "42", stdin=ndjson(TRACK))
    assert lines(p.stdout)[0]["body"] == {
        "identity": "u1",
        "properties": {},
        "app_id": "42",
        "event": "E",
    }


def test_options() -> None:
    anon = {"type": "track", "anonymousId": "a1", "event": "E"}
    p = run("--app-id", "42", stdin=ndjson(anon))
    assert lines(p.stderr)[0]["reason"] == "missing_identity"
    p = run("--app-id", "42", "--option", "anonymous_identity=allow", stdin=ndjson(anon))
    assert lines(p.stdout)[0]["body"]["identity"] == "a1"


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--app-id", "42"], "[1, 2", "not valid JSON"),
        (["--app-id", "42"], '{"batch": 3}', "'batch' must be an array"),
        ([], ndjson(TRACK), "app_id"),
        (["--app-id", "42", "--profile", "nope"], ndjson(TRACK), "unknown profile"),
        (["--app-id", "42", "--option", "x=1"], ndjson(TRACK), "unknown option"),
        (["--app-id", "42", "--option", "page_screen=maybe"], ndjson(TRACK), "accepted values"),
        (["--app-id", "42", "--option", "novalue"], ndjson(TRACK), "KEY=VALUE"),
        (["--app-id", "42", "--region", "mars"], ndjson(TRACK), "us, eu"),
        (["--app-id", "42", "--base-url", "ftp://x"], ndjson(TRACK), "http"),
        (["--app-id", "42", "/nonexistent/events.ndjson"], "", "cannot read"),
    ],
)
def test_unreadable_input_or_bad_settings_exit_2(args: list[str], stdin: str, message: str) -> None:
    p = run(*args, stdin=stdin)
    assert p.returncode == 2
    assert message in p.stderr
    assert p.stdout == ""


def test_a_bad_ndjson_line_is_reported_where_it_is_and_the_others_are_transformed() -> None:
    stdin = ndjson(TRACK) + "\n  {not json\n" + ndjson(IDENTIFY) + "[1,\n"
    p = run("--app-id", "42", stdin=stdin)
    assert p.returncode == 1  # some input could not be read
    assert [r["url"].rsplit("/", 1)[1] for r in lines(p.stdout)] == [
        "track",
        "add_user_properties",
    ]
    assert lines(p.stderr) == [
        {
            "index": 1,
            "messageId": None,
            "reason": "invalid_json",
            "detail": "line 3, column 4: not JSON: unexpected character, expected a string key",
        },
        {
            "index": 3,
            "messageId": None,
            "reason": "invalid_json",
            "detail": "line 5, column 4: not JSON: unexpected end of data",
        },
    ]


def test_not_sent_events_still_exit_0() -> None:
    p = run("--app-id", "42", stdin=ndjson(PAGE, 5, {"type": "alias"}))
    assert p.returncode == 0
    errs = lines(p.stderr)
    assert [e["index"] for e in errs] == [0, 1, 2]
    assert errs[1]["messageId"] is None
    assert errs[1]["reason"] == "invalid_field"
    assert p.stdout == ""


def test_empty_input_and_big_integers() -> None:
    assert run("--app-id", "42", stdin="\n \n").returncode == 0
    big = '{"type":"track","userId":"u","event":"E","properties":{"n":123456789012345678901234}}'
    p = run("--profile", "rudderstack", "--app-id", "42", stdin=big)
    assert p.returncode == 0, p.stderr
    # held as a double, as the peers' JavaScript holds every number
    assert lines(p.stdout)[0]["body"]["properties"]["n"] == float(123456789012345678901234)
    lone = '{"type":"track","userId":"u","event":"E","properties":{"s":"\\ud800"}}'
    p = run("--app-id", "42", stdin=lone)
    assert p.returncode == 0, p.stderr
    assert lines(p.stdout)[0]["body"]["properties"]["s"] == "\ud800"


def test_output_is_deterministic() -> None:
    events = ndjson(TRACK, IDENTIFY, {**TRACK, "properties": {"b": 1, "a": [1.5, {"z": 1}]}})
    assert run("--app-id", "42", stdin=events).stdout == run("--app-id", "42", stdin=events).stdout


def test_help_lists_profiles_and_options() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "heaprelay", "transform", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for word in ("heap", "rudderstack", "segment", "anonymous_identity=deny|allow", "--option"):
        assert word in p.stdout
    assert "id_property=id|_id|omit" in p.stdout
    # --base-url only changes the URLs printed: the dry run sends nothing
    assert "nothing is sent" in " ".join(p.stdout.split())
    assert "Send to" not in p.stdout
