"""Queues in a known state, for tests of what reads them (``heaprelay dlq``, ``status``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import orjson

from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import DeadLetter, NewJob
from heaprelay.queue.sqlite import SQLiteQueue


def sqlite_with_dead_letters(
    path: Path,
    destinations: Sequence[str],
    *,
    answer: str = "400 Bad Request",
    message_ids: Sequence[str] | None = None,
) -> Path:
    """Create the SQLite queue ``path`` holding one dead letter (``heap_rejected``, Heap's
    ``answer``, where ``{id}`` stands for the job's id) per entry of ``destinations``, ids 1,
    2, … in that order; their payloads are ``{"i": index}``. Returns ``path``."""

    async def fill() -> None:
        queue = await SQLiteQueue.open(path)
        ids = message_ids or [f"m{i}" for i in range(len(destinations))]
        jobs = [
            NewJob("s", dest, ids[i], "k", orjson.dumps({"i": i}), 1.0)
            for i, dest in enumerate(destinations)
        ]
        await queue.append(jobs, now=1.0)
        claimed = await queue.claim("w", limit=len(jobs), lease_seconds=60, now=2.0)
        dead = [
            DeadLetter(
                j.id, Reason.HEAP_REJECTED, "Heap answered 400", answer.replace("{id}", str(j.id))
            )
            for j in claimed
        ]
        await queue.complete(dead, now=3.0)
        await queue.close()

    asyncio.run(fill())
    return path
