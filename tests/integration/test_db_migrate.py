"""``heaprelay db migrate``: PostgreSQL schema creation and upgrade, SQLite, bad input."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.queue.postgres import migrate, migrations


def test_sqlite_queue_is_created(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "heaprelay.db").is_file()
    assert "up to date" in result.output


def test_unsupported_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["db", "migrate", "--queue", "mysql://x/y"])
    assert result.exit_code == 2
    assert "unsupported queue URL" in result.output


def test_unreachable_postgres_is_a_clear_error() -> None:
    from heaprelay.testing.servers import free_port

    url = f"postgresql://someone:secret@127.0.0.1:{free_port()}/nothing"
    result = CliRunner().invoke(main, ["db", "migrate", "--queue", url])
    assert result.exit_code == 2
    assert "cannot migrate postgresql://someone:***@127.0.0.1" in result.output
    assert "secret" not in result.output


@pytest.mark.postgres
def test_postgres_migrations_apply_once_in_order(pg_url: str) -> None:
    import asyncio

    schema = f"migrate_{uuid.uuid4().hex[:10]}"
    try:
        first = asyncio.run(migrate(pg_url, schema=schema))
        assert first == [f"{v:04d}_{name}" for v, name, _ in migrations()]
        assert first[0] == "0001_jobs"
        assert asyncio.run(migrate(pg_url, schema=schema)) == []
        with psycopg.connect(pg_url) as conn:
            tables = {
                t
                for (t,) in conn.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    [schema],
                )
            }
        assert {"jobs", "order_keys", "seen", "workers", "schema_migrations"} <= tables
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.postgres
def test_concurrent_migrations_apply_each_step_once(pg_url: str) -> None:
    import asyncio

    schema = f"migrate_{uuid.uuid4().hex[:10]}"

    async def three_at_once() -> list[list[str]]:
        return list(await asyncio.gather(*(migrate(pg_url, schema=schema) for _ in range(3))))

    try:
        results = asyncio.run(three_at_once())
        assert sorted(x for r in results for x in r) == [f"{v:04d}_{n}" for v, n, _ in migrations()]
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
