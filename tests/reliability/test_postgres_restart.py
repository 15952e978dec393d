"""PostgreSQL restarted under a running relay (ingest and delivery, role all) while real SDK
clients send: a fast restart, a crash-like immediate one, and another fast one, each while
delivery passes claim and complete small batches. The cluster is the suite's own (its own
port and data directory), so restarting it disturbs nobody else's tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heaprelay.heap.fake import FakeHeap, FakeHeapSettings
from heaprelay.testing.servers import serve_in_thread

from .conftest import Figures, PrivateCluster, Relay, Senders, settle_and_record, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def heap() -> Iterator[tuple[FakeHeap, str]]:
    fake = FakeHeap(FakeHeapSettings(rate_limits=False, latency=0.02, seed=8))
    with serve_in_thread(fake.app) as url:
        yield fake, url


def test_postgresql_restarts_mid_claim_lose_nothing(
    tmp_path: Path,
    heap: tuple[FakeHeap, str],
    private_pg: PrivateCluster,
    figures: Callable[[Figures], None],
) -> None:
    fake, heap_url = heap
    queue_url = private_pg.new_database("restart")
    with Relay(
        tmp_path,
        heap_url,
        queue_url=queue_url,
        batch_size=50,  # many small claims: a restart meets one in flight
        flush_interval=0.01,
        rate_limits=False,
        lease_seconds=3.0,
        retry_base=0.1,
        retry_cap=1.0,
        concurrency=4,
    ) as relay:
        relay.start()
        senders = Senders(relay.url, per_client=1_000_000).start()
        restarts = 0
        try:
            for mode in ("fast", "immediate", "fast"):
                seen = fake.report()["accepted_events"]
                wait_until(
                    lambda s=seen: fake.report()["accepted_events"] > s + 200, 60, "delivery"
                )
                private_pg.restart(mode)
                restarts += 1
            time.sleep(1.0)
        finally:
            senders.finish()
        settle_and_record(
            relay,
            fake,
            senders,
            figures,
            "PostgreSQL restarted mid-claim (fast, immediate)",
            rounds=restarts,
            note=f"SDK gave up on {len(senders.failed)}; ",
        )
