"""``heaprelay db migrate``: create or update the queue's schema before starting relays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from heaprelay.cli._queue import queue_failure, queue_options, resolve_queue_url
from heaprelay.queue import redact_url


@click.group()
def command() -> None:
    """The queue's database (PostgreSQL or SQLite)."""


@command.command()
@queue_options
def migrate(queue_url: str | None, data_dir: Path | None, config_file: Path | None) -> None:
    """Create the queue's tables or bring them up to date, then exit.

    Relays also migrate on start; run this once before rolling out a new version to many
    machines, so that none of them starts on a half-migrated database. Safe to run twice or
    from several machines at once.
    """
    url = resolve_queue_url(queue_url, data_dir, config_file, must_exist=False)
    shown = redact_url(url)
    if url.startswith(("postgresql:", "postgres:")):
        import psycopg

        from heaprelay.queue.postgres import DEFAULT_SCHEMA
        from heaprelay.queue.postgres import migrate as pg_migrate

        try:
            applied = asyncio.run(pg_migrate(url, schema=DEFAULT_SCHEMA))
        except psycopg.Error as exc:
            raise queue_failure("cannot migrate", url, exc) from None
        if applied:
            click.echo(f"{shown}: applied {', '.join(applied)}")
        else:
            click.echo(f"{shown}: up to date")
        return
    if url.startswith("sqlite:"):
        import sqlite3

        from heaprelay.queue import open_queue

        async def touch() -> None:
            queue = await open_queue(url)
            await queue.close()

        try:
            asyncio.run(touch())
        except (OSError, sqlite3.Error) as exc:
            raise queue_failure("cannot open", url, exc) from None
        click.echo(f"{shown}: up to date (SQLite creates its tables on open)")
        return
    raise click.UsageError(f"unsupported queue URL {shown!r}; use sqlite:///PATH or postgresql://…")
