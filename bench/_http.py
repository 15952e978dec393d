"""The benchmarks' HTTP/1.1 client side on asyncio streams: far cheaper than httpx, so the
client's own cost stays below the server's on a small machine."""

from __future__ import annotations

import asyncio


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer on a keep-alive connection: ``(status code, body)``."""
    status = (await reader.readline()).split()[1]
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)
