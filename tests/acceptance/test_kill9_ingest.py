"""Kill -9 the real ``heaprelay serve`` process while clients send, many times: every message
it acknowledged is in the queue after the restart. Then SIGTERM while clients send: it exits
cleanly and everything it acknowledged is stored too."""

from __future__ import annotations

import base64
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from heaprelay.testing.servers import free_port

KEY = "kill9-key"
AUTH = {"authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
ROUNDS = 10
CLIENTS = 4


class Server:
    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "heaprelay",
                    "serve",
                    "--app-id",
                    "1",
                    "--write-key",
                    KEY,
                    # Only the API: this test is about what ingest acknowledges, and no
                    # delivery may try to reach Heap.
                    "--role",
                    "api",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(self.log.read_text())

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


class Clients:
    """Threads posting batches of unique messages until stopped; they note what was acked."""

    def __init__(self, url: str, tag: str) -> None:
        self.url = url
        self.tag = tag
        self.acked: set[str] = set()
        self.sent = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(CLIENTS)]

    def run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers=AUTH) as http:
            i = 0
            while not self.stop.is_set():
                ids = [f"{self.tag}-{n}-{i}-{k}" for k in range(10)]
                i += 1
                batch = [
                    {"type": "track", "userId": f"u{n}", "event": "E", "messageId": mid}
                    for mid in ids
                ]
                try:
                    answer = http.post("/v1/batch", json={"batch": batch})
                except httpx.TransportError:
                    time.sleep(0.01)
                    continue
                with self.lock:
                    self.sent += 1
                    if answer.status_code == 200:
                        self.acked.update(ids)

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def stored_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row[0] for row in conn.execute("SELECT message_id FROM jobs")}
    finally:
        conn.close()


@pytest.mark.slow
def test_acknowledged_messages_survive_kill_9(tmp_path: Path):
    rng = random.Random(9)
    server = Server(tmp_path / "data", tmp_path / "serve.log")
    acked: set[str] = set()
    for round_no in range(ROUNDS):
        server.start()
        with Clients(server.url, f"r{round_no}") as clients:
            # Kill while requests are in flight: wait until some were answered first.
            deadline = time.monotonic() + 20
            while len(clients.acked) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            assert server.signal(signal.SIGKILL) == -signal.SIGKILL
            with clients.lock:
                acked |= clients.acked
        assert clients.acked, f"round {round_no}: nothing was acknowledged"
        missing = clients.acked - stored_ids(tmp_path / "data" / "heaprelay.db")
        assert not missing, f"round {round_no}: {len(missing)} acknowledged messages lost"

    server.start()  # restart once more: the file opens and all is still there
    stored = stored_ids(tmp_path / "data" / "heaprelay.db")
    assert acked <= stored
    with Clients(server.url, "term") as clients:
        while len(clients.acked) < 50:
            time.sleep(0.01)
        assert server.signal(signal.SIGTERM) == 0
    assert clients.acked <= stored_ids(tmp_path / "data" / "heaprelay.db")
    assert "Traceback" not in server.log.read_text()


def test_sigterm_with_nothing_in_flight_exits_zero(tmp_path: Path):
    server = Server(tmp_path / "data", tmp_path / "serve.log")
    server.start()
    answer = httpx.post(
        f"{server.url}/v1/track", headers=AUTH, json={"userId": "u", "event": "E"}, timeout=10
    )
    assert answer.status_code == 200
    assert server.signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM) == 0
    assert len(stored_ids(tmp_path / "data" / "heaprelay.db")) == 1
