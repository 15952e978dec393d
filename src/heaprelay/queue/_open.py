"""Pick a queue backend from a URL."""

from __future__ import annotations

from pathlib import Path

from heaprelay.queue.base import Queue


def redact_url(url: str) -> str:
    """A queue URL without its password (for logs and error messages)."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.partition(':')[0]}:***@{host}"


def queue_url_for(url: str | None, data_dir: Path) -> str:
    """The effective queue URL: ``None`` means the embedded SQLite file in ``data_dir``."""
    return url or f"sqlite:///{(data_dir / 'heaprelay.db').resolve()}"


def sqlite_path(url: str) -> Path:
    """The file of an ``sqlite:///path/to/file.db`` queue URL."""
    return Path(url.removeprefix("sqlite://"))


async def open_queue(url: str) -> Queue:
    """``memory://`` (tests), ``sqlite:///path/to/file.db`` or ``postgresql://…``.

    Raises ``ValueError`` with the accepted forms for anything else.
    """
    if url.startswith("memory:"):
        from heaprelay.queue.memory import MemoryQueue

        return MemoryQueue()
    if url.startswith("sqlite:"):
        from heaprelay.queue.sqlite import SQLiteQueue

        return await SQLiteQueue.open(sqlite_path(url))
    if url.startswith(("postgresql:", "postgres:")):
        from heaprelay.queue.postgres import PostgresQueue

        return await PostgresQueue.open(url)
    raise ValueError(
        f"unsupported queue URL {url!r}; use sqlite:///PATH, postgresql://USER@HOST/DB or memory://"
    )
