"""What the benchmarks' client processes share: an HTTP/1.1 answer reader on asyncio streams
(far cheaper than httpx, so the client's own cost stays below the server's on a small
machine) and the server process's CPU time over the measured window (Linux ``/proc``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer on a keep-alive connection: ``(status code, body)``."""
    status = (await reader.readline()).split()[1]
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by a process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_cpu(pid: int, start: float, end: float) -> float:
    """The CPU seconds process ``pid`` uses between ``start`` and ``end`` (perf_counter)."""
    await asyncio.sleep(start - time.perf_counter())
    before = process_cpu(pid)
    await asyncio.sleep(end - time.perf_counter())
    return process_cpu(pid) - before
