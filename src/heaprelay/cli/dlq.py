"""``heaprelay dlq``: list, inspect, replay and purge dead letters."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from heaprelay.cli._queue import queue_options, resolve_queue_url, with_queue
from heaprelay.queue.base import DeadLetterRecord

T = TypeVar("T")


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
