"""A slow worker whose lease expired and was taken over: its late outcomes are ignored.

The router's pass is held inside a real HTTP request (a loopback server that answers only when
told to) while its lease runs out and another worker takes the jobs over; the slow pass then
ends with retryable answers. Its RetryAt outcomes must not touch the jobs the new holder has.
"""

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from heaprelay.clock import ManualClock
from heaprelay.config import DeliverySettings, Destination
from heaprelay.heap.client import HeapClient
from heaprelay.queue.base import Delivered, NewJob, Queue
from heaprelay.queue.memory import MemoryQueue
from heaprelay.queue.sqlite import SQLiteQueue
from heaprelay.router import Router
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

LEASE = 60.0


class Gate:
    """Heap stand-in that holds every request until ``open`` is set, then answers 503."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.open = threading.Event()

    async def handle(self, request: Request) -> PlainTextResponse:
        await request.body()
        self.arrived.set()
        await asyncio.to_thread(self.open.wait, 30)
        return PlainTextResponse("busy", status_code=503)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])


@pytest.fixture
def gate() -> Iterator[tuple[Gate, str]]:
    g = Gate()
    with serve_in_thread(g.app()) as url:
        yield g, url
        g.open.set()


def identify(n: int, traits: dict[str, int]) -> NewJob:
    message = {
        "type": "identify",
        "userId": "u1",
        "messageId": f"m{n}",
        "traits": traits,
        "timestamp": "2026-01-01T00:00:00Z",
    }
    return NewJob("src", "heap", f"m{n}", "u1", orjson.dumps(message), 0.0)


async def open_queue(kind: str, tmp_path: Path) -> Queue:
    return MemoryQueue() if kind == "memory" else await SQLiteQueue.open(tmp_path / "q.db")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_late_outcomes_of_a_taken_over_pass_are_ignored(
    kind: str, tmp_path: Path, gate: tuple[Gate, str]
) -> None:
    g, url = gate

    async def main() -> None:
        queue = await open_queue(kind, tmp_path)
        clock = ManualClock()
        settings = DeliverySettings(flush_interval=0, rate_limits=False, concurrency=1)
        dest = Destination(
            id="heap",
            settings=DestinationSettings(
                app_id="4242", profile="segment-actions", region_setting="US", base_url=url
            ),
            retry_window=3600.0,
        )
        try:
            await queue.append([identify(1, {"plan": 1}), identify(2, {"plan": 2})], now=0.0)
            async with HeapClient(timeout=30) as client:
                router = Router(queue, {"heap": dest}, client, clock, settings, lease_seconds=LEASE)
                slow = asyncio.create_task(router.run_once(worker="slow"))
                assert await asyncio.to_thread(g.arrived.wait, 20), "the pass sent nothing"
                clock.advance(LEASE + 1)
                taken = await queue.claim("other", limit=10, lease_seconds=LEASE, now=clock.now())
                assert len(taken) == 2
                g.open.set()
                assert await asyncio.wait_for(slow, 20) == 2
                # The slow pass got 503s: without lease ownership its RetryAt would have put
                # both jobs into retry under the new holder's feet.
                assert router.stats.retried_jobs == 2
                stats = await queue.stats()
                assert {k: v for k, v in stats.by_state.items() if v} == {"leased": 2}
                await queue.complete(
                    [Delivered(j.id, lease=j.lease) for j in taken],
                    now=clock.now(),
                    worker="other",
                )
                stats = await queue.stats()
                assert {k: v for k, v in stats.by_state.items() if v} == {"delivered": 2}
        finally:
            await queue.close()

    asyncio.run(main())


def test_a_queue_file_from_before_lease_tokens_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from heaprelay.queue.sqlite import QUERIES

    path = tmp_path / "old.db"
    old_schema = "\n".join(line for line in QUERIES["schema"].splitlines() if "leases" not in line)
    assert old_schema != QUERIES["schema"]
    conn = sqlite3.connect(path)
    conn.executescript(old_schema)
    conn.execute(
        "INSERT INTO jobs (source, destination, message_id, order_key, payload, received_at,"
        " state, worker, due_at) VALUES ('s', 'heap', 'm1', 'u1', '{}', 0, 'leased', 'old', 10)"
    )
    conn.commit()
    conn.close()

    async def main() -> None:
        queue = await SQLiteQueue.open(path)
        try:
            # A job leased before the upgrade (token 0): only its holder's outcomes count.
            await queue.complete([Delivered(1)], now=5.0, worker="someone-else")
            [job] = await queue.claim("new", limit=5, lease_seconds=LEASE, now=11.0)
            assert job.lease == 1
            await queue.complete([Delivered(job.id, lease=0)], now=12.0, worker="old")
            await queue.complete([Delivered(job.id, lease=1)], now=12.0, worker="new")
            stats = await queue.stats()
            assert {k: v for k, v in stats.by_state.items() if v} == {"delivered": 1}
        finally:
            await queue.close()
        # Opening it again does not try to add the column twice.
        await (await SQLiteQueue.open(path)).close()

    asyncio.run(main())
