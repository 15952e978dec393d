"""``heaprelay dlq``: list, inspect, replay and purge dead letters."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from heaprelay.queue.base import DeadLetterRecord, Queue

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
    queue_url: str | None, data_dir: Path | None, config_file: Path | None
) -> str:
    from heaprelay.config import default_data_dir
    from heaprelay.queue import queue_url_for

    if config_file is not None:
        from heaprelay.cli.config import load_or_exit

        config = load_or_exit(config_file)
        return queue_url_for(queue_url or config.queue_url, data_dir or config.data_dir)
    directory = data_dir or default_data_dir()
    if queue_url is None and not (directory / "heaprelay.db").exists():
        raise click.ClickException(
            f"no queue at {directory / 'heaprelay.db'}; pass --data-dir, --queue or --config"
        )
    return queue_url_for(queue_url, directory)


class QueueUnavailable(click.ClickException):
    """The queue cannot be opened or used (server down, bad URL or file): one line, exit 2."""

    exit_code = 2


def queue_failure(what: str, url: str, exc: BaseException) -> QueueUnavailable:
    """``what URL: reason`` on one line, without the URL's password."""
    from heaprelay.cli.db import _redact

    reason = " ".join(str(exc).split()) or type(exc).__name__
    return QueueUnavailable(f"{what} {_redact(url)}: {reason}")


def with_queue(url: str, fn: Callable[[Queue], Awaitable[T]]) -> T:
    import sqlite3

    import psycopg

    from heaprelay.queue import open_queue

    async def run() -> T:
        try:
            queue = await open_queue(url)
        except (ValueError, OSError, sqlite3.Error, psycopg.Error) as exc:
            raise queue_failure("cannot open queue", url, exc) from None
        try:
            return await fn(queue)
        except (sqlite3.Error, psycopg.Error) as exc:  # e.g. the server went away meanwhile
            raise queue_failure("queue failed", url, exc) from None
        finally:
            await queue.close()

    return asyncio.run(run())


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _record_json(r: DeadLetterRecord) -> dict[str, Any]:
    try:
        payload: Any = orjson.loads(r.payload)
    except orjson.JSONDecodeError:
        payload = r.payload.decode("utf-8", "replace")
    return {
        "id": r.id,
        "source": r.source,
        "destination": r.destination,
        "message_id": r.message_id,
        "reason": r.reason,
        "detail": r.detail,
        "answer": r.answer,
        "attempts": r.attempts,
        "received_at": r.received_at,
        "dead_at": r.dead_at,
        "payload": payload,
    }


@click.group(name="dlq")
def command() -> None:
    """The dead-letter queue: events Heap refused or that ran out of retries."""


@command.command(name="list")
@queue_options
@click.option("--destination", default=None, help="Only this destination id.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    destination: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List dead letters (oldest first) with their reason and Heap's answer."""
    url = resolve_queue_url(queue_url, data_dir, config_file)
    records = with_queue(
        url, lambda q: q.dead_letters(limit=limit, offset=offset, destination=destination)
    )
    if as_json:
        for r in records:
            click.echo(orjson.dumps(_record_json(r)).decode())
        return
    if not records:
        click.echo("no dead letters")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for name in ("id", "destination", "message_id", "reason"):
        table.add_column(name, no_wrap=True)
    table.add_column("Heap's answer", overflow="fold")
    table.add_column("tries", no_wrap=True)
    table.add_column("dead at")
    for r in records:
        table.add_row(
            str(r.id),
            r.destination,
            r.message_id,
            r.reason,
            (r.answer or r.detail)[:80],
            str(r.attempts),
            _when(r.dead_at),
        )
    Console().print(table)


@command.command()
@queue_options
@click.argument("job_id", type=int)
def show(
    queue_url: str | None, data_dir: Path | None, config_file: Path | None, job_id: int
) -> None:
    """Everything about one dead letter (JSON): reason, detail, Heap's answer, the message."""
    url = resolve_queue_url(queue_url, data_dir, config_file)
    record = with_queue(url, lambda q: q.dead_letter(job_id))
    if record is None:
        raise click.ClickException(f"no dead letter with id {job_id}")
    click.echo(orjson.dumps(_record_json(record), option=orjson.OPT_INDENT_2).decode())


def _ids(ids: tuple[int, ...], all_: bool) -> list[int] | None:
    if all_ and ids:
        raise click.UsageError("give ids or --all, not both")
    if not all_ and not ids:
        raise click.UsageError("give the ids to act on, or --all")
    return None if all_ else list(ids)


@command.command()
@queue_options
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
def replay(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    ids: tuple[int, ...],
    all_: bool,
) -> None:
    """Put dead letters back in the queue (attempts reset); a running relay sends them."""
    import time

    chosen = _ids(ids, all_)
    url = resolve_queue_url(queue_url, data_dir, config_file)
    count = with_queue(url, lambda q: q.replay(chosen, now=time.time()))
    click.echo(f"replayed {count} dead letter(s)")
    if chosen is not None and count < len(chosen):
        raise SystemExit(1)


@command.command()
@queue_options
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    ids: tuple[int, ...],
    all_: bool,
    yes: bool,
) -> None:
    """Delete dead letters for good."""
    chosen = _ids(ids, all_)
    if not yes:
        what = "ALL dead letters" if chosen is None else f"{len(chosen)} dead letter(s)"
        click.confirm(f"Delete {what}?", abort=True)
    url = resolve_queue_url(queue_url, data_dir, config_file)
    count = with_queue(url, lambda q: q.purge(chosen))
    click.echo(f"purged {count} dead letter(s)")
