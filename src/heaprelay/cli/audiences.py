"""``heaprelay audiences``: audiences synced to Heap as user properties.

``sync NAME FILE``: a membership file (CSV with a ``user_id`` column, or NDJSON with a
``user_id`` key; other columns / keys are traits sent along) is the complete member set of
audience NAME; who entered gets ``KEY = true``, who left ``KEY = false``, through the queue to
the source's Heap destinations (a running relay delivers them). ``list`` and ``show NAME``:
what is stored, and how far the last sync's updates got. ``run [NAME]``: the configuration's
``[[audiences]]`` rules evaluated over the stored events now (as ``serve`` does on their
schedule), their changes enqueued the same way."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import orjson

from heaprelay.cli._queue import choose_source, queue_options, resolve_queue_url, with_queue
from heaprelay.queue.base import Queue


class AudienceCommandError(click.ClickException):
    """A sync that cannot be done (another key, unknown source, conflict): one line, exit 2."""

    exit_code = 2


class RefusedFile(click.ClickException):
    """A membership file refused (with its line): exit 1, nothing enqueued."""

    exit_code = 1


@click.group(name="audiences")
def command() -> None:
    """Audiences synced to Heap as user properties (KEY = true / false)."""


def _config_for(config_file: Path | None, source_name: str | None) -> tuple[Any, str]:
    """The configuration and the chosen source's name."""
    if config_file is None and source_name not in (None, "default"):
        raise AudienceCommandError(
            f"no source {source_name!r} without --config (the relay's source is 'default')"
        )
    config, source = choose_source(config_file, source_name)
    return config, source.name


def _store(queue: Any) -> Any:
    from heaprelay.queue.base import AudienceStore

    if not isinstance(queue, AudienceStore):
        raise AudienceCommandError("this queue backend keeps no audiences")
    return queue


@command.command("sync")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@queue_options
@click.option("--source", "source_name", default=None, help="The source (by name) of --config.")
@click.option("--key", default=None, help="The Heap user property [default: NAME in snake_case].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "csv", "ndjson"]),
    default="auto",
    show_default=True,
    help="auto: by the extension (.csv, .ndjson/.jsonl/.json), else by the content.",
)
@click.option("--dry-run", is_flag=True, help="Print who would enter and leave; change nothing.")
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Sync a file that lists no members (every member leaves); refused without it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def sync_command(
    name: str,
    file: Path,
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    source_name: str | None,
    key: str | None,
    fmt: str,
    dry_run: bool,
    allow_empty: bool,
    as_json: bool,
) -> None:
    """Sync audience NAME to the members listed in FILE: the first run sends KEY = true for
    every member, later runs only who entered (true) or left (false)."""
    from heaprelay.audiences import (
        AudienceError,
        MembershipFileError,
        SyncResult,
        read_members,
        sync_members,
    )

    config, source = _config_for(config_file, source_name)
    try:
        members = read_members(file, fmt)  # type: ignore[arg-type]
    except MembershipFileError as exc:
        raise RefusedFile(f"{exc}; nothing synced") from None
    except OSError as exc:
        raise AudienceCommandError(f"{file}: {exc.strerror or exc}") from None
    if not members and not allow_empty:
        # A truncated export would otherwise make every member leave.
        raise RefusedFile(
            f"{file}: lists no members (every member would leave); nothing synced "
            "(--allow-empty to empty the audience)"
        )
    url = resolve_queue_url(queue_url, data_dir, config_file)

    async def run(queue: Any) -> SyncResult:
        try:
            return await sync_members(
                _store(queue),
                queue,
                config,
                name=name,
                source=source,
                key=key,
                members=members,
                now=time.time(),
                dry_run=dry_run,
            )
        except AudienceError as exc:  # AudienceKeyError is one too
            raise AudienceCommandError(str(exc)) from None
        except ValueError as exc:
            raise AudienceCommandError(str(exc)) from None

    result = with_queue(url, run)
    if as_json:
        click.echo(orjson.dumps(_result_json(result)).decode())
        return
    if dry_run:
        for user in result.entered:
            click.echo(f"+ {user}")
        for user in result.left:
            click.echo(f"- {user}")
    what = "would send (dry run)" if dry_run else "sent"
    click.echo(
        f"audience {result.name!r} (key {result.key}, source {result.source}): sync "
        f"{result.sync}{' (first: every member)' if result.first else ''}: "
        f"{len(result.entered)} entered, {len(result.left)} left, {result.unchanged} unchanged, "
        f"{result.members} members; {what} {len(result.entered) + len(result.left)} updates"
        + ("" if dry_run else f" ({result.jobs} jobs for {', '.join(result.destinations)})")
    )


def _result_json(result: Any) -> dict[str, Any]:
    return {
        "name": result.name,
        "key": result.key,
        "source": result.source,
        "sync": result.sync,
        "first": result.first,
        "entered": list(result.entered),
        "left": list(result.left),
        "unchanged": result.unchanged,
        "members": result.members,
        "jobs": result.jobs,
        "destinations": list(result.destinations),
        "dry_run": result.dry_run,
        "kind": result.kind,
        "changed": list(result.changed),
    }


#: Job states as `show` counts them: leased and retry are still pending.
_PENDING = ("pending", "leased", "retry")


def _delivery(states: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {}
    for destination, by_state in sorted(states.items()):
        out[destination] = {
            "delivered": by_state.get("delivered", 0),
            "pending": sum(by_state.get(s, 0) for s in _PENDING),
            "dead": by_state.get("dead", 0),
            "skipped": by_state.get("skipped", 0),
        }
    return out


def _record_json(record: Any, states: dict[str, dict[str, int]]) -> dict[str, Any]:
    delivery = _delivery(states)
    found = sum(sum(v.values()) for v in delivery.values())
    return {
        "name": record.name,
        "kind": record.kind,
        "key": record.key,
        "source": record.source,
        "members": record.members,
        "syncs": record.syncs,
        "created_at": record.created_at,
        "last_sync_at": record.last_sync_at,
        "last_entered": record.last_entered,
        "last_left": record.last_left,
        "last_jobs": record.last_jobs,
        # Delivered and skipped jobs older than the retention are pruned from the queue.
        "last_jobs_pruned": record.last_jobs - found,
        "destinations": delivery,
    }


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


async def _records(queue: Any, name: str | None) -> list[dict[str, Any]]:
    store = _store(queue)
    if name is None:
        records = await store.audiences()
    else:
        record = await store.audience(name)
        if record is None:
            raise AudienceCommandError(f"no audience {name!r} (it has never been synced)")
        records = [record]
    return [_record_json(r, await store.audience_job_states(r.name)) for r in records]


@command.command("list")
@queue_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_command(
    queue_url: str | None, data_dir: Path | None, config_file: Path | None, as_json: bool
) -> None:
    """The audiences synced so far: key, source, members, last sync, its entered / left and
    how many of its updates each destination has delivered / pending / dead."""
    url = resolve_queue_url(queue_url, data_dir, config_file)
    rows = with_queue(url, lambda queue: _records(queue, None))
    if as_json:
        click.echo(orjson.dumps(rows).decode())
        return
    if not rows:
        click.echo("no audiences yet (heaprelay audiences sync NAME FILE)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "kind", "key", "source", "members", "last sync", "entered", "left"):
        table.add_column(
            column, justify="right" if column in ("members", "entered", "left") else "left"
        )
    table.add_column("delivered / pending / dead")
    for row in rows:
        table.add_row(
            row["name"],
            row["kind"],
            row["key"],
            row["source"],
            f"{row['members']:,}",
            _when(row["last_sync_at"]),
            f"{row['last_entered']:,}",
            f"{row['last_left']:,}",
            _delivery_text(row),
        )
    Console(width=200).print(table)


def _delivery_text(row: dict[str, Any]) -> str:
    parts = [
        f"{d}: {c['delivered']}/{c['pending']}/{c['dead']}" for d, c in row["destinations"].items()
    ]
    return ", ".join(parts) or "-"


@command.command("show")
@click.argument("name")
@queue_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_command(
    name: str,
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """One audience: key, source, members, last sync, and per destination how many of the
    last sync's updates are delivered, pending, dead or skipped."""
    url = resolve_queue_url(queue_url, data_dir, config_file)
    row = with_queue(url, lambda queue: _records(queue, name))[0]
    if as_json:
        click.echo(orjson.dumps(row).decode())
        return
    trait = row["kind"] == "trait"
    lines = [
        f"audience     {row['name']}",
        f"kind         {row['kind']}",
        f"key          {row['key']}",
        f"source       {row['source']}",
        f"{'with value' if trait else 'members   '}   {row['members']:,}",
        f"syncs        {row['syncs']}",
        f"last sync    {_when(row['last_sync_at'])}: {row['last_entered']:,} "
        f"{'sent a value' if trait else 'entered'}, {row['last_left']:,} "
        f"{'sent 0' if trait else 'left'}, {row['last_jobs']:,} jobs",
    ]
    for destination, c in row["destinations"].items():
        lines.append(
            f"  {destination}: {c['delivered']:,} delivered, {c['pending']:,} pending, "
            f"{c['dead']:,} dead, {c['skipped']:,} skipped"
        )
    if row["last_jobs_pruned"]:
        lines.append(f"  {row['last_jobs_pruned']:,} finished jobs pruned (retention)")
    click.echo("\n".join(lines))


@command.command("run")
@queue_options
@click.argument("name", required=False)
@click.option("--dry-run", is_flag=True, help="Print who would enter and leave; enqueue nothing.")
@click.option(
    "--now",
    "at",
    default=None,
    help="Evaluate as of this time (ISO-8601, or seconds since the epoch) [default: now].",
)
def run(
    queue_url: str | None,
    data_dir: Path | None,
    config_file: Path | None,
    name: str | None,
    dry_run: bool,
    at: str | None,
) -> None:
    """Evaluate the [[audiences]] and [[computed_traits]] of the config file (or only NAME)
    over the stored events, and enqueue the changes of their members (or values) for the
    source's Heap destinations."""
    from heaprelay.audiences.rules import run_audience, summary
    from heaprelay.cli.config import load_or_exit

    if config_file is None:
        raise AudienceCommandError(
            "audiences run needs --config FILE: the audiences are defined there"
        )
    config = load_or_exit(config_file)
    if not config.audiences:
        raise AudienceCommandError(f"{config_file} defines no [[audiences]] or [[computed_traits]]")
    chosen = list(config.audiences)
    if name is not None:
        found = config.audience(name)
        if found is None:
            known = ", ".join(repr(a.name) for a in config.audiences)
            raise AudienceCommandError(
                f"no audience named {name!r} in {config_file} (it has {known})"
            )
        chosen = [found]
    now = _time(at)
    url = resolve_queue_url(queue_url, data_dir, config_file, must_exist=False)

    async def evaluate(queue: Queue) -> list[Any]:
        from heaprelay.audiences import AudienceError

        try:
            return [
                await run_audience(queue, config, audience, now=now, dry_run=dry_run)
                for audience in chosen
            ]
        except AudienceError as exc:  # e.g. the audience was first synced with another key
            raise AudienceCommandError(str(exc)) from None

    for audience, result in zip(chosen, with_queue(url, evaluate), strict=True):
        click.echo(f"{audience.name} ({audience.key}): {summary(result)}")


def _time(at: str | None) -> float:
    if at is None:
        return time.time()
    from heaprelay.messages.incoming import parse_time

    try:
        return float(at)
    except ValueError:
        pass
    parsed = parse_time(at)
    if parsed is None:
        raise AudienceCommandError(
            f"--now {at!r} is not a time: use ISO-8601 or seconds since the epoch"
        )
    return parsed
