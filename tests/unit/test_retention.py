"""The retention service prunes finished jobs older than the configured retention."""

import asyncio

from heaprelay.clock import ManualClock
from heaprelay.config import Config
from heaprelay.queue import Delivered, NewJob
from heaprelay.queue.memory import MemoryQueue
from heaprelay.queue.retention import retention_service
from heaprelay.runtime import Runtime


def test_prunes_what_is_older_than_the_retention_and_stops_when_told() -> None:
    async def main() -> None:
        clock = ManualClock()
        queue = MemoryQueue()
        now = clock.now()
        await queue.append(
            [NewJob("s", "d", f"m{i}", f"k{i}", b"{}", now) for i in range(3)], now=now
        )
        a, b, _c = await queue.claim("w", limit=3, lease_seconds=60, now=now)
        await queue.complete([Delivered(a.id)], now=now - 3601)
        await queue.complete([Delivered(b.id)], now=now - 3599)
        runtime = Runtime(config=Config(sources=(), retention=3600.0), clock=clock, queue=queue)
        task = asyncio.create_task(retention_service(runtime, interval=60))
        for _ in range(50):
            await asyncio.sleep(0)
            if (await queue.stats()).by_state["delivered"] == 1:
                break
        assert (await queue.stats()).by_state == {
            "pending": 0,
            "leased": 1,
            "retry": 0,
            "delivered": 1,
            "dead": 0,
            "skipped": 0,
        }
        runtime.stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
