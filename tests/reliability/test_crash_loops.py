"""kill -9 crash loops of the relay (ingest and delivery in one process) while real SDK
clients send and delivery runs, on SQLite and on PostgreSQL: at the end every event the
relay acknowledged is at the fake Heap exactly once (by idempotency key), none twice."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import serve_in_thread

from .conftest import Figures, Relay, Senders, settle_and_record, wait_until

pytestmark = pytest.mark.slow

ROUNDS = 5


@pytest.fixture
def heap() -> Iterator[tuple[FakeHeap, str]]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, latency=0.01, seed=3))
    with serve_in_thread(fake.app) as url:
        yield fake, url


def crash_loop(
    relay: Relay, fake: FakeHeap, record: Callable[[Figures], None], scenario: str
) -> None:
    rng = random.Random(12)
    relay.start()
    senders = Senders(relay.url, per_client=1_000_000).start()
    kills = 0
    try:
        for _ in range(ROUNDS):
            # Kill while SDK batches are in flight and delivery passes hold leases.
            wait_until(lambda: fake.report()["accepted_events"] > 0, 30, "delivery to run")
            time.sleep(rng.uniform(0.5, 1.5))
            relay.kill()
            kills += 1
            relay.start()
        time.sleep(1.0)
    finally:
        senders.finish()
    settle_and_record(relay, fake, senders, record, scenario, rounds=kills)
    assert "Traceback" not in relay.log.read_text()


DELIVERY = {
    "lease_seconds": 2.0,
    "retry_base": 0.1,
    "retry_cap": 1.0,
    "flush_interval": 0.02,
    "rate_limits": False,
    "concurrency": 4,
}


def test_kill_9_crash_loop_sqlite(
    tmp_path: Path, heap: tuple[FakeHeap, str], figures: Callable[[Figures], None]
) -> None:
    fake, url = heap
    with Relay(tmp_path, url, **DELIVERY) as relay:
        crash_loop(relay, fake, figures, "kill -9 loop, SDK clients, SQLite")


@pytest.mark.postgres
def test_kill_9_crash_loop_postgresql(
    tmp_path: Path,
    heap: tuple[FakeHeap, str],
    pg_database: str,
    figures: Callable[[Figures], None],
) -> None:
    fake, url = heap
    with Relay(tmp_path, url, queue_url=pg_database, **DELIVERY) as relay:
        crash_loop(relay, fake, figures, "kill -9 loop, SDK clients, PostgreSQL")
