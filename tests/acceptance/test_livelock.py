"""Issue 12's delivery livelock, end to end: ``heaprelay serve --sandbox`` (a real process),
the embedded fake Heap refusing one identity's items, one ``/v1/batch`` of 4,000 tracks with
every 25th for that identity. Heap's rate limits are on at both ends, on a time scale of 20
(the budget is 20 × 15,000 events a minute; the lease 120 s / 20): before the fix, a claim
whose refused requests were split outlasted its lease, another loop claimed the jobs again,
the first pass's outcomes were dropped, and it never converged (``bench/livelock.py`` runs
the same at the real time scale and prints the figures).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.testing.servers import free_port

SCALE = 20
EVENTS = 4000
CONFIG = f"""
[server]
sandbox = true

[delivery]
time_scale = {SCALE}
lease_seconds = "{120 / SCALE}s"

[[sources]]
name = "web"
write_key = "livelock-key"

  [[sources.destinations]]
  id = "heap"
  app_id = "777"
"""


def states(db: Path) -> tuple[Counter[str], int]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT state, leases FROM jobs").fetchall()
    return Counter(state for state, _ in rows), max((n for _, n in rows), default=0)


def test_refused_items_while_rate_limited_converge_each_event_once(tmp_path: Path) -> None:
    (tmp_path / "heaprelay.toml").write_text(CONFIG)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "heaprelay", "serve", "--config", str(tmp_path / "heaprelay.toml")]
    cmd += ["--port", str(port), "--data-dir", str(tmp_path), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    db = tmp_path / "heaprelay.db"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.05)
        fake = base + "/fake-heap/_fake"
        settings = {"reject_identities": ["baduser"], "time_scale": SCALE}
        httpx.post(fake + "/settings", json=settings).raise_for_status()
        batch = [
            {
                "type": "track",
                "event": "Played",
                "userId": "baduser" if i % 25 == 0 else f"user-{i % 400}",
                "messageId": f"m-{i}",
                "properties": {"n": i},
            }
            for i in range(EVENTS)
        ]
        answer = httpx.post(base + "/v1/batch", json={"batch": batch}, auth=("livelock-key", ""))
        assert answer.status_code == 200
        # Heap's budget for these 4,000 events and the re-sends of the refused requests' parts
        # is a few seconds at this scale; before the fix it never ended.
        deadline = time.monotonic() + 120
        while True:
            counts, _ = states(db)
            if counts["delivered"] + counts["dead"] == EVENTS:
                break
            assert time.monotonic() < deadline, f"delivery did not converge: {dict(counts)}"
            time.sleep(0.2)
        counts, max_leases = states(db)
        report = httpx.get(fake + "/report").json()
        events = httpx.get(fake + "/events").json()
        dead = CliRunner().invoke(
            main, ["dlq", "list", "--json", "--limit", "500", "--queue", f"sqlite:///{db}"]
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert counts == {"delivered": 3840, "dead": 160}
    assert max_leases == 1  # no job was claimed twice: no pass lost its lease
    # Each good event at Heap once, and none sent again after Heap had accepted it.
    keys = Counter(e["idempotency_key"] for e in events)
    assert len(keys) == 3840
    assert set(keys.values()) == {1}
    good = {m["messageId"]: m["userId"] for m in batch if m["userId"] != "baduser"}
    assert {e["idempotency_key"]: e["identity"] for e in events} == good
    assert (report["accepted_events"], report["duplicates"], report["rate_limited"]) == (3840, 0, 0)
    letters = [orjson.loads(line) for line in dead.output.splitlines()]
    assert len(letters) == 160
    assert {d["payload"]["userId"] for d in letters} == {"baduser"}
    assert {d["reason"] for d in letters} == {"heap_rejected"}
    assert all(d["answer"].startswith("400 Bad Request: events[0]") for d in letters)
    assert b"Traceback" not in err
