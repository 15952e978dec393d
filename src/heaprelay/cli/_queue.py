"""What the commands that open a queue share (``dlq``, ``status``, ``db``, ...): the queue
options, resolving them to a URL, and turning a queue that cannot be used into one line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from heaprelay.queue import redact_url
from heaprelay.queue.base import Queue

if TYPE_CHECKING:
    from heaprelay.config import Config, Source

T = TypeVar("T")


def queue_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--queue``, ``--data-dir`` and ``--config``: which queue to open (as ``serve`` does)."""
    f = click.option(
        "--config",
        "config_file",
        envvar="HEAPRELAY_CONFIG",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="Config file (its queue and data dir are used).",
    )(f)
    f = click.option(
        "--data-dir",
        envvar="HEAPRELAY_DATA_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Where the SQLite queue lives [default: $XDG_DATA_HOME/heaprelay].",
    )(f)
    return click.option(
        "--queue",
        "queue_url",
        envvar="HEAPRELAY_QUEUE",
        default=None,
        help="Queue URL: sqlite:///PATH or postgresql://… [default: SQLite in the data dir].",
    )(f)


def resolve_queue_url(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    *,
    must_exist: bool = True,
) -> str:
    """The queue's URL from the flags (or their variables), else the config file's
    ``[server]`` (only that table is read: no source's secret is needed to open the queue).
    ``must_exist``: an SQLite queue not in the data dir is an error (exit 2) rather than
    created empty."""
    from heaprelay.config import default_data_dir
    from heaprelay.queue import queue_url_for

    if config_file is not None:
        from heaprelay.cli.config import queue_location_or_exit

        file_url, file_dir = queue_location_or_exit(config_file)
        queue_url, data_dir = queue_url or file_url, data_dir or file_dir
    directory = data_dir or default_data_dir()
    if queue_url is not None and not queue_url.startswith(_SCHEMES):
        raise QueueUnavailable(
            f"unsupported queue URL {redact_url(queue_url)!r}; use sqlite:///PATH or "
            "postgresql://USER@HOST/DB"
        )
    if must_exist and queue_url is None and not (directory / "heaprelay.db").exists():
        raise QueueUnavailable(
            f"no queue at {directory / 'heaprelay.db'}; pass --data-dir, --queue or --config"
        )
    return queue_url_for(queue_url, directory)


_SCHEMES = ("sqlite:", "postgresql:", "postgres:")


class QueueUnavailable(click.ClickException):
    """The queue cannot be opened or used (server down, bad URL or file): one line, exit 2."""

    exit_code = 2


def queue_failure(what: str, url: str, exc: BaseException) -> QueueUnavailable:
    """``what URL: reason`` on one line, without the URL's password."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return QueueUnavailable(f"{what} {redact_url(url)}: {reason}")


def with_queue(url: str, fn: Callable[[Queue], Awaitable[T]]) -> T:
    import sqlite3

    from heaprelay.queue import open_queue

    failures: tuple[type[BaseException], ...] = (sqlite3.Error,)
    if url.startswith(("postgresql:", "postgres:")):  # psycopg takes long to import
        import psycopg

        failures += (psycopg.Error,)

    async def run() -> T:
        opening: tuple[type[BaseException], ...] = (ValueError, OSError, *failures)
        try:
            queue = await open_queue(url)
        except opening as exc:
            raise queue_failure("cannot open queue", url, exc) from None
        try:
            return await fn(queue)
        except failures as exc:  # e.g. the server went away meanwhile
            raise queue_failure("queue failed", url, exc) from None
        finally:
            await queue.close()

    return asyncio.run(run())


class NoSuchSource(click.ClickException):
    """The source a queue-mode command writes for cannot be chosen: one line, exit 2."""

    exit_code = 2


def choose_source(
    config_file: Path | None, source_name: str | None, write_key: str | None = None
) -> tuple[Config, Source]:
    """The configuration and the source whose Heap destinations a command that writes into
    the queue (``send`` in queue mode, ``audiences``) enqueues for: by ``--source`` and/or
    write key among the config file's, the only one when neither is given. Without a config
    file: the one source ``serve --app-id … --write-key …`` runs, by its names (source
    ``default``, destination ``heap``)."""
    from heaprelay.config import Config, Destination, Source
    from heaprelay.transform import DestinationSettings

    if config_file is None:
        source = Source("default", "", (Destination("heap", DestinationSettings(app_id="")),))
        return Config(sources=(source,)), source
    from heaprelay.cli.config import load_or_exit

    config = load_or_exit(config_file)
    chosen = [
        s
        for s in config.sources
        if (source_name is None or s.name == source_name)
        and (write_key is None or s.write_key == write_key)
    ]
    if len(chosen) == 1:
        return config, chosen[0]
    names = ", ".join(s.name for s in config.sources)
    if not chosen:
        what = f"source {source_name!r}" if source_name is not None else "such source"
        raise NoSuchSource(f"no {what} in {config_file} (sources: {names})")
    raise NoSuchSource(f"{config_file} has several sources ({names}): choose one with --source")
