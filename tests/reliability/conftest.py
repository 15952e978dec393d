"""The reliability suite (issue 12): real processes, real SDK clients, real databases, faults
injected for real (kill -9, Heap outages and 429 storms on a compressed clock, answers slower
than the client's timeout, Heap refusing items under its rate limits, PostgreSQL restarted
mid-claim). Every test records one row of figures — scenario, rounds, events sent /
acknowledged / delivered / duplicated at Heap / lost — printed as a table at the end of the
run (and by each test, visible with ``-s``).

Helpers here are shared by the tests of this folder: the relay as its own process
(:class:`Relay`), SDK clients sending from threads (:class:`Senders`), the fake Heap on
loopback, queue counts for SQLite and PostgreSQL, and a PostgreSQL cluster of the suite's own
(:func:`private_pg`) that can be restarted without disturbing anyone else's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from rudderstack.analytics.client import Client as RudderClient  # type: ignore[import-untyped]
from segment.analytics.client import Client as SegmentClient

from heaprelay.heap.fake import FakeHeap
from heaprelay.testing.postgres import own_database
from heaprelay.testing.servers import free_port

APP = "777001"
KEY = "reliability-key"


# --- the figures table -------------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    rounds: int = 0
    sent: int = 0
    acknowledged: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    note: str = ""

    def line(self) -> str:
        return (
            f"{self.scenario:<50} {self.rounds:>6} {self.sent:>7} {self.acknowledged:>7} "
            f"{self.delivered:>9} {self.duplicated:>10} {self.lost:>5}  {self.note}"
        )


HEADER = (
    f"{'scenario':<50} {'rounds':>6} {'sent':>7} {'acked':>7} {'delivered':>9} "
    f"{'duplicated':>10} {'lost':>5}  note"
)
_TABLE: list[Figures] = []


@pytest.fixture
def figures() -> Callable[[Figures], None]:
    def record(row: Figures) -> None:
        _TABLE.append(row)
        print(HEADER)
        print(row.line())

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TABLE:
        return
    terminalreporter.section("reliability figures")
    terminalreporter.write_line(HEADER)
    for row in _TABLE:
        terminalreporter.write_line(row.line())


# --- waiting -----------------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


# --- SDK clients -------------------------------------------------------------------------------


class Senders:
    """SDK clients (segment-analytics-python and rudder-sdk-python) in threads, each sending
    tracks with unique messageIds and a unique ``properties.n`` until stopped or ``limit``
    events were enqueued. ``acknowledged`` = enqueued minus what the SDK gave up on
    (``on_error``): what the relay answered 200 for, as far as the SDK knows."""

    def __init__(self, host: str, *, per_client: int, identities: int = 50) -> None:
        self.host = host
        self.per_client = per_client
        self.identities = identities
        self.lock = threading.Lock()
        self.enqueued: dict[str, dict[str, Any]] = {}
        self.failed: set[str] = set()
        self.stop = threading.Event()
        self.clients: list[Any] = []
        self.threads: list[threading.Thread] = []

    def _on_error(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            self.failed.update(m["messageId"] for m in batch)

    def start(self) -> Senders:
        for n, kind in enumerate(("segment", "rudder")):
            make = SegmentClient if kind == "segment" else RudderClient
            client = make(
                KEY,
                host=self.host,
                on_error=self._on_error,
                max_retries=12,
                upload_interval=0.05,
                upload_size=50,
                timeout=5,
            )
            self.clients.append(client)
            thread = threading.Thread(target=self._run, args=(client, n, kind), daemon=True)
            self.threads.append(thread)
            thread.start()
        return self

    def _run(self, client: Any, n: int, kind: str) -> None:
        for i in range(self.per_client):
            if self.stop.is_set():
                return
            mid = str(uuid.uuid4())
            who = f"{kind}-user-{i % self.identities}"
            ok, _ = client.track(
                user_id=who, event="Tick", properties={"n": f"{n}-{i}"}, message_id=mid
            )
            if ok:
                with self.lock:
                    self.enqueued[mid] = {"user": who, "n": f"{n}-{i}"}
            time.sleep(0.002)

    def finish(self, *, stop: bool = True) -> None:
        """Stop sending (or, ``stop=False``, let each client send its ``per_client``) and wait
        until the SDKs have sent (or given up on) everything."""
        if stop:
            self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        for client in self.clients:
            client.flush()
            client.join()

    @property
    def acknowledged(self) -> set[str]:
        with self.lock:
            return set(self.enqueued) - self.failed


def heap_figures(
    fake: FakeHeap, acked: set[str], key: Callable[[str], str] = str
) -> dict[str, int]:
    """What Heap holds of the acknowledged events: delivered (each key once), duplicated (an
    acknowledged event stored more than once), lost (acknowledged, not at Heap)."""
    keys = Counter(e.get("idempotency_key") for e in fake.events(APP))
    wanted = {key(m) for m in acked}
    return {
        "delivered": sum(1 for k in wanted if keys[k] >= 1),
        "duplicated": sum(1 for k in wanted if keys[k] > 1),
        "lost": sum(1 for k in wanted if keys[k] == 0),
    }


# --- the relay as a process --------------------------------------------------------------------

RELAY = """
import json, sys
from pathlib import Path
from heaprelay import server
from heaprelay.config import Config, DeliverySettings, Destination, Source
from heaprelay.transform import DestinationSettings

spec = json.loads(sys.argv[1])
settings = DestinationSettings(app_id=spec["app_id"], profile="heap", base_url=spec["heap_url"])
source = Source("sdk", spec["write_key"], (Destination("heap", settings),))
config = Config(
    sources=(source,), data_dir=Path(spec["data_dir"]), queue_url=spec["queue_url"],
    port=spec["port"], delivery=DeliverySettings(**spec["delivery"]), **spec["server"],
)
server.run(config, log_level="warning")
"""


class Relay:
    """``heaprelay serve``'s server lifecycle in a process of its own (so it can be killed),
    with delivery settings the flags do not expose."""

    def __init__(
        self,
        tmp: Path,
        heap_url: str,
        *,
        queue_url: str | None = None,
        server: dict[str, Any] | None = None,
        **delivery: Any,
    ) -> None:
        """``server``: more :class:`~heaprelay.config.Config` fields (timeouts, the cap)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "relay.log"
        self.db = tmp / "heaprelay.db"
        self.spec = {
            "app_id": APP,
            "write_key": KEY,
            "heap_url": heap_url,
            "data_dir": str(tmp),
            "queue_url": queue_url,
            "port": self.port,
            "delivery": delivery,
            "server": server or {},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", RELAY, json.dumps(self.spec)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

        def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                return httpx.get(self.url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, "the relay to start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        """Never leave the process behind (a test that failed half-way)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def queue_counts(relay: Relay) -> tuple[Counter[str], int]:
    """Jobs by state and the most leases any job had, read from the relay's queue."""
    url = relay.spec["queue_url"]
    if url is None:
        with sqlite3.connect(relay.db, timeout=30) as conn:
            rows = conn.execute("SELECT state, count(*), max(leases) FROM jobs GROUP BY state")
            found = rows.fetchall()
    else:
        with psycopg.connect(url, options="-c search_path=heaprelay", connect_timeout=5) as conn:
            found = conn.execute(
                "SELECT state, count(*), max(leases) FROM jobs GROUP BY state"
            ).fetchall()
    return Counter({s: n for s, n, _ in found}), max((m for _, _, m in found), default=0)


def settled(relay: Relay, total: int) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(sqlite3.Error, psycopg.Error):
            counts, _ = queue_counts(relay)
            return (
                sum(counts.values()) >= total
                and counts["pending"] + counts["leased"] + counts["retry"] == 0
            )
        return False

    return check


def settle_and_record(
    relay: Relay,
    fake: FakeHeap,
    senders: Senders,
    record: Callable[[Figures], None],
    scenario: str,
    *,
    rounds: int,
    note: str = "",
) -> Counter[str]:
    """After the faults: wait until the relay has settled every job, stop it cleanly, record
    the figures and check that every acknowledged event is at Heap exactly once. Returns
    the jobs by state."""
    acked = senders.acknowledged
    try:
        try:
            wait_until(settled(relay, len(acked)), 120, "the queue to settle")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: jobs by state, max leases {queue_counts(relay)}") from exc
        counts, _ = queue_counts(relay)
    finally:
        assert relay.stop() == 0
    got = heap_figures(fake, acked)
    record(
        Figures(
            scenario,
            rounds=rounds,
            sent=len(senders.enqueued),
            acknowledged=len(acked),
            delivered=got["delivered"],
            duplicated=got["duplicated"],
            lost=got["lost"],
            note=f"{note}Heap absorbed {fake.report()['duplicates']} re-sends by key; "
            f"queue {dict(counts)}",
        )
    )
    assert len(acked) > 1000
    assert got["lost"] == 0
    assert got["duplicated"] == 0
    assert counts["dead"] == 0
    return counts


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """A database of its own on the test server (dropped afterwards)."""
    with own_database(pg_url, "heaprelay_rel") as url:
        yield url


@dataclass
class PrivateCluster:
    """A throwaway PostgreSQL cluster of this suite's own, on its own port."""

    bin: Path
    data: Path
    port: int
    as_postgres: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}"
        self.ctl("-l", str(self.data / "server.log"), "-w", "-t", "60", "-o", options, "start")

    def restart(self, mode: str = "fast") -> None:
        # -l again: without it the new server would write to (and hold open) our pipe.
        self.ctl("-l", str(self.data / "server.log"), "-m", mode, "-w", "-t", "60", "restart")

    def new_database(self, prefix: str) -> str:
        """The URL of a new database of this cluster (the cluster goes at the session's end,
        its databases with it)."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivateCluster]:
    """initdb + pg_ctl from the distribution's PostgreSQL (``runuser -u postgres`` as root,
    as scripts/setup-test-env does), on a free port; stopped and deleted afterwards."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins or not (bins[-1] / "initdb").exists():
        if os.environ.get("HEAPRELAY_REQUIRE_PG") == "1":
            pytest.fail("PostgreSQL's server binaries are not installed (/usr/lib/postgresql)")
        pytest.skip("PostgreSQL's server binaries are not installed (/usr/lib/postgresql)")
    # Not under pytest's temporary folder: the postgres user must be able to reach it.
    data = Path(tempfile.mkdtemp(prefix="heaprelay-reliability-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(data, "postgres")
    initdb = [*as_postgres, str(bins[-1] / "initdb"), "-D", str(data), "-U", "postgres"]
    subprocess.run(
        [*initdb, "-A", "trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    cluster = PrivateCluster(bins[-1], data, free_port(), as_postgres)
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            cluster.ctl("-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)
