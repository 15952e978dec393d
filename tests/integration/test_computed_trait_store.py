"""A computed trait's snapshot in each queue store (memory, SQLite, PostgreSQL): values are
diffed against the last sync (new, changed, gone -> 0) and committed with their jobs; a
name synced as an audience cannot become a trait; a SQLite file from before computed traits
is upgraded in place and keeps its audiences."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from heaprelay.audiences import AudienceError, sync_members
from heaprelay.audiences.sync import sync_values
from heaprelay.config import Config, Destination, Source
from heaprelay.queue import open_queue
from heaprelay.queue.base import AudienceStore, CountQuery, Delivered, HistoryEvent, sum_event
from heaprelay.testing.postgres import own_database
from heaprelay.transform import DestinationSettings

NOW = 1_767_323_045.0


def config(tmp_path: Path) -> Config:
    heap = Destination("heap", DestinationSettings(app_id="1"))
    return Config(sources=(Source("web", "web-key", (heap,)),), data_dir=tmp_path)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'heaprelay.db'}"
    else:
        pg_url: str = request.getfixturevalue("pg_url")
        with own_database(pg_url, "heaprelay_trait") as url:
            yield url


async def sent(queue: Any) -> dict[str, object]:
    """The traits of every update job in the queue, by user (the last one wins)."""
    jobs = await queue.claim("w", limit=1000, lease_seconds=60.0, now=NOW + 10)
    out: dict[str, object] = {}
    for job in jobs:
        message = orjson.loads(job.payload)
        out[message["userId"]] = message["traits"]["orders"]
    await queue.complete([Delivered(job.id) for job in jobs], now=NOW + 10)
    return out


def test_values_are_diffed_and_stored(tmp_path: Path, queue_url: str) -> None:
    cfg = config(tmp_path)

    async def run() -> None:
        queue = await open_queue(queue_url)
        try:
            assert isinstance(queue, AudienceStore)

            async def sync(values: dict[str, float], at: float) -> Any:
                return await sync_values(
                    queue,
                    queue,
                    cfg,
                    name="Orders",
                    source="web",
                    key="orders",
                    values=values,
                    now=at,
                )

            first = await sync({"a": 1.0, "b": 2.0}, NOW)
            assert (first.first, first.entered, first.changed, first.left) == (
                True,
                ("a", "b"),
                (),
                (),
            )
            assert await sent(queue) == {"a": 1, "b": 2}
            second = await sync({"a": 1.0, "b": 3.0, "c": 1.0}, NOW + 1)
            assert (second.entered, second.changed, second.left, second.unchanged) == (
                ("c",),
                ("b",),
                (),
                1,
            )
            assert await sent(queue) == {"b": 3, "c": 1}
            assert await queue.audience_values("Orders") == {"a": 1.0, "b": 3.0, "c": 1.0}
            third = await sync({"c": 2.5}, NOW + 2)
            assert (third.entered, third.changed, third.left) == ((), ("c",), ("a", "b"))
            assert await sent(queue) == {"a": 0, "b": 0, "c": 2.5}
            assert await queue.audience_values("Orders") == {"c": 2.5}
            fourth = await sync({"c": 2.5}, NOW + 3)
            assert (fourth.entered, fourth.changed, fourth.left, fourth.jobs) == ((), (), (), 0)
            record = await queue.audience("Orders")
            assert record is not None
            assert (record.kind, record.members, record.syncs) == ("trait", 1, 4)
            # An audience of that name cannot follow a trait's syncs.
            with pytest.raises(AudienceError, match="a computed trait"):
                await sync_members(
                    queue,
                    queue,
                    cfg,
                    name="Orders",
                    source="web",
                    key="orders",
                    members={"a": {}},
                    now=NOW + 4,
                )
        finally:
            await queue.close()

    asyncio.run(run())


def test_a_sqlite_file_from_before_computed_traits_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'heaprelay.db'}"
    cfg = config(tmp_path)

    async def first() -> None:
        queue = await open_queue(url)
        try:
            await sync_members(
                queue,
                queue,
                cfg,
                name="Buyers",
                source="web",
                key=None,  # type: ignore[arg-type]
                members={"u1": {}},
                now=NOW,
            )
        finally:
            await queue.close()

    asyncio.run(first())
    with sqlite3.connect(tmp_path / "heaprelay.db") as conn:  # as an older relay left it
        conn.execute("ALTER TABLE audience_members DROP COLUMN value")
        conn.execute("ALTER TABLE audiences DROP COLUMN kind")
        conn.execute("ALTER TABLE audience_events DROP COLUMN value")

    async def again() -> None:
        queue = await open_queue(url)
        try:
            assert isinstance(queue, AudienceStore)
            assert await queue.audience_members("Buyers") == {"u1"}
            record = await queue.audience("Buyers")
            assert record is not None
            assert record.kind == "audience"
            result = await sync_values(
                queue,
                queue,
                cfg,
                name="Orders",
                source="web",
                key=None,
                values={"u1": 2.0},
                now=NOW + 1,
            )
            assert result.entered == ("u1",)
            assert await queue.audience_values("Orders") == {"u1": 2.0}
            event = HistoryEvent("web", "u1", sum_event("Order", "revenue"), NOW, None, "m", 4.0)
            await queue.append([], now=NOW, history=[event])
            summed = CountQuery("web", "Order", NOW - 1, NOW, "revenue")
            assert await queue.history_sums(summed) == {"u1": 4.0}
        finally:
            await queue.close()

    asyncio.run(again())


def test_counts_and_sums_of_the_history(queue_url: str) -> None:
    """One value per messageId (the same event timed twice counts once), the window's ends
    included, other events and sources apart."""
    order = sum_event("Order", "revenue")
    rows = [
        ("u1", "m1", NOW - 10, 10.0),
        ("u1", "m1", NOW - 9, 10.0),  # the same messageId timed otherwise
        ("u1", "m2", NOW - 100, 2.5),  # the window's start
        ("u1", "m3", NOW - 101, 7.0),  # before it
        ("u2", "m4", NOW, 0.0),  # the window's end; a sum of 0 is a value
        ("u3", "m5", NOW - 5, None),  # an order without a numeric revenue
    ]
    history: list[HistoryEvent] = []
    for user, message, ts, value in rows:
        history.append(HistoryEvent("web", user, "Order", ts, None, message))
        if value is not None:
            history.append(HistoryEvent("web", user, order, ts, None, message, value))
    history.append(HistoryEvent("other", "u1", order, NOW, None, "m9", 5.0))

    async def run() -> None:
        queue = await open_queue(queue_url)
        try:
            await queue.append([], now=NOW, history=history)
            window = CountQuery("web", "Order", NOW - 100, NOW)
            assert await queue.history_counts(window) == {"u1": 2, "u2": 1, "u3": 1}
            summed = CountQuery("web", "Order", NOW - 100, NOW, "revenue")
            assert await queue.history_sums(summed) == {"u1": 12.5, "u2": 0.0}
            assert await queue.history_sums(CountQuery("web", "Order", 0, NOW, "n")) == {}
        finally:
            await queue.close()

    asyncio.run(run())
