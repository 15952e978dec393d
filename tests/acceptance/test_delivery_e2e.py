"""End to end: a real SDK client → heaprelay (ingest + delivery, SQLite) → the fake Heap.

The relay runs in-process on a loopback port (or, for kill -9, as a real ``heaprelay serve``
process); the fake Heap runs on its own loopback port with failure injection.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from segment.analytics.client import Client

from heaprelay.cli import main
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.router.batcher import items_of
from heaprelay.router.worker import with_idempotency_key
from heaprelay.server import build_app
from heaprelay.testing.servers import free_port, serve_in_thread
from heaprelay.transform import DestinationSettings, Skip, transform

KEY = "e2e-write-key"
APP = "31337"
PROFILE = "segment-actions"


def settings_for(url: str, profile: str = PROFILE) -> DestinationSettings:
    region = "US" if profile.startswith("segment-") else None
    return DestinationSettings(app_id=APP, profile=profile, region_setting=region, base_url=url)


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def fake() -> Iterator[tuple[FakeHeap, str]]:
    heap = FakeHeap(FakeHeapSettings(rate_limits=False, seed=11))
    with serve_in_thread(heap.app) as url:
        yield heap, url


def relay(tmp_path: Path, heap_url: str, batch_size: int = 1000, profile: str = PROFILE) -> Any:
    delivery = DeliverySettings(
        batch_size=batch_size, flush_interval=0.05, retry_base=0.1, retry_cap=1.0, concurrency=2
    )
    source = Source("sdk", KEY, (Destination("heap", settings_for(heap_url, profile)),))
    config = Config(sources=(source,), data_dir=tmp_path, delivery=delivery)
    return serve_in_thread(build_app(config))


def sdk(host: str) -> Client:
    return Client(KEY, host=host, max_retries=3, upload_interval=0.05)


def queue_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


def finished(db: Path, total: int) -> Callable[[], bool]:
    def check() -> bool:
        counts = queue_counts(db)
        done = sum(counts.get(s, 0) for s in ("delivered", "dead", "skipped"))
        return done == total

    return check


def stored_payloads(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT message_id, payload FROM jobs ORDER BY id").fetchall()
    return [orjson.loads(p) for _, p in rows]


def received_item(event: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in event.items() if k not in ("app_id", "endpoint", "region", "received_at")
    }


@pytest.mark.parametrize("profile", ["heap", "segment-actions"])
def test_sdk_events_reach_heap_in_bulk_exactly_as_transformed(
    tmp_path: Path, fake: tuple[FakeHeap, str], profile: str
) -> None:
    heap, heap_url = fake
    with relay(tmp_path, heap_url, profile=profile) as url:
        client = sdk(url)
        for i in range(40):
            client.identify(user_id=f"user-{i % 8}", traits={"plan": f"p{i}", "n": i})
            client.track(
                user_id=f"user-{i % 8}",
                anonymous_id=f"anon-{i % 8}",
                event="Played",
                properties={"song": i, "tags": ["a", "b"]},
            )
        client.flush()
        db = tmp_path / "heaprelay.db"
        wait_until(finished(db, 80), what="delivery")
    expected_events: list[dict[str, Any]] = []
    expected_users: dict[str, dict[str, Any]] = {}
    for message in stored_payloads(db):
        result = transform(message, settings_for(heap_url, profile))
        assert not isinstance(result, Skip)
        for request in result:
            request = with_idempotency_key(request, message["messageId"])
            _, items = items_of(request)
            if request.endpoint.endswith("track"):
                expected_events.extend(items)
            else:
                for item in items:
                    expected_users.setdefault(item["identity"], {}).update(item["properties"])
    got = [received_item(e) for e in heap.events(APP)]
    key = orjson.dumps
    assert sorted(map(key, got)) == sorted(map(key, expected_events))
    assert heap.users(APP) == expected_users
    sizes = [r["items"] for r in heap.requests()]
    assert all(r["status"] == 200 for r in heap.requests())
    assert sum(sizes) == 80
    assert len(sizes) < 80  # bulk requests, not one per event
    assert max(sizes) > 1


def test_invalid_item_dead_lettered_with_heaps_answer_then_replayed(
    tmp_path: Path, fake: tuple[FakeHeap, str]
) -> None:
    heap, heap_url = fake
    heap.update({"reject_identities": ["mallory"]})
    db = tmp_path / "heaprelay.db"
    with relay(tmp_path, heap_url) as url:
        client = sdk(url)
        for name in ["alice", "bob", "mallory", "carol", "dave"] * 4:
            client.identify(user_id=name, traits={"seen": name})
        client.flush()
        wait_until(finished(db, 20), what="delivery")
        assert set(heap.users(APP)) == {"alice", "bob", "carol", "dave"}
        queue = f"sqlite:///{db}"
        listing = CliRunner().invoke(main, ["dlq", "list", "--json", "--queue", queue])
        assert listing.exit_code == 0, listing.output
        dead = [orjson.loads(line) for line in listing.output.splitlines()]
        assert len(dead) == 4
        assert {d["payload"]["userId"] for d in dead} == {"mallory"}
        assert all(d["reason"] == "heap_rejected" for d in dead)
        assert all(
            d["answer"].startswith("400 Bad Request: users[0]: identity refused") for d in dead
        )
        shown = CliRunner().invoke(main, ["dlq", "show", str(dead[0]["id"]), "--queue", queue])
        assert '"answer": "400 Bad Request' in shown.output

        heap.update({"reject_identities": []})  # the fix
        replay = CliRunner().invoke(main, ["dlq", "replay", "--all", "--queue", queue])
        assert replay.output.strip() == "replayed 4 dead letter(s)"
        wait_until(lambda: "mallory" in heap.users(APP), what="replayed delivery")
        wait_until(finished(db, 20), what="queue to settle")
    assert queue_counts(db).get("dead", 0) == 0
    status = CliRunner().invoke(
        main, ["status", "--queue", f"sqlite:///{db}", "--interval", "0", "--json"]
    )
    assert orjson.loads(status.output)["by_state"]["delivered"] == 20


@pytest.mark.slow
def test_outage_every_event_delivered_none_twice_none_dead(
    tmp_path: Path, fake: tuple[FakeHeap, str]
) -> None:
    heap, heap_url = fake
    heap.update({"outage_seconds": 3.0})
    db = tmp_path / "heaprelay.db"
    with relay(tmp_path, heap_url) as url:
        client = sdk(url)
        sent = [
            client.track(
                user_id=f"u{i % 20}", anonymous_id=f"a{i % 20}", event="Tick", properties={"i": i}
            )[1]["messageId"]
            for i in range(500)
        ]
        client.flush()
        wait_until(finished(db, 500), timeout=60, what="delivery after the outage")
    assert heap.report()["by_status"]["503"] >= 1
    assert queue_counts(db).get("dead", 0) == 0
    keys = [e["idempotency_key"] for e in heap.events(APP)]
    assert len(keys) == len(set(keys)) == 500
    assert set(keys) == set(sent)


@pytest.mark.slow
def test_order_of_1000_property_updates_with_failures(
    tmp_path: Path, fake: tuple[FakeHeap, str]
) -> None:
    heap, heap_url = fake
    heap.update({"error_rate": 0.2, "accept_then_fail_rate": 0.05})
    db = tmp_path / "heaprelay.db"
    with relay(tmp_path, heap_url, batch_size=20) as url:
        client = Client(KEY, host=url, max_retries=3, upload_interval=0.01, upload_size=10)
        for i in range(1000):
            client.identify(user_id="hot-user", traits={"version": i})
        client.flush()
        wait_until(finished(db, 1000), timeout=120, what="1000 updates")
    assert heap.report()["by_status"].get("503", 0) > 0
    last = stored_payloads(db)[-1]
    assert last["traits"] == {"version": 999}
    [request] = transform(last, settings_for(heap_url))  # type: ignore[misc]
    assert heap.users(APP) == {"hot-user": request.body["properties"]}


@pytest.mark.slow
def test_kill_9_during_delivery_loses_nothing(tmp_path: Path) -> None:
    heap = FakeHeap(FakeHeapSettings(rate_limits=False, latency=0.05))
    port = free_port()
    db = tmp_path / "heaprelay.db"
    with serve_in_thread(heap.app) as heap_url:
        # The relay as its own process (the same server as ``heaprelay serve``), with a short
        # lease so that the jobs the killed process held come back within seconds.
        cmd = [sys.executable, "-c", RELAY_PROCESS, str(port), str(tmp_path), heap_url]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        def start() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(cmd, env=env)
            wait_until(lambda: _ready(port), timeout=20, what="relay start")
            return proc

        proc = start()
        client = Client(KEY, host=f"http://127.0.0.1:{port}", max_retries=5, upload_interval=0.05)
        sent = [
            client.track(
                user_id=f"u{i % 50}", anonymous_id=f"a{i % 50}", event="Tick", properties={"i": i}
            )[1]["messageId"]
            for i in range(3000)
        ]
        client.flush()  # every message acknowledged (committed) by the relay
        wait_until(lambda: heap.report()["accepted_events"] > 100, what="delivery to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert heap.report()["accepted_events"] < 3000, "killed too late to prove anything"
        proc = start()
        try:
            wait_until(finished(db, 3000), timeout=120, what="delivery after restart")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    keys = [e["idempotency_key"] for e in heap.events(APP)]
    assert len(keys) == len(set(keys))  # duplicates were absorbed by the idempotency key
    assert set(keys) == set(sent)
    assert queue_counts(db) == {"delivered": 3000}


RELAY_PROCESS = f"""
import sys
from pathlib import Path
from heaprelay import server
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.transform import DestinationSettings
port, data_dir, heap_url = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
settings = DestinationSettings(app_id={APP!r}, profile={PROFILE!r}, region_setting="US",
                               base_url=heap_url)
source = Source("sdk", {KEY!r}, (Destination("heap", settings),))
delivery = DeliverySettings(lease_seconds=3.0, retry_base=0.1, retry_cap=1.0)
server.run(Config(sources=(source,), data_dir=data_dir, port=port, delivery=delivery),
           log_level="warning")
"""


def _ready(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_sandbox_shows_the_whole_flow(tmp_path: Path) -> None:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "heaprelay",
        "serve",
        "--sandbox",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _ready(port), timeout=20, what="sandbox start")
        client = Client("sandbox", host=f"http://127.0.0.1:{port}", upload_interval=0.05)
        client.identify(user_id="ada", traits={"plan": "pro"})
        client.track(user_id="ada", event="Signed Up", properties={"source": "docs"})
        client.flush()
        fake = f"http://127.0.0.1:{port}/fake-heap/_fake"
        import httpx

        wait_until(
            lambda: httpx.get(fake + "/report").json()["accepted_events"] == 1,
            what="sandbox delivery",
        )
        assert httpx.get(fake + "/users").json() == {"ada": {"plan": "pro"}}
        [event] = httpx.get(fake + "/events").json()
        assert event["app_id"] == "sandbox-app"
        assert event["event"] == "Signed Up"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b"sandbox: delivering to the embedded fake Heap" in err


def test_running_relay_prunes_delivered_jobs_older_than_retention(
    tmp_path: Path, fake: tuple[FakeHeap, str]
) -> None:
    """``serve``'s default services include retention: delivered and skipped jobs older than
    ``Config.retention`` are deleted; dead letters stay."""
    heap, heap_url = fake
    heap.update({"reject_identities": ["refused"]})
    db = tmp_path / "heaprelay.db"

    def serve(retention: float) -> Any:
        delivery = DeliverySettings(flush_interval=0.05, retry_base=0.1, concurrency=2)
        source = Source("sdk", KEY, (Destination("heap", settings_for(heap_url)),))
        config = Config(
            sources=(source,), data_dir=tmp_path, retention=retention, delivery=delivery
        )
        return serve_in_thread(build_app(config))

    with serve(retention=3600.0) as url:
        client = sdk(url)
        for i in range(6):
            client.identify(user_id=f"user-{i}", traits={"n": i})
        client.identify(user_id="refused", traits={"n": 0})
        client.track(user_id="user-1", event="Filtered", integrations={"Heap": False})
        client.flush()
        wait_until(finished(db, 8), what="delivery")
        time.sleep(0.5)  # the prune at start has run: nothing was old enough
        assert queue_counts(db) == {"delivered": 6, "dead": 1, "skipped": 1}
    time.sleep(0.3)
    with serve(retention=0.2):  # now every finished job is older than the retention
        wait_until(lambda: queue_counts(db) == {"dead": 1}, what="retention prune")
    assert len(heap.users(APP)) == 6


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("all", ["delivery_service", "retention_service", "search_index_service"]),
        ("worker", ["delivery_service", "retention_service", "search_index_service"]),
        ("api", []),
    ],
)
def test_delivery_roles_run_retention(role: Any, expected: list[str]) -> None:
    from heaprelay.server import default_services

    config = Config(sources=(), role=role)
    assert [s.__name__ for s in default_services(config)] == expected


def test_shutdown_gives_back_jobs_waiting_for_rate_budget(
    tmp_path: Path, fake: tuple[FakeHeap, str]
) -> None:
    """Stopping the relay while delivery waits for Heap's budget: the waiting jobs are pending
    again when it has stopped (not leased until their lease expires), and nothing is lost."""
    heap, heap_url = fake
    delivery = DeliverySettings(
        batch_size=60,
        flush_interval=0.05,
        app_events_per_minute=60,  # one request of 60 now, the next in a minute
        identity_events_per_minute=10_000,
        concurrency=2,
    )
    source = Source("sdk", KEY, (Destination("heap", settings_for(heap_url, "heap")),))
    config = Config(sources=(source,), data_dir=tmp_path, delivery=delivery)
    db = tmp_path / "heaprelay.db"
    with serve_in_thread(build_app(config)) as url:
        client = sdk(url)
        for i in range(150):
            client.track(user_id=f"user-{i}", event="Played", properties={"n": i})
        client.flush()
        wait_until(lambda: heap.report()["accepted_events"] >= 60, what="first request")
        wait_until(lambda: sum(queue_counts(db).values()) == 150, what="ingest")
    assert heap.report()["accepted_events"] == 60
    assert queue_counts(db) == {"delivered": 60, "pending": 90}
