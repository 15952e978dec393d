"""The audience store (queue/base.py, AudienceStore) and sync_members on every queue backend:
the diff rules, the snapshot seen from another handle, one transaction for updates and
snapshot (a database fault between them leaves neither), and conflicts."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psycopg
import pytest

from heaprelay.audiences import AudienceError, message_id, sync_members
from heaprelay.config import Config, Destination, Source
from heaprelay.queue.base import AudienceConflict, AudienceSync, Delivered, Queue
from heaprelay.testing.queue_contract import QueueFactory
from heaprelay.transform import DestinationSettings

NOW = 1_700_000_000.0
SOURCE = Source(
    "web",
    "wk",
    (
        Destination("heap-a", DestinationSettings(app_id="1")),
        Destination("heap-b", DestinationSettings(app_id="2", profile="segment")),
        Destination("off", DestinationSettings(app_id="3"), enabled=False),
    ),
)
CONFIG = Config(
    sources=(SOURCE, Source("app", "k2", (Destination("x", DestinationSettings("4")),)))
)


def run(factory: QueueFactory, body: Callable[[Queue], Awaitable[None]]) -> None:
    async def main() -> None:
        queue = await factory()
        try:
            await body(queue)
        finally:
            await queue.close()

    asyncio.run(main())


async def do_sync(queue: Any, members: dict[str, dict[str, Any]], **kw: Any) -> Any:
    args: dict[str, Any] = {"name": "VIP Users", "source": "web", "key": None, "now": NOW}
    return await sync_members(queue, queue, CONFIG, **{**args, **kw}, members=members)


async def drain(queue: Queue) -> list[dict[str, Any]]:
    """Claim and deliver everything; the messages, in claim order, with their destination."""
    jobs = await queue.claim("w", limit=10_000, lease_seconds=60, now=NOW)
    await queue.complete([Delivered(j.id) for j in jobs], now=NOW)
    return [{"dest": j.destination, **orjson.loads(j.payload)} for j in jobs]


def updates(messages: list[dict[str, Any]], dest: str = "heap-a") -> dict[str, dict[str, Any]]:
    return {m["userId"]: m["traits"] for m in messages if m["dest"] == dest}


def test_first_sync_sends_every_member_then_only_the_differences(
    queue_factory: QueueFactory,
) -> None:
    async def body(queue: Any) -> None:
        one = await do_sync(queue, {"a": {"plan": "pro"}, "b": {}})
        assert (one.key, one.sync, one.first, one.entered, one.left) == (
            "vip_users",
            1,
            True,
            ("a", "b"),
            (),
        )
        assert (one.jobs, one.destinations) == (4, ("heap-a", "heap-b"))
        sent = await drain(queue)
        assert updates(sent) == {"a": {"plan": "pro", "vip_users": True}, "b": {"vip_users": True}}
        assert updates(sent, "heap-b") == updates(sent)
        assert {m["messageId"] for m in sent} == {message_id("vip_users", 1, u) for u in "ab"}
        assert all(m["type"] == "identify" and "receivedAt" in m for m in sent)

        same = await do_sync(queue, {"a": {"plan": "free"}, "b": {}})
        assert (same.sync, same.entered, same.left, same.unchanged, same.jobs) == (2, (), (), 2, 0)
        assert await drain(queue) == []

        three = await do_sync(queue, {"b": {}, "c": {"n": 1}})
        assert (three.entered, three.left, three.unchanged, three.members) == (("c",), ("a",), 1, 2)
        assert updates(await drain(queue)) == {
            "a": {"vip_users": False},
            "c": {"n": 1, "vip_users": True},
        }

        # Another handle (another process) sees the snapshot.
        other: Any = await queue_factory(fresh=False)
        try:
            assert await other.audience_members("VIP Users") == {"b", "c"}
            record = await other.audience("VIP Users")
            assert (record.syncs, record.members, record.last_entered, record.last_left) == (
                3,
                2,
                1,
                1,
            )
            assert await other.audience_job_states("VIP Users") == {
                "heap-a": {"delivered": 2},
                "heap-b": {"delivered": 2},
            }
            if other is not queue:
                await other.close()
        finally:
            pass
        assert [a.name for a in await queue.audiences()] == ["VIP Users"]

    run(queue_factory, body)


def test_dry_run_changes_nothing(queue_factory: QueueFactory) -> None:
    async def body(queue: Any) -> None:
        dry = await do_sync(queue, {"a": {}}, dry_run=True)
        assert (dry.entered, dry.jobs, dry.dry_run) == (("a",), 0, True)
        assert await queue.audience("VIP Users") is None
        assert (await queue.stats()).by_state["pending"] == 0

    run(queue_factory, body)


def test_key_and_source_are_fixed_and_keys_are_not_shared(queue_factory: QueueFactory) -> None:
    async def body(queue: Any) -> None:
        await do_sync(queue, {"a": {}}, key="vip")
        with pytest.raises(AudienceError, match="has key 'vip' since its first sync"):
            await do_sync(queue, {"a": {}, "b": {}}, key="vip_users")
        with pytest.raises(AudienceError, match="goes to source 'web'"):
            await do_sync(queue, {"a": {}}, source="app")
        with pytest.raises(AudienceError, match="is already audience 'VIP Users'"):
            await do_sync(queue, {"z": {}}, name="Very Important", key="vip")
        with pytest.raises(AudienceError, match="no source 'nope'"):
            await do_sync(queue, {"a": {}}, name="Other", source="nope")
        assert (await queue.audience("VIP Users")).syncs == 1
        assert (await queue.stats()).by_state["pending"] == 2  # the first sync's only

    run(queue_factory, body)


def test_a_sync_committed_meanwhile_is_a_conflict(queue_factory: QueueFactory) -> None:
    async def body(queue: Any) -> None:
        await do_sync(queue, {"a": {}})
        stale = AudienceSync("VIP Users", "vip_users", "web", 1, ["b"], [], "p-")
        with pytest.raises(AudienceConflict, match="synced meanwhile"):
            await queue.commit_audience_sync(stale, [], now=NOW)
        assert await queue.audience_members("VIP Users") == {"a"}

    run(queue_factory, body)


async def _break_members(queue: Any, on: bool) -> None:
    """Make every insert into audience_members fail (a real database error), or stop it."""
    if hasattr(queue, "path"):  # SQLite
        with sqlite3.connect(queue.path) as conn:
            if on:
                conn.execute(
                    "CREATE TRIGGER break_members BEFORE INSERT ON audience_members "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
            else:
                conn.execute("DROP TRIGGER break_members")
        return
    async with await psycopg.AsyncConnection.connect(
        queue.url, autocommit=True, options=f"-c search_path={queue.schema}"
    ) as conn:
        if on:
            await conn.execute(
                "CREATE FUNCTION break_members() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
            )
            await conn.execute(
                "CREATE TRIGGER break_members BEFORE INSERT ON audience_members "
                "FOR EACH STATEMENT EXECUTE FUNCTION break_members()"
            )
        else:
            await conn.execute("DROP TRIGGER break_members ON audience_members")
            await conn.execute("DROP FUNCTION break_members()")


def test_a_fault_between_enqueue_and_snapshot_leaves_neither(queue_factory: QueueFactory) -> None:
    """The jobs are inserted first, then the snapshot: a database error in the snapshot's
    write rolls the jobs back too, and the next run sends the same diff once."""

    async def body(queue: Any) -> None:
        if not hasattr(queue, "path") and not hasattr(queue, "schema"):
            pytest.skip("the memory model has no transactions to break")
        await do_sync(queue, {"a": {}})
        await drain(queue)
        received = (await queue.stats()).totals["heap-a"]["received"]
        await _break_members(queue, on=True)
        with pytest.raises((sqlite3.Error, psycopg.Error), match="injected fault"):
            await do_sync(queue, {"a": {}, "b": {}})
        assert (await queue.stats()).totals["heap-a"]["received"] == received
        assert await drain(queue) == []
        assert (await queue.audience("VIP Users")).syncs == 1
        await _break_members(queue, on=False)
        again = await do_sync(queue, {"a": {}, "b": {}})
        assert (again.sync, again.entered) == (2, ("b",))
        sent = await drain(queue)
        assert [(m["dest"], m["userId"]) for m in sent] == [("heap-a", "b"), ("heap-b", "b")]
        assert await drain(queue) == []

    run(queue_factory, body)
