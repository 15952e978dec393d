"""The SQLite queue's files are the relay user's alone: the data dir 0700, heaprelay.db and its
-wal and -shm 0600 when the queue creates them; existing files keep their modes (a warning)."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from heaprelay.queue.base import NewJob
from heaprelay.queue.sqlite import SQLiteQueue


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_created_queue_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "heaprelay.db"

    async def run() -> dict[str, int]:
        queue = await SQLiteQueue.open(path)
        try:
            await queue.append([NewJob("s", "d", "m1", "k", b"{}", 1.0, 0)], now=1.0)
            return {p.name: mode(p) for p in path.parent.iterdir()}
        finally:
            await queue.close()

    modes = asyncio.run(run())
    assert mode(path.parent) == 0o700
    assert modes == {
        "heaprelay.db": 0o600,
        "heaprelay.db-wal": 0o600,
        "heaprelay.db-shm": 0o600,
    }


@pytest.mark.usefixtures("umask_022")
def test_an_existing_readable_file_is_left_alone_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "heaprelay.db"
    path.touch(mode=0o644)
    path.chmod(0o644)

    async def run() -> None:
        await (await SQLiteQueue.open(path)).close()

    with caplog.at_level(logging.WARNING, logger="heaprelay.queue"):
        asyncio.run(run())
    assert mode(path) == 0o644
    assert any("mode 0644" in r.getMessage() for r in caplog.records)
