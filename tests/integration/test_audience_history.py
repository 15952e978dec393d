"""Ingest records the audiences' history: what ``/v1/batch`` acknowledged for a source with
audiences is in its history (SQLite, PostgreSQL); a source without audiences records
nothing; retention prunes it to the source's window."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from heaprelay.clock import ManualClock
from heaprelay.config import Audience, AudienceRule, Config, Destination, Source
from heaprelay.queue import open_queue
from heaprelay.queue.base import AudienceHistory, MemberQuery
from heaprelay.queue.retention import retention_service
from heaprelay.runtime import Runtime
from heaprelay.server import build_app
from heaprelay.testing.servers import serve_in_thread
from heaprelay.transform import DestinationSettings

DAY = 86400.0
NOW = 1_767_323_045.0
ISO_NOW = "2026-01-02T03:04:05.000Z"


def sources() -> tuple[Source, ...]:
    def source(name: str) -> Source:
        heap = Destination(f"{name}-heap", DestinationSettings(app_id="1"))
        return Source(name, f"{name}-key", (heap,))

    return source("web"), source("backend")


def config(tmp_path: Path, queue_url: str | None) -> Config:
    rule = AudienceRule(event="Order Completed", within=30 * DAY, at_least=2)
    audience = Audience("Buyers", "buyers", "web", 3600.0, rule)
    web, backend = sources()
    web = Source(web.name, web.write_key, web.destinations, history_window=30 * DAY)
    return Config(
        sources=(web, backend), data_dir=tmp_path, queue_url=queue_url, audiences=(audience,)
    )


def batch(user: str, when: str) -> dict[str, Any]:
    track = {"type": "track", "userId": user, "event": "Order Completed", "timestamp": when}
    identify = {"type": "identify", "userId": user, "traits": {"plan": "pro"}, "timestamp": when}
    return {"batch": [track, dict(track), identify]}  # no sentAt: the time is kept as sent


def test_acknowledged_events_are_in_the_history(tmp_path: Path, store_url: str) -> None:
    cfg = config(tmp_path, store_url)
    with serve_in_thread(build_app(cfg, services=[])) as url:
        for key, user in (("web-key", "u1"), ("backend-key", "u2")):
            answer = httpx.post(f"{url}/v1/batch", json=batch(user, ISO_NOW), auth=(key, ""))
            assert answer.status_code == 200, answer.text

    async def check() -> None:
        queue = await open_queue(store_url)
        try:
            assert isinstance(queue, AudienceHistory)
            query = MemberQuery(
                "web", "Order Completed", 2, NOW - DAY, NOW + DAY, (("plan", "pro"),)
            )
            assert await queue.history_members(query) == {"u1"}
            # backend has no audience: nothing of it was recorded.
            other = MemberQuery("backend", "Order Completed", 1, 0.0, NOW * 2)
            assert await queue.history_members(other) == set()
            # Retention keeps 30 days of web's history: 31 days later, nothing is left.
            clock = ManualClock(NOW + 31 * DAY)
            runtime = Runtime(config=cfg, clock=clock, queue=queue)
            task = asyncio.create_task(retention_service(runtime, interval=3600))
            for _ in range(600):  # the service prunes as it starts
                if not await queue.history_members(query):
                    break
                await asyncio.sleep(0.05)
            runtime.stopping.set()
            await task
            assert await queue.history_members(query) == set()
        finally:
            await queue.close()

    asyncio.run(check())
