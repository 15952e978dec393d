"""``heaprelay send``: every input form, into a queue and into a running relay; refusals with
their line numbers; resuming after kill -9 and after the relay was down, with every event
delivered exactly once (a real relay, a real fake Heap, the command as a real process)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.cli.send import message_id_for
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.queue.sqlite import SQLiteQueue
from heaprelay.server import build_app
from heaprelay.testing.servers import free_port, serve_in_thread, wait_until
from heaprelay.transform import DestinationSettings

KEY = "send-write-key"
APP = "777"


def run(*args: str, input: bytes | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["send", *args], input=input)
    return result.exit_code, result.output


def jobs(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT source, destination, payload FROM jobs ORDER BY id").fetchall()
    return [{"source": s, "destination": d, **orjson.loads(p)} for s, d, p in rows]


def ndjson(path: Path, events: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def test_ndjson_into_the_queue_with_refusals_by_line(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(
        b'{"type":"track","userId":"u1","event":"A"}\n'
        b"\n"
        b'{"type":"track","userId":"u2","event":"B","messageId":"own-id"}\n'
        b"{oops\n"
        b'{"type":"track","event":"no identity"}\n'
        b"[1, 2]\n"
        b'{"type":"identify","userId":"u1","traits":{"plan":"pro"}}\n'
    )
    asyncio.run(_create(tmp_path / "heaprelay.db"))
    code, out = run(str(events), "--data-dir", str(tmp_path))
    assert code == 0, out
    assert "sent 3 events" in out
    assert "3 refused" in out
    assert "refused line 4: invalid_json" in out
    assert "refused line 5: missing_identity" in out
    assert "refused line 6: invalid_message" in out
    stored = jobs(tmp_path / "heaprelay.db")
    assert [(j["source"], j["destination"], j.get("event")) for j in stored] == [
        ("default", "heap", "A"),
        ("default", "heap", "B"),
        ("default", "heap", None),
    ]
    assert stored[1]["messageId"] == "own-id"
    first = {"type": "track", "userId": "u1", "event": "A"}
    assert stored[0]["messageId"] == message_id_for(first, 0)  # deterministic
    assert "receivedAt" in stored[0]  # enriched as ingest does
    # Done: the same command does nothing; --restart sends again, and the queue finds the
    # repeats as duplicates (same messageIds), so nothing is delivered twice.
    code, out = run(str(events), "--data-dir", str(tmp_path))
    assert (code, "already sent" in out) == (0, True)
    code, out = run(str(events), "--data-dir", str(tmp_path), "--restart")
    assert code == 0

    async def claim_all() -> tuple[int, dict[str, int]]:
        queue = await SQLiteQueue.open(tmp_path / "heaprelay.db")
        try:
            claimed = await queue.claim("w", limit=100, lease_seconds=60, now=time.time())
            return len(claimed), (await queue.stats()).by_reason
        finally:
            await queue.close()

    assert asyncio.run(claim_all()) == (3, {"duplicate": 3})


def test_json_array_batch_object_and_csv(tmp_path: Path) -> None:
    array = tmp_path / "array.json"
    array.write_bytes(orjson.dumps([{"type": "track", "userId": "a", "event": "Arr"}, 5]))
    code, out = run(str(array), "--data-dir", str(tmp_path / "q1"))
    assert code == 1 or "no queue at" in out  # the queue must exist (a typo is not a new queue)
    (tmp_path / "q1").mkdir()
    asyncio.run(_create(tmp_path / "q1" / "heaprelay.db"))
    code, out = run(str(array), "--data-dir", str(tmp_path / "q1"))
    assert code == 0, out
    assert "refused item 2: invalid_message" in out
    batch = tmp_path / "batch.json"
    batch.write_text(
        json.dumps(
            {
                "batch": [{"type": "track", "userId": "b", "event": "Batched"}],
                "context": {"library": {"name": "exporter"}},
            },
            indent=2,
        )
    )
    code, out = run(str(batch), "--data-dir", str(tmp_path / "q1"))
    assert code == 0, out
    table = tmp_path / "events.csv"
    table.write_text(
        "user,what,plan,amount,vip,extra\n"
        'u1,Bought,pro,12.5,true,"{""a"": 1}"\n'
        "u2,Bought,free,3,no,\n"
        "u3,Bought,free,lots,no,\n"
    )
    code, out = run(
        str(table),
        "--data-dir",
        str(tmp_path / "q1"),
        "--map",
        "user=userId",
        "--map",
        "what=event",
        "--map",
        "plan=properties.plan",
        "--map",
        "amount=properties.amount:number",
        "--map",
        "vip=properties.vip:bool",
        "--map",
        "extra=properties.extra:json",
    )
    assert code == 0, out
    assert "refused line 4: invalid_row: column 'amount'" in out
    stored = jobs(tmp_path / "q1" / "heaprelay.db")
    assert [j["event"] for j in stored] == ["Arr", "Batched", "Bought", "Bought"]
    assert stored[1]["context"]["library"] == {"name": "exporter"}
    assert stored[2]["properties"] == {
        "plan": "pro",
        "amount": 12.5,
        "vip": True,
        "extra": {"a": 1},
    }
    assert stored[3]["properties"] == {"plan": "free", "amount": 3, "vip": False}
    assert stored[3]["type"] == "track"
    code, out = run(
        str(table), "--data-dir", str(tmp_path / "q1"), "--map", "nope=userId", "--restart"
    )
    assert code == 2
    assert "no column 'nope'" in out


async def _create(path: Path) -> None:
    await (await SQLiteQueue.open(path)).close()


def test_stdin_and_usage_errors(tmp_path: Path) -> None:
    asyncio.run(_create(tmp_path / "heaprelay.db"))
    code, out = run(
        "-", "--data-dir", str(tmp_path), input=b'{"type":"track","userId":"s","event":"In"}\n'
    )
    assert code == 0, out
    assert "sent 1 events" in out
    code, out = run("-", "--url", "http://127.0.0.1:9", input=b"")
    assert code == 2
    assert "--write-key" in out
    code, out = run(str(tmp_path / "missing.ndjson"), "--data-dir", str(tmp_path))
    assert code == 2
    assert "no such file" in out


# --- into a running relay: interruptions ----------------------------------------------------


@pytest.fixture
def heap() -> Iterator[FakeHeap]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False))
    with serve_in_thread(fake.app) as url:
        fake.url = url  # type: ignore[attr-defined]
        yield fake


def relay_config(tmp_path: Path, heap_url: str, port: int = 0) -> Config:
    settings = DestinationSettings(app_id=APP, profile="heap", base_url=heap_url)
    source = Source("import", KEY, (Destination("heap", settings),))
    delivery = DeliverySettings(rate_limits=False, flush_interval=0.05, concurrency=2)
    return Config(sources=(source,), data_dir=tmp_path / "relay", delivery=delivery)


def send_process(path: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
    command = [sys.executable, "-m", "heaprelay", "send", str(path), "--url", url]
    command += ["--write-key", KEY, "--batch-size", "100", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def done_so_far(state: Path) -> int:
    try:
        return int(orjson.loads(state.read_bytes())["done"])
    except (FileNotFoundError, orjson.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_interrupted_twice_and_resumed_every_event_is_delivered_once(
    tmp_path: Path, heap: FakeHeap
) -> None:
    total = 12_000
    events = ndjson(
        tmp_path / "big.ndjson",
        [
            {
                "type": "track",
                "userId": f"user-{i % 300}",
                "event": "Imported",
                "properties": {"i": i},
            }
            for i in range(total)
        ],
    )
    state = tmp_path / "big.ndjson.send-state"
    with serve_in_thread(build_app(relay_config(tmp_path, heap.url))) as url:  # type: ignore[attr-defined]
        # Ctrl-C first (it stops after the batch in flight), then kill -9 (mid-batch).
        for cut, how in ((2_000, signal.SIGINT), (6_000, signal.SIGKILL)):
            process = send_process(events, url)
            wait_until(lambda cut=cut: done_so_far(state) >= cut, f"{cut} events sent")
            process.send_signal(how)
            output = process.communicate(timeout=60)[0].decode()
            assert done_so_far(state) < total
            if how == signal.SIGINT:
                assert process.returncode == 1, output
                assert "run the same command again to go on" in output
        process = send_process(events, url)
        output = process.communicate(timeout=120)[0].decode()
        assert process.returncode == 0, output
        assert f"sent {total:,} events in all" in output
        assert "(resumed)" in output
        wait_until(lambda: heap.report()["accepted_events"] >= total, "delivery", timeout=120)
        time.sleep(0.5)  # anything delivered twice would arrive now
    report = heap.report()
    assert report["accepted_events"] == total
    assert report["duplicates"] == 0  # Heap never saw an event twice (no idempotency save)
    assert sorted(e["properties"]["i"] for e in heap.events(APP)) == list(range(total))


@pytest.mark.slow
def test_relay_down_stops_and_the_same_command_goes_on(tmp_path: Path, heap: FakeHeap) -> None:
    events = ndjson(
        tmp_path / "e.ndjson",
        [
            {"type": "track", "userId": f"u{i}", "event": "Later", "properties": {"i": i}}
            for i in range(300)
        ],
    )
    port = free_port()
    down = send_process(events, f"http://127.0.0.1:{port}", "--retry-for", "1")
    output = down.communicate(timeout=60)[0].decode()
    assert down.returncode == 1, output
    assert "stopped" in output
    assert "run the same command again" in output
    with serve_in_thread(build_app(relay_config(tmp_path, heap.url)), port=port) as url:  # type: ignore[attr-defined]
        again = send_process(events, url, "--retry-for", "1")
        output = again.communicate(timeout=60)[0].decode()
        assert again.returncode == 0, output
        wait_until(lambda: heap.report()["accepted_events"] == 300, "delivery")
    assert heap.report()["duplicates"] == 0
