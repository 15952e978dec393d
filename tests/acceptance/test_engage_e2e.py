"""End to end: Engage's example events (``tests/data/engage/examples.ndjson``), sent by the real
segment-analytics-python client with their ``context.personas``, through a real
``heaprelay serve`` process (ingest + SQLite queue + router) to the fake Heap, reach Heap as
user properties (``GET /_fake/users``).

The examples hold, in order: an audience entered then exited by ``u123`` (identify form), an
audience entered then exited by ``u456`` (track form), a journey step entered by ``u789``
(both forms), a computed trait of ``u123`` (both forms), and an audience track without a
userId, which the ``heap`` profile does not send (``missing_identity``)."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics.client import Client

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import free_port, run_process, serve_in_thread, wait_until

KEY = "engage-write-key"
APP = "424242"
EXAMPLES = Path(__file__).parents[1] / "data" / "engage" / "examples.ndjson"

#: What Heap holds once every example is delivered (the seeds' user properties: the audience
#: key with "true"/"false", the computed trait with its value).
USERS: dict[str, dict[str, Any]] = {
    "u123": {
        "order_completed_last_30days": "false",
        "email": "pat@example.com",
        "first_name": "Pat",
        "total_revenue_180_days": 450,
    },
    "u456": {"first_time_shopper": "false"},
    "u789": {"j_o_welcome_series__step_1": "true"},
}


@pytest.fixture
def fake() -> Iterator[tuple[FakeHeap, str]]:
    heap = FakeHeap(FakeHeapSettings(rate_limits=False, seed=5))
    with serve_in_thread(heap.app) as url:
        yield heap, url


def send_examples(host: str) -> list[dict[str, Any]]:
    """Every example through the SDK's own identify/track, context.personas included."""
    examples = [json.loads(line) for line in EXAMPLES.read_text(encoding="utf-8").splitlines()]
    errors: list[str] = []
    client = Client(
        KEY,
        host=host,
        max_retries=3,
        upload_interval=0.05,
        on_error=lambda exc, batch: errors.append(repr(exc)),
    )
    for m in examples:
        common: dict[str, Any] = {
            "user_id": m.get("userId"),
            "anonymous_id": m.get("anonymousId"),
            "context": m["context"],
            "integrations": m["integrations"],
            "message_id": m["messageId"],
            "timestamp": datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")),
        }
        if m["type"] == "identify":
            client.identify(traits=m["traits"], **common)
        else:
            client.track(event=m["event"], properties=m["properties"], **common)
    client.flush()
    client.join()
    assert errors == []
    return examples


def job_states(db: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT message_id, state, reason FROM jobs").fetchall()
    return {mid: (state, reason) for mid, state, reason in rows}


@pytest.mark.parametrize("audience_events", ["user_properties", "track"])
def test_engage_examples_reach_heap_as_user_properties(
    tmp_path: Path, fake: tuple[FakeHeap, str], audience_events: str
) -> None:
    heap, heap_url = fake
    port = free_port()
    command = [sys.executable, "-m", "heaprelay", "serve", "--port", str(port)]
    command += ["--app-id", APP, "--write-key", KEY, "--base-url", heap_url]
    command += ["--data-dir", str(tmp_path), "--option", f"audience_events={audience_events}"]
    relay = f"http://127.0.0.1:{port}"
    db = tmp_path / "heaprelay.db"
    with run_process(command, tmp_path / "serve.log", ready=f"{relay}/readyz", timeout=60):
        examples = send_examples(relay)

        def finished() -> bool:
            states = job_states(db) if db.exists() else {}
            return len(states) == len(examples) and all(
                s in ("delivered", "dead", "skipped") for s, _ in states.values()
            )

        wait_until(finished, "every example delivered or skipped")
    users = httpx.get(f"{heap_url}/_fake/users", params={"app_id": APP}).json()
    assert users == USERS
    states = job_states(db)
    assert states.pop("personas_audience_track_anonymous") == ("skipped", "missing_identity")
    assert set(states.values()) == {("delivered", None)}
    events = [e for e in heap.events(APP) if e.get("event")]
    names = sorted(e["event"] for e in events)
    if audience_events == "track":
        assert names == [
            "Audience Entered",
            "Audience Entered",
            "Audience Exited",
            "Trait Computed",
        ]
    else:
        assert names == []
