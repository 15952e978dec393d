"""Real SDK clients, unchanged, pointed at a running heaprelay by their host option.

- segment-analytics-python 2.4.0 (the venv's; Basic auth + writeKey in the body),
- segment-analytics-python 2.3.x (writeKey only in the body; installed apart in
  ``.test-deps/segment-2.3`` by ``scripts/setup-test-env``, run with PYTHONPATH there),
- rudder-sdk-python (Basic auth only, gzip on).

Each client runs in its own process (the 2.3.x release cannot share the venv) and sends
identify, track, page and a burst that it batches; every message must be in the queue with
its fields intact.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from _python_sdks import CLIENT_SETUP

from heaprelay.config import Config, Destination, Source
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

ROOT = Path(__file__).resolve().parents[2]
SEGMENT_23 = Path(os.environ.get("SEGMENT_23_DIR", ROOT / ".test-deps" / "segment-2.3"))
KEY = "sdk-write-key"
BURST = 150

DRIVER = (
    r"""
import datetime, json, sys
sdk, host, key, tag = sys.argv[1:5]
"""
    + CLIENT_SETUP
    + r"""
when = datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
client.identify(user_id="user-1", traits={"email": "ada@example.com", "plan": "pro", "logins": 3},
                message_id=tag + "-identify")
client.track(user_id="user-1", event="Order Completed",
             properties={"revenue": 9.5, "items": [1, 2], "shipping": {"method": "air"}},
             timestamp=when, message_id=tag + "-track")
client.page(user_id="user-1", category="Docs", name="Intro", properties={"path": "/docs"},
            message_id=tag + "-page")
client.track(anonymous_id="anon-1", event="Viewed", message_id=tag + "-anon")
for i in range(int(sys.argv[5])):
    client.track(user_id="user-%d" % (i % 7), event="Burst", properties={"i": i},
                 message_id="%s-burst-%d" % (tag, i))
client.flush()
client.shutdown() if hasattr(client, "shutdown") else client.join()
print(json.dumps({"version": VERSION, "errors": errors}))
"""
)


#: (path, Authorization present, Content-Encoding) of every request the relay got.
SEEN: list[tuple[str, bool, str]] = []


def recording(app: Any) -> Any:
    """The relay app, noting how each request came (to check what the clients really send)."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            SEEN.append(
                (
                    scope["path"],
                    b"authorization" in headers,
                    headers.get(b"content-encoding", b"").decode(),
                )
            )
        await app(scope, receive, send)

    return asgi


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("sdk")
    source = Source(
        name="sdks",
        write_key=KEY,
        destinations=(Destination(id="heap", settings=DestinationSettings(app_id="1")),),
    )
    app = build_app(Config(sources=(source,), data_dir=data_dir), services=[])
    with serve_in_thread(recording(app)) as url:
        yield url, data_dir / "heaprelay.db"


def _run_client(sdk: str, url: str, tag: str, pythonpath: Path | None) -> dict[str, Any]:
    SEEN.clear()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, sdk, url, KEY, tag, str(BURST)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _stored(db: Path, tag: str) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT message_id, source, destination, payload FROM jobs WHERE message_id LIKE ?",
            (f"{tag}-%",),
        ).fetchall()
    finally:
        conn.close()
    assert all((src, dest) == ("sdks", "heap") for _, src, dest, _ in rows)
    messages = {mid: orjson.loads(payload) for mid, _, _, payload in rows}
    assert len(messages) == len(rows), "a message was stored twice"
    return messages


def _check_common(messages: dict[str, dict[str, Any]], tag: str) -> None:
    assert len(messages) == 4 + BURST
    track = messages[f"{tag}-track"]
    assert track["type"] == "track"
    assert track["userId"] == "user-1"
    assert track["event"] == "Order Completed"
    assert track["properties"] == {"revenue": 9.5, "items": [1, 2], "shipping": {"method": "air"}}
    assert track["originalTimestamp"].startswith("2024-01-02T03:04:05.678")
    assert track["context"]["library"]["name"] == "analytics-python"
    assert track["receivedAt"].endswith("Z")
    assert "writeKey" not in track
    page = messages[f"{tag}-page"]
    assert (page["type"], page["name"], page["category"]) == ("page", "Intro", "Docs")
    assert page["properties"] == {"path": "/docs"}
    anon = messages[f"{tag}-anon"]
    assert anon["anonymousId"] == "anon-1"
    assert anon["event"] == "Viewed"
    assert {messages[f"{tag}-burst-{i}"]["properties"]["i"] for i in range(BURST)} == set(
        range(BURST)
    )


def test_segment_analytics_python_current(relay: tuple[str, Path]):
    url, db = relay
    result = _run_client("segment", url, "seg24", None)
    assert result == {"version": "2.4.0", "errors": []}
    assert {(path, auth) for path, auth, _ in SEEN} == {("/v1/batch", True)}
    messages = _stored(db, "seg24")
    _check_common(messages, "seg24")
    identify = messages["seg24-identify"]
    assert identify["traits"] == {"email": "ada@example.com", "plan": "pro", "logins": 3}


@pytest.mark.skipif(
    not (SEGMENT_23 / "segment").is_dir(),
    reason=f"segment-analytics-python 2.3.x not installed in {SEGMENT_23} "
    "(run scripts/setup-test-env)",
)
def test_segment_analytics_python_2_3_sends_the_key_only_in_the_body(relay: tuple[str, Path]):
    url, db = relay
    result = _run_client("segment", url, "seg23", SEGMENT_23)
    assert result["version"].startswith("2.3.")
    assert result["errors"] == []
    assert {(path, auth) for path, auth, _ in SEEN} == {("/v1/batch", False)}
    messages = _stored(db, "seg23")
    _check_common(messages, "seg23")
    assert messages["seg23-identify"]["traits"]["email"] == "ada@example.com"


def test_rudder_sdk_python_with_gzip(relay: tuple[str, Path]):
    url, db = relay
    result = _run_client("rudder", url, "rudder", None)
    assert result["errors"] == []
    assert set(SEEN) == {("/v1/batch", True, "gzip")}
    messages = _stored(db, "rudder")
    _check_common(messages, "rudder")
    identify = messages["rudder-identify"]
    # rudder-sdk-python puts identify traits in context.traits only.
    assert identify["context"]["traits"] == {
        "email": "ada@example.com",
        "plan": "pro",
        "logins": 3,
    }
    assert identify["channel"] == "server"
    assert messages["rudder-track"]["integrations"] == {"All": True}
