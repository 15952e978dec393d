"""The SQLite queue on real files: durability, group commit, dedupe, ordering, leases, DLQ."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from heaprelay.messages.reasons import Reason
from heaprelay.queue import open_queue
from heaprelay.queue.base import DeadLetter, Delivered, NewJob, Release, RetryAt, Skipped
from heaprelay.queue.sqlite import SQLiteQueue

T0 = 1_700_000_000.0


def job(mid: str, key: str = "u1", dest: str = "d1", source: str = "s1", window: float = 3600):
    return NewJob(source, dest, mid, key, f'{{"messageId":"{mid}"}}'.encode(), T0, window)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q" / "heaprelay.db"


def run(coro):
    return asyncio.run(coro)


def test_open_queue_url_creates_the_file_in_wal_mode(path: Path):
    async def go():
        q = await open_queue(f"sqlite://{path}")
        assert isinstance(q, SQLiteQueue)
        await q.append([job("m1")], now=T0)
        await q.close()

    run(go())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT message_id, state FROM jobs").fetchall() == [("m1", "pending")]


def test_appended_jobs_survive_reopening(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        await q.append([job("m1"), job("m2")], now=T0)
        await q.close()
        q = await SQLiteQueue.open(path)
        claimed = await q.claim("w", limit=10, lease_seconds=30, now=T0)
        await q.close()
        return claimed

    claimed = run(go())
    assert [(j.message_id, j.payload, j.attempts) for j in claimed] == [
        ("m1", b'{"messageId":"m1"}', 0),
        ("m2", b'{"messageId":"m2"}', 0),
    ]


def test_concurrent_appends_share_commits_and_all_land(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        results = await asyncio.gather(
            *(
                q.append([job(f"m{i}-{k}", key=f"u{i}") for k in range(5)], now=T0)
                for i in range(200)
            )
        )
        stats = await q.stats()
        await q.close()
        return results, stats

    results, stats = run(go())
    assert sum(r.stored for r in results) == 1000
    assert {k: v for k, v in stats.by_state.items() if v} == {"pending": 1000}
    conn = sqlite3.connect(path)
    # Rows of one append are contiguous ids (each append is one unit in the transaction).
    rows = conn.execute("SELECT id, message_id FROM jobs ORDER BY id").fetchall()
    by_append: dict[str, list[int]] = {}
    for row_id, mid in rows:
        by_append.setdefault(mid.split("-")[0], []).append(row_id)
    assert all(ids == list(range(ids[0], ids[0] + 5)) for ids in by_append.values())


def test_duplicates_within_the_window_are_stored_then_skipped_by_the_claim(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        results = [
            await q.append([job("m1"), job("m1", dest="d2")], now=T0),
            await q.append([job("m1"), job("m1", source="s2")], now=T0 + 10),
            await q.append([job("m1")], now=T0 + 3601),  # the first one's window has passed
            await q.append([job("m9"), job("m9")], now=T0),
            await q.append([job("m1", window=0)], now=T0 + 5),  # never checked
        ]
        before = await q.stats()
        claimed = await q.claim("w", limit=100, lease_seconds=30, now=T0 + 3601)
        after = await q.stats()
        await q.close()
        return results, before, claimed, after

    results, before, claimed, after = run(go())
    assert [r.stored for r in results] == [2, 2, 1, 2, 1]
    assert {k: v for k, v in before.by_state.items() if v} == {"pending": 8}
    assert [(j.source, j.destination, j.message_id) for j in claimed] == [
        ("s1", "d1", "m1"),
        ("s1", "d2", "m1"),
        ("s2", "d1", "m1"),  # another source: not a duplicate
        ("s1", "d1", "m1"),
        ("s1", "d1", "m9"),
        ("s1", "d1", "m1"),
    ]
    assert {k: v for k, v in after.by_state.items() if v} == {"leased": 6, "skipped": 2}
    assert after.by_reason == {"duplicate": 2}
    conn = sqlite3.connect(path)
    skipped = conn.execute(
        "SELECT id, detail, finished_at FROM jobs WHERE state = 'skipped' ORDER BY id"
    ).fetchall()
    conn.close()
    detail = "same messageId from the same source within the dedupe window"
    assert skipped == [(3, detail, T0 + 3601), (7, detail, T0 + 3601)]


def test_duplicates_across_appends_of_one_group_commit(path: Path):
    # Appends waiting together are committed in one transaction: all stored. Claims, a few
    # jobs at a time, then deliver each messageId once, judged by each append's own "now".
    async def go():
        q = await SQLiteQueue.open(path)
        await q.append([job("old")], now=T0)
        results = await asyncio.gather(
            *(q.append([job(f"u{i}"), job("dup"), job("old")], now=T0 + 10) for i in range(50)),
            q.append([job("old"), job("dup")], now=T0 + 3601),
        )
        handed = []
        while jobs := await q.claim("w", limit=7, lease_seconds=30, now=T0 + 3601):
            handed += jobs
            await q.complete([Delivered(j.id) for j in jobs], now=T0 + 3601)
        stats = await q.stats()
        await q.close()
        return results, handed, stats

    results, handed, stats = run(go())
    assert [r.stored for r in results] == [3] * 50 + [2]
    ids = [j.message_id for j in handed]
    # "old" is past its window at T0 + 3601; "dup" was first appended at T0 + 10, so is not.
    assert {mid: ids.count(mid) for mid in set(ids) if ids.count(mid) > 1} == {"old": 2}
    assert len(ids) == 1 + 50 + 1 + 1
    assert [j.id for j in handed] == sorted(j.id for j in handed)
    assert stats.by_state["delivered"] == 53
    assert stats.by_reason == {"duplicate": 49 + 50 + 1}


def test_claim_keeps_per_key_order_and_blocks_on_leased_and_retrying_keys(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        await q.append([job("a1", "A"), job("b1", "B"), job("a2", "A"), job("a3", "A")], now=T0)
        await q.append([job("a1", "A", dest="d2")], now=T0)
        first = await q.claim("w1", limit=2, lease_seconds=30, now=T0)
        # A is leased (a1) and B is leased: only d2's A is claimable.
        second = await q.claim("w2", limit=10, lease_seconds=1000, now=T0 + 1)
        third = await q.claim("w3", limit=10, lease_seconds=30, now=T0 + 2)
        a1 = first[0]
        await q.complete(
            [RetryAt(a1.id, at=T0 + 100, reason="503"), Delivered(first[1].id)], now=T0 + 3
        )
        while_retrying = await q.claim("w3", limit=10, lease_seconds=30, now=T0 + 50)
        after_retry = await q.claim("w3", limit=10, lease_seconds=30, now=T0 + 100)
        await q.close()
        return first, second, third, while_retrying, after_retry

    first, second, third, while_retrying, after_retry = run(go())
    assert [j.message_id for j in first] == ["a1", "b1"]
    assert [(j.message_id, j.destination) for j in second] == [("a1", "d2")]
    assert third == []
    assert while_retrying == []
    assert [(j.message_id, j.attempts) for j in after_retry] == [("a1", 1), ("a2", 0), ("a3", 0)]
    assert after_retry[0].first_attempt_at == T0 + 3


def test_expired_lease_is_claimable_again_and_release_keeps_order(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        await q.append([job("a1"), job("a2")], now=T0)
        lost = await q.claim("dead-worker", limit=1, lease_seconds=10, now=T0)
        blocked = await q.claim("w", limit=5, lease_seconds=10, now=T0 + 5)
        again = await q.claim("w", limit=5, lease_seconds=10, now=T0 + 11)
        await q.complete([Release(again[0].id), Release(again[1].id)], now=T0 + 12)
        released = await q.claim("w", limit=5, lease_seconds=10, now=T0 + 12)
        await q.close()
        return lost, blocked, again, released

    lost, blocked, again, released = run(go())
    assert [j.message_id for j in lost] == ["a1"]
    assert blocked == []
    assert [(j.message_id, j.attempts) for j in again] == [("a1", 0), ("a2", 0)]
    assert [j.message_id for j in released] == ["a1", "a2"]


def test_dead_and_skipped_do_not_block_and_dead_letters_replay_purge(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        await q.append([job("a1"), job("a2"), job("a3"), job("b1", "B", dest="d2")], now=T0)
        jobs = await q.claim("w", limit=10, lease_seconds=30, now=T0)
        ids = {j.message_id: j.id for j in jobs}
        await q.complete(
            [
                DeadLetter(ids["a1"], Reason.HEAP_REJECTED, "400 from Heap", "400 bad"),
                Skipped(ids["a2"], Reason.FILTERED_INTEGRATIONS, "Heap: false"),
                DeadLetter(ids["b1"], Reason.RETRY_WINDOW_EXCEEDED, "4 h of 503"),
                Release(ids["a3"]),
            ],
            now=T0 + 1,
        )
        next_claim = await q.claim("w", limit=10, lease_seconds=30, now=T0 + 2)
        letters = await q.dead_letters()
        only_d2 = await q.dead_letters(destination="d2")
        one = await q.dead_letter(ids["a1"])
        missing = await q.dead_letter(ids["a3"])
        stats = await q.stats()
        replayed = await q.replay([ids["a1"]], now=T0 + 3)
        after_replay = await q.dead_letters()
        purged = await q.purge(None)
        after_purge = await q.stats()
        await q.close()
        return (
            ids,
            next_claim,
            letters,
            only_d2,
            one,
            missing,
            stats,
            replayed,
            after_replay,
            purged,
            after_purge,
        )

    (
        _ids,
        next_claim,
        letters,
        only_d2,
        one,
        missing,
        stats,
        replayed,
        after_replay,
        purged,
        after_purge,
    ) = run(go())
    assert [j.message_id for j in next_claim] == ["a3"]
    assert [d.message_id for d in letters] == ["a1", "b1"]
    assert [d.message_id for d in only_d2] == ["b1"]
    assert one is not None
    assert (one.reason, one.detail, one.answer, one.attempts, one.dead_at) == (
        "heap_rejected",
        "400 from Heap",
        "400 bad",
        1,
        T0 + 1,
    )
    assert missing is None
    assert stats.by_reason == {
        "heap_rejected": 1,
        "filtered_integrations": 1,
        "retry_window_exceeded": 1,
    }
    assert stats.by_destination["d2"] == {"dead": 1}
    assert stats.oldest_pending_received_at == T0
    assert replayed == 1
    assert [d.message_id for d in after_replay] == ["b1"]
    assert purged == 1
    assert after_purge.by_state["dead"] == 0
    assert after_purge.by_state["pending"] == 1  # replayed a1 is pending again


def test_prune_deletes_finished_jobs_older_than_the_cut(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        await q.append([job("a1", "A"), job("b1", "B"), job("c1", "C")], now=T0)
        jobs = await q.claim("w", limit=10, lease_seconds=30, now=T0)
        await q.complete([Delivered(jobs[0].id)], now=T0 + 10)
        await q.complete([Delivered(jobs[1].id)], now=T0 + 100)
        pruned = await q.prune(delivered_before=T0 + 50)
        stats = await q.stats()
        await q.close()
        return pruned, stats

    pruned, stats = run(go())
    assert pruned == 1
    assert {k: v for k, v in stats.by_state.items() if v} == {"delivered": 1, "leased": 1}


def test_wait_for_work_wakes_on_append(path: Path):
    async def go():
        q = await SQLiteQueue.open(path)
        waiter = asyncio.create_task(q.wait_for_work(30))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await q.append([job("m1")], now=T0)
        await asyncio.wait_for(waiter, 5)
        await q.wait_for_work(0.01)  # times out quietly
        await q.close()

    run(go())
