"""Scale-out on PostgreSQL: two API processes and two worker processes share one queue.

Real processes (the server lifecycle of ``heaprelay serve`` with ``--role api|worker``), a
real PostgreSQL (a database created for the test), real SDK clients sending concurrently,
the fake Heap on loopback, and ``kill -9`` of one worker while it holds leased jobs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg
import pytest
from segment.analytics.client import Client

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import free_port, serve_in_thread

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

KEY = "scale-write-key"
APP = "4242"

#: Runs one relay process from a JSON description (the same lifecycle as ``heaprelay serve``,
#: with delivery settings that the serve flags do not expose).
RELAY = """
import json, sys
from pathlib import Path
from heaprelay import server
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.transform import DestinationSettings

spec = json.loads(sys.argv[1])
settings = DestinationSettings(
    app_id=spec["app_id"], profile="segment-actions", region_setting="US",
    base_url=spec["heap_url"],
)
source = Source("scale", spec["write_key"], (Destination("heap", settings),))
delivery = DeliverySettings(
    batch_size=spec["batch_size"], flush_interval=0.02, concurrency=2, rate_limits=False,
    retry_base=0.1, retry_cap=1.0, lease_seconds=spec["lease_seconds"],
)
config = Config(
    sources=(source,), data_dir=Path(spec["data_dir"]), queue_url=spec["queue_url"],
    port=spec["port"], role=spec["role"], delivery=delivery,
)
server.run(config, log_level="warning")
"""


class UserPropertyLog:
    """ASGI wrapper around the fake Heap recording, in arrival order, every user-property
    update that Heap accepted (200): ``(identity, seq)``. It observes; it changes nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.accepted: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or "user_properties" not in scope["path"]:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        status: list[int] = []

        async def recv() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def snd(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, recv, snd)
        if status != [200]:
            return
        body = orjson.loads(b"".join(chunks))
        with self.lock:
            for user in body.get("users", [body]):
                identity = user.get("identity") or user["user_identifier"]["identity"]
                props = user.get("properties") or user.get("custom_properties") or {}
                self.accepted.append((str(identity), int(str(props["seq"]))))


@pytest.fixture
def scale_db(pg_url: str) -> Iterator[str]:
    """A database of its own (dropped afterwards), migrated with ``heaprelay db migrate``."""
    name = f"heaprelay_scale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlsplit(pg_url)._replace(path=f"/{name}").geturl()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "heaprelay", "db", "migrate", "--queue", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "applied 0001_jobs" in done.stdout
        again = subprocess.run(
            [sys.executable, "-m", "heaprelay", "db", "migrate", "--queue", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (again.returncode, again.stdout.strip().endswith("up to date")) == (0, True)
        yield url
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(get: Callable[[], list[str]], timeout: float, what: str) -> list[str]:
    found: list[str] = []

    def check() -> bool:
        found[:] = get()
        return bool(found)

    wait_until(check, timeout, what)
    return found


def leased_by(url: str, prefix: str) -> list[str]:
    """Workers (one entry per job) holding leases whose name starts with ``prefix``."""
    with psycopg.connect(url, options="-c search_path=heaprelay") as conn:
        rows = conn.execute(
            "SELECT worker FROM jobs WHERE state = 'leased' AND starts_with(worker, %s)",
            [prefix],
        ).fetchall()
    return [w for (w,) in rows]


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, options="-c search_path=heaprelay") as conn:
        rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    return {state: n for state, n in rows}


def test_two_api_and_two_worker_processes_kill_9_one_worker(scale_db: str, tmp_path) -> None:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, latency=0.1, seed=5))
    log = UserPropertyLog(fake.app)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    with serve_in_thread(log) as heap_url:

        def start(name: str, role: str) -> None:
            ports[name] = free_port()
            spec = {
                "app_id": APP,
                "write_key": KEY,
                "heap_url": heap_url,
                "queue_url": scale_db,
                "data_dir": str(tmp_path / name),
                "port": ports[name],
                "role": role,
                "batch_size": 20,
                "lease_seconds": 4.0,
            }
            procs[name] = subprocess.Popen(
                [sys.executable, "-c", RELAY, json.dumps(spec)],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

        try:
            for name, role in (("api1", "api"), ("api2", "api"), ("w1", "worker")):
                start(name, role)
            for name in list(procs):
                wait_until(lambda n=name: ready(ports[n]), 30, f"{name} ready")

            # Four SDK clients, two per API process, sending at once. Each identity belongs to
            # one client, so its updates have one order to keep: seq 0, 1, 2, ...
            per_client, per_identity = 10, 30
            sent_tracks: list[str] = []
            last_seq: dict[str, int] = {}
            lock = threading.Lock()

            def client_run(c: int) -> None:
                api = "api1" if c % 2 == 0 else "api2"
                client = Client(
                    KEY,
                    host=f"http://127.0.0.1:{ports[api]}",
                    max_retries=5,
                    upload_interval=0.02,
                    upload_size=25,
                )
                ids: list[str] = []
                for seq in range(per_identity):
                    for u in range(per_client):
                        user = f"c{c}-u{u}"
                        client.identify(user_id=user, traits={"seq": seq})
                        _, msg = client.track(
                            user_id=user,
                            anonymous_id=f"anon-{user}",
                            event="Step",
                            properties={"seq": seq},
                        )
                        ids.append(msg["messageId"])
                client.flush()  # acknowledged = committed to PostgreSQL
                client.join()
                with lock:
                    sent_tracks.extend(ids)
                    for u in range(per_client):
                        last_seq[f"c{c}-u{u}"] = per_identity - 1

            total = 4 * per_client * per_identity * 2
            senders = [threading.Thread(target=client_run, args=(c,)) for c in range(4)]
            for t in senders:
                t.start()
            # While worker 1 is the only worker, the leases it takes tell its name.
            w1_name = wait_for(lambda: leased_by(scale_db, ""), 60, "worker 1 to claim")
            w1_prefix = w1_name[0].rpartition("-")[0] + "-"
            # The second worker joins while the clients send.
            start("w2", "worker")
            wait_until(lambda: ready(ports["w2"]), 30, "w2 ready")
            wait_until(lambda: fake.report()["accepted_events"] > 100, 60, "delivery")
            # kill -9 worker 1 while it holds leased jobs (a batch in flight).
            wait_for(lambda: leased_by(scale_db, w1_prefix), 60, "worker 1 to hold jobs")
            procs["w1"].send_signal(signal.SIGKILL)
            procs["w1"].wait()
            assert fake.report()["accepted_events"] < total // 2, "killed too late"
            stranded = leased_by(scale_db, w1_prefix)
            assert stranded, "worker 1 held no jobs when killed: the test proves nothing"
            for t in senders:
                t.join(timeout=120)
            assert len(sent_tracks) == total // 2

            # An SDK retry of a request whose answer it missed is stored again, and its first
            # claim finds it a duplicate (skipped, reason duplicate); all else is delivered.
            wait_until(lambda: counts(scale_db).get("delivered") == total, 120, "all delivered")
            with psycopg.connect(scale_db, options="-c search_path=heaprelay") as conn:
                others = conn.execute(
                    "SELECT state, reason FROM jobs WHERE state <> 'delivered'"
                ).fetchall()
            assert all(row == ("skipped", "duplicate") for row in others), others
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=30)

    # Every track event reached Heap exactly once; repeats only as repeated idempotency keys.
    keys = [e["idempotency_key"] for e in fake.events(APP)]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(sent_tracks)
    report = fake.report()
    assert report["accepted_events"] == total // 2
    # Per identity, an update was never applied before an earlier one: when Heap accepted
    # seq k, it had already accepted every seq below k (a replay after the kill repeats an
    # earlier run, it never skips ahead), and the last applied value is the last one sent.
    seen: dict[str, set[int]] = {}
    last_applied: dict[str, int] = {}
    for identity, seq in log.accepted:
        got = seen.setdefault(identity, set())
        assert all(j in got for j in range(seq)), f"{identity}: seq {seq} before {range(seq)}"
        got.add(seq)
        last_applied[identity] = seq
    assert last_applied == last_seq
    assert {u: int(str(p["seq"])) for u, p in fake.users(APP).items()} == last_seq
