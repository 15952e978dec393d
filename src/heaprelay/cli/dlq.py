"""``heaprelay dlq``: list, inspect, replay and purge dead letters."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from heaprelay.cli._queue import queue_options, resolve_queue_url, with_queue
from heaprelay.queue.base import DeadLetterRecord, Queue

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
    import shutil
    import textwrap

    # A few lines a dead letter, not a table: Heap's answer is what matters, and a table of
    # seven columns left it no room in an 80-column terminal.
    width = max(40, shutil.get_terminal_size().columns)
    for r in records:
        tries = f"{r.attempts} {'try' if r.attempts == 1 else 'tries'}"
        answer = r.answer or r.detail or "(no answer)"
        if len(answer) > MAX_ANSWER_CHARS:
            answer = answer[:MAX_ANSWER_CHARS] + f"… (heaprelay dlq show {r.id})"
        click.echo(f"{r.id}  {r.destination}  {r.reason}  {tries}  dead {_when(r.dead_at)} UTC")
        for text in (f"message {r.message_id}", answer):
            click.echo(
                textwrap.fill(
                    " ".join(text.split()),
                    width=width,
                    initial_indent="    ",
                    subsequent_indent="    ",
                    break_on_hyphens=False,
                )
            )


#: How much of Heap's answer ``dlq list`` shows (``dlq show`` shows it all).
MAX_ANSWER_CHARS = 400


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


def _selection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """IDS, ``--all`` and ``--destination``: which dead letters ``replay`` / ``purge`` take."""
    f = click.option(
        "--destination",
        default=None,
        help="Every dead letter of this destination id (with or without --all).",
    )(f)
    f = click.option("--all", "all_", is_flag=True, help="Every dead letter.")(f)
    return click.argument("ids", type=int, nargs=-1)(f)


def _check_selection(ids: tuple[int, ...], all_: bool, destination: str | None) -> None:
    if ids and (all_ or destination is not None):
        raise click.UsageError("give ids, or --all / --destination, not both")
    if not ids and not all_ and destination is None:
        raise click.UsageError("give the ids to act on, --destination ID, or --all")


async def _select(
    queue: Queue, ids: tuple[int, ...], destination: str | None
) -> tuple[list[int] | None, list[int]]:
    """(the ids to act on, ``None`` for every dead letter; the given ids that are not dead
    letters)."""
    if ids:
        found: list[int] = []
        missing: list[int] = []
        for i in dict.fromkeys(ids):
            (found if await queue.dead_letter(i) is not None else missing).append(i)
        return found, missing
    if destination is None:
        return None, []
    chosen: list[int] = []
    while page := await queue.dead_letters(limit=1000, offset=len(chosen), destination=destination):
        chosen += [r.id for r in page]
    return chosen, []


def _report_missing(missing: list[int]) -> None:
    """Ids given that are not dead letters: one line on stderr, exit 1 (the others were
    acted on)."""
    if missing:
        listed = ", ".join(map(str, missing))
        click.echo(
            f"Error: not a dead letter (unknown id, or already replayed or purged): {listed}",
            err=True,
        )
        raise SystemExit(1)


@command.command()
@queue_options
@_selection_options
def replay(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    ids: tuple[int, ...],
    all_: bool,
    destination: str | None,
) -> None:
    """Put dead letters back in the queue (attempts reset); a running relay sends them.

    IDS, or --destination ID (its dead letters), or --all. Exit 1 when one of IDS is not a
    dead letter (the others are replayed)."""
    import time

    _check_selection(ids, all_, destination)
    url = resolve_queue_url(queue_url, data_dir, config_file)

    async def act(queue: Queue) -> tuple[int, list[int]]:
        chosen, missing = await _select(queue, ids, destination)
        count = await queue.replay(chosen, now=time.time()) if chosen != [] else 0
        return count, missing

    count, missing = with_queue(url, act)
    click.echo(f"replayed {count} dead letter(s)")
    _report_missing(missing)


@command.command()
@queue_options
@_selection_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    ids: tuple[int, ...],
    all_: bool,
    destination: str | None,
    yes: bool,
) -> None:
    """Delete dead letters for good.

    IDS, or --destination ID (its dead letters), or --all. Exit 1 when one of IDS is not a
    dead letter (the others are purged)."""
    _check_selection(ids, all_, destination)
    if not yes:
        if ids:
            what = f"{len(ids)} dead letter(s)"
        elif destination is not None:
            what = f"every dead letter of destination {destination!r}"
        else:
            what = "ALL dead letters"
        click.confirm(f"Delete {what}?", abort=True)
    url = resolve_queue_url(queue_url, data_dir, config_file)

    async def act(queue: Queue) -> tuple[int, list[int]]:
        chosen, missing = await _select(queue, ids, destination)
        count = await queue.purge(chosen) if chosen != [] else 0
        return count, missing

    count, missing = with_queue(url, act)
    click.echo(f"purged {count} dead letter(s)")
    _report_missing(missing)
