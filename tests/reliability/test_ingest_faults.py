"""Ingest under storage faults and slow clients (issue 12, items 6 and 7), with the relay as a
real process and real SDK clients (segment-analytics-python, rudder-sdk-python) sending:

- the data dir on a small tmpfs that fills up: ingest answers 503 ``queue_unavailable``
  saying "disk full", ``/readyz`` goes 503 with the reason and back to 200 once space is
  freed, the log holds a line per failure class (not a traceback per request), and every
  acknowledged event reaches the fake Heap exactly once;
- the data dir on a read-only filesystem (an ext4 image mounted ro) holding a queue with
  undelivered events: the relay refuses to start, saying read-only; remounted rw, it starts
  and delivers them all once;
- PostgreSQL stopped for a while under a running relay: ingest 503s, ``/readyz`` 503, no
  "Task exception was never retrieved", everything acknowledged delivered once;
- many trickling connections over raw sockets are cut by the header/body timeouts and the
  connection cap while a normal client still gets through.

Mounting needs root: without it those scenarios are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import serve_in_thread

from .conftest import (
    APP,
    KEY,
    Figures,
    PrivateCluster,
    Relay,
    Senders,
    heap_figures,
    queue_counts,
    settled,
    wait_until,
)

pytestmark = pytest.mark.slow

DELIVERY = {
    "batch_size": 100,
    "flush_interval": 0.02,
    "rate_limits": False,
    "lease_seconds": 3.0,
    "retry_base": 0.1,
    "retry_cap": 1.0,
    "concurrency": 2,
}


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root (id -u is not 0)")


def run(*command: str) -> None:
    subprocess.run(list(command), check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    needs_root()
    where.mkdir()
    run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=60)


@pytest.fixture
def heap() -> Iterator[tuple[FakeHeap, str]]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, latency=0.01, seed=5))
    with serve_in_thread(fake.app) as url:
        yield fake, url


class Poster:
    """A plain HTTP client posting small batches as fast as answered, keeping every answer:
    what was acknowledged (200) and what was refused (status, body)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: set[str] = set()
        self.refused: list[tuple[int, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poster:
        self.thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(auth=(KEY, ""), timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                ids = [str(uuid.uuid4()) for _ in range(20)]
                batch = [
                    {"type": "track", "userId": f"poster-{n % 7}", "event": "Post", "messageId": m}
                    for m in ids
                ]
                n += 1
                try:
                    answer = client.post(self.url + "/v1/batch", json={"batch": batch})
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                with self.lock:
                    if answer.status_code == 200:
                        self.acked.update(ids)
                    else:
                        self.refused.append((answer.status_code, answer.json()))
                time.sleep(0.01 if answer.status_code == 200 else 0.05)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def readyz(relay: Relay) -> tuple[int, dict[str, Any]]:
    try:
        answer = httpx.get(relay.url + "/readyz", timeout=5)
    except httpx.HTTPError as exc:
        return 0, {"error": str(exc)}
    return answer.status_code, answer.json()


def settle(
    relay: Relay,
    fake: FakeHeap,
    acked: set[str],
    sent: int,
    record: Callable[[Figures], None],
    scenario: str,
    note: str,
) -> None:
    """Wait until every job is settled, stop the relay, record the figures, and check that
    every acknowledged event is at Heap exactly once."""
    try:
        wait_until(settled(relay, len(acked)), 120, "the queue to settle")
        counts, _ = queue_counts(relay)
    finally:
        assert relay.stop() == 0
    got = heap_figures(fake, acked)
    record(
        Figures(
            scenario,
            rounds=1,
            sent=sent,
            acknowledged=len(acked),
            delivered=got["delivered"],
            duplicated=got["duplicated"],
            lost=got["lost"],
            note=f"{note}queue {dict(counts)}",
        )
    )
    assert len(acked) > 500
    assert got["lost"] == 0
    assert got["duplicated"] == 0
    assert counts["dead"] == 0


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (64 * 1024, 512):  # big blocks, then what is left
            assert write_until_error(out, b"\0" * size) == errno.ENOSPC
    return filler


def write_until_error(out: Any, chunk: bytes) -> int | None:
    try:
        while True:
            out.write(chunk)
    except OSError as exc:
        return exc.errno


def test_disk_full_answers_503_readyz_follows_and_nothing_acknowledged_is_lost(
    tmp_path: Path, heap: tuple[FakeHeap, str], figures: Callable[[Figures], None]
) -> None:
    fake, heap_url = heap
    with tmpfs(tmp_path / "mnt", "24m") as mnt, Relay(mnt, heap_url, **DELIVERY) as relay:
        relay.log = tmp_path / "relay.log"  # not on the disk that fills up
        relay.start()
        senders = Senders(relay.url, per_client=1_000_000).start()
        poster = Poster(relay.url).start()
        try:
            wait_until(lambda: fake.report()["accepted_events"] > 300, 60, "delivery")
            filler = fill(mnt)
            wait_until(lambda: readyz(relay)[0] == 503, 60, "/readyz to say 503")
            status, body = readyz(relay)
            assert body["code"] == "queue_unavailable"
            assert "disk full" in body["message"]
            wait_until(lambda: len(poster.refused) >= 5, 60, "ingest to refuse")
            time.sleep(2.0)  # the SDKs retry against a full disk meanwhile
            with poster.lock:
                refused = list(poster.refused)
                acked_before = len(poster.acked)
            filler.unlink()
            wait_until(lambda: readyz(relay)[0] == 200, 60, "/readyz to say 200 again")
            wait_until(lambda: len(poster.acked) > acked_before + 200, 60, "appends again")
        finally:
            (mnt / "filler").unlink(missing_ok=True)  # a failed check must not hang the SDKs
            poster.finish()
            senders.finish()
        for status, answer in refused:
            assert status == 503, answer
            assert answer["code"] == "queue_unavailable"
            assert "disk full" in answer["message"]
            assert "nothing of this request was stored" in answer["message"]
        acked = senders.acknowledged | poster.acked
        settle(
            relay,
            fake,
            acked,
            len(senders.enqueued) + len(poster.acked) + 20 * len(refused),
            figures,
            "data dir on a tmpfs that fills up (SQLite)",
            f"{len(refused)} batches refused 503 disk full; SDK gave up on {len(senders.failed)}; ",
        )
    log = relay.log.read_text()
    assert "never retrieved" not in log
    # One line per failure class per interval, not one per request or per pass.
    assert log.count("append:disk_full") <= 3, log[-3000:]
    assert log.count("Traceback") <= 3, log[-3000:]


def test_read_only_data_dir_refuses_to_start_then_delivers_once_writable(
    tmp_path: Path, heap: tuple[FakeHeap, str], figures: Callable[[Figures], None]
) -> None:
    needs_root()
    fake, heap_url = heap
    image, mnt = tmp_path / "data.img", tmp_path / "mnt"
    mnt.mkdir()
    run("truncate", "-s", "64M", str(image))
    run("mkfs.ext4", "-q", "-F", str(image))
    run("mount", "-o", "loop", str(image), str(mnt))
    try:
        # Heap away: what is acknowledged stays queued.
        fake.update({"error_rate": 1.0})
        with Relay(mnt, heap_url, **DELIVERY) as relay:
            relay.log = tmp_path / "relay.log"
            relay.start()
            senders = Senders(relay.url, per_client=400).start()
            senders.finish(stop=False)
            assert relay.stop() == 0
        acked = senders.acknowledged
        assert len(acked) == 800
        run("mount", "-o", "remount,ro", str(mnt))
        fake.update({"error_rate": 0.0})
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEAPRELAY_")}
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "heaprelay",
                "serve",
                "--app-id",
                APP,
                "--write-key",
                KEY,
                "--base-url",
                heap_url,
                "--data-dir",
                str(mnt),
                "--port",
                str(relay.port),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        assert "read-only" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        run("mount", "-o", "remount,rw", str(mnt))
        with Relay(mnt, heap_url, **DELIVERY) as relay:
            relay.log = tmp_path / "relay-rw.log"
            relay.start()
            settle(
                relay,
                fake,
                acked,
                len(senders.enqueued),
                figures,
                "data dir read-only at start (ext4 image, SQLite)",
                "refused to start while read-only; ",
            )
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)


@pytest.mark.postgres
def test_postgresql_outage_ingest_503_and_no_unretrieved_task_exception(
    tmp_path: Path,
    heap: tuple[FakeHeap, str],
    private_pg: PrivateCluster,
    figures: Callable[[Figures], None],
) -> None:
    fake, heap_url = heap
    queue_url = private_pg.new_database("outage")
    with Relay(tmp_path, heap_url, queue_url=queue_url, **DELIVERY) as relay:
        relay.start()
        senders = Senders(relay.url, per_client=1_000_000).start()
        poster = Poster(relay.url).start()
        try:
            wait_until(lambda: fake.report()["accepted_events"] > 300, 60, "delivery")
            private_pg.ctl("-m", "fast", "-w", "-t", "60", "stop")
            try:
                wait_until(lambda: len(poster.refused) >= 3, 60, "ingest to refuse")
                status, body = readyz(relay)
                time.sleep(3.0)  # the worker's loops meet the outage
            finally:
                private_pg.start()
            wait_until(lambda: readyz(relay)[0] == 200, 60, "/readyz to say 200 again")
            acked_before = len(poster.acked)
            wait_until(lambda: len(poster.acked) > acked_before + 200, 60, "appends again")
        finally:
            poster.finish()
            senders.finish()
        assert status == 503, body
        assert body["code"] == "queue_unavailable"
        assert all(s == 503 and a["code"] == "queue_unavailable" for s, a in poster.refused)
        settle(
            relay,
            fake,
            senders.acknowledged | poster.acked,
            len(senders.enqueued) + len(poster.acked),
            figures,
            "PostgreSQL stopped under a running relay",
            f"{len(poster.refused)} batches refused 503; SDK gave up on {len(senders.failed)}; ",
        )
    log = relay.log.read_text()
    assert "never retrieved" not in log, log[-5000:]
    assert log.count("Traceback") <= 4, log[-5000:]


# --- slow clients --------------------------------------------------------------------------------

SLOW_SERVER = {
    "header_timeout": 1.0,
    "body_timeout": 2.0,
    "keep_alive_timeout": 1.0,
    "max_connections": 50,
}


def trickle(port: int, count: int, body: bool) -> list[socket.socket]:
    """``count`` connections that start a request and then stall: in the headers, or (with
    ``body``) after the headers, one byte of a 1,000-byte body in."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if body:
            s.sendall(
                b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
        else:
            s.sendall(b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Ty")
        socks.append(s)
    return socks


def cut(s: socket.socket) -> bytes:
    """What the server sent before closing (the socket's timeout fails the test if never)."""
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    s.close()
    return got


def normal_track(relay: Relay) -> int:
    answer = httpx.post(
        relay.url + "/v1/track",
        auth=(KEY, ""),
        json={"userId": "u", "event": "Normal", "messageId": str(uuid.uuid4())},
        timeout=10,
    )
    return answer.status_code


def test_slow_clients_are_cut_and_normal_clients_get_through(
    tmp_path: Path, heap: tuple[FakeHeap, str], figures: Callable[[Figures], None]
) -> None:
    fake, heap_url = heap
    with Relay(tmp_path, heap_url, server=SLOW_SERVER, **DELIVERY) as relay:
        relay.start()
        # Past the cap: stalled bodies hold requests in progress, so a request gets 503 ...
        stalled = trickle(relay.port, 60, body=True)
        assert normal_track(relay) == 503
        # ... until the body timeout cuts them, each with a 408 saying why (those past the
        # cap were answered 503 at once).
        answers = [cut(s) for s in stalled]
        timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) >= 40, answers[-1]
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers if a not in timed_out)
        assert all(b"body_timeout" in a for a in timed_out)
        assert normal_track(relay) == 200
        # Stalled headers (under the cap): cut by the header timeout with a 408, while
        # normal clients get through meanwhile.
        stalled = trickle(relay.port, 40, body=False)
        got_through = [normal_track(relay) for _ in range(5)]
        answers = [cut(s) for s in stalled]
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0]
        assert all(b"header_timeout" in a for a in answers)
        assert got_through == [200] * 5
        # A connection that never sends anything is not held either.
        idle = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        assert cut(idle).startswith(b"HTTP/1.1 408")
        wait_until(lambda: len(fake.events(APP)) >= 6, 60, "delivery of the normal tracks")
        assert relay.stop() == 0
    figures(
        Figures(
            "slow clients: 60 stalled bodies, 40 stalled headers",
            rounds=2,
            sent=6,
            acknowledged=6,
            delivered=len(fake.events(APP)),
            note="stalled connections cut with 408; 503 past max_connections",
        )
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
