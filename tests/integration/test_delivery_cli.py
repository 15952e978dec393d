"""``heaprelay dlq`` / ``status`` / ``fake-heap`` options against a real SQLite queue."""

import asyncio
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.cli.fake_heap import _outage
from heaprelay.queue.base import NewJob, RetryAt
from heaprelay.queue.sqlite import SQLiteQueue
from heaprelay.testing.queues import sqlite_with_dead_letters


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return sqlite_with_dead_letters(tmp_path / "heaprelay.db", ["heap"] * 3, answer="400 Bad {id}")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def run_apart(*args: str, **env: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_list_show_purge(db: Path) -> None:
    code, out = run("dlq", "list", "--data-dir", str(db.parent))
    assert code == 0
    assert "heap_rejected" in out
    assert "400 Bad 1" in out
    code, out = run("dlq", "show", "2", "--data-dir", str(db.parent))
    assert orjson.loads(out)["payload"] == {"i": 1}
    code, out = run("dlq", "show", "99", "--data-dir", str(db.parent))
    assert code == 1
    assert "no dead letter with id 99" in out
    code, out = run("dlq", "purge", "1", "--yes", "--data-dir", str(db.parent))
    assert out.strip() == "purged 1 dead letter(s)"
    code, out, err = run_apart("dlq", "replay", "2", "99", "--data-dir", str(db.parent))
    assert out.strip() == "replayed 1 dead letter(s)"
    assert code == 1  # one of the ids was not a dead letter, and it says which
    assert err.strip().endswith("not a dead letter (unknown id, or already replayed or purged): 99")
    code, out = run("status", "--data-dir", str(db.parent), "--interval", "0", "--json")
    status = orjson.loads(out)
    assert status["by_state"]["dead"] == 1
    assert status["by_state"]["pending"] == 1
    assert status["last_errors"][0]["answer"] == "400 Bad 3"
    code, out = run("status", "--data-dir", str(db.parent), "--interval", "0")
    assert "jobs by state" in out
    assert "last errors" in out


def test_status_shows_retries_with_heaps_answer(tmp_path: Path) -> None:
    """The issue's case: jobs waiting in retry after a 503 are the last errors too, with
    Heap's answer, and counted by retry reason."""

    async def fill() -> None:
        queue = await SQLiteQueue.open(tmp_path / "heaprelay.db")
        jobs = [NewJob("s", "heap", f"m{i}", f"k{i}", b"{}", 1.0) for i in range(20)]
        await queue.append(jobs, now=1.0)
        claimed = await queue.claim("w", limit=20, lease_seconds=60, now=2.0)
        answer = "503 Service Unavailable: try later"
        await queue.complete(
            [RetryAt(j.id, at=100.0, reason="http_503", answer=answer) for j in claimed], now=3.0
        )
        await queue.close()

    asyncio.run(fill())
    code, out = run("status", "--data-dir", str(tmp_path), "--interval", "0", "--json")
    assert code == 0
    status = orjson.loads(out)
    assert status["by_state"]["retry"] == 20
    assert status["retry_reasons"] == {"http_503": 20}
    [error] = status["last_errors"]
    assert (error["state"], error["reason"], error["jobs"]) == ("retry", "http_503", 20)
    assert error["answer"] == "503 Service Unavailable: try later"
    code, out = run("status", "--data-dir", str(tmp_path), "--interval", "0")
    assert "retries by reason" in out
    assert "http_503" in out
    assert "Unavailable" in out


def test_purge_asks_and_usage_errors(db: Path) -> None:
    result = CliRunner().invoke(
        main, ["dlq", "purge", "--all", "--data-dir", str(db.parent)], input="n\n"
    )
    assert result.exit_code == 1
    assert "Aborted" in result.output
    code, out = run("dlq", "replay", "--data-dir", str(db.parent))
    assert code == 2
    assert "--all" in out
    code, out = run("dlq", "list", "--data-dir", str(db.parent / "nowhere"))
    assert code == 2  # the queue cannot be used: 2, as for a server that does not answer
    assert "no queue at" in out


def test_outage_option() -> None:
    assert _outage("30-90") == (30.0, 90.0)
    for bad in ("90-30", "x", "5"):
        with pytest.raises(click.BadParameter):
            _outage(bad)


def test_replay_and_purge_say_which_ids_are_not_dead_letters_and_exit_1(db: Path) -> None:
    where = ("--data-dir", str(db.parent))
    code, out, err = run_apart("dlq", "replay", "999", "1", *where)
    assert (code, out.strip()) == (1, "replayed 1 dead letter(s)")
    assert err == "Error: not a dead letter (unknown id, or already replayed or purged): 999\n"
    code, out, err = run_apart("dlq", "purge", "--yes", "999", "2", "1", *where)
    assert (code, out.strip()) == (1, "purged 1 dead letter(s)")  # 1 was replayed already
    assert err == "Error: not a dead letter (unknown id, or already replayed or purged): 999, 1\n"


def test_replay_and_purge_by_destination(tmp_path: Path) -> None:
    destinations = ["web" if i % 3 else "ios" for i in range(1500)]
    sqlite_with_dead_letters(tmp_path / "heaprelay.db", destinations)
    where = ("--data-dir", str(tmp_path))
    # 1000 of them are web's: more than one page of the dead-letter listing
    code, out, _ = run_apart("dlq", "replay", "--destination", "web", *where)
    assert (code, out.strip()) == (0, "replayed 1000 dead letter(s)")
    code, out, _ = run_apart("dlq", "list", "--json", "--limit", "1000", *where)
    assert {orjson.loads(line)["destination"] for line in out.splitlines()} == {"ios"}
    code, out, _ = run_apart("dlq", "purge", "--all", "--destination", "ios", "--yes", *where)
    assert (code, out.strip()) == (0, "purged 500 dead letter(s)")
    code, out, err = run_apart("dlq", "replay", "3", "--destination", "ios", *where)
    assert code == 2
    assert "not both" in err


def test_list_keeps_heaps_answer_readable_at_80_columns(tmp_path: Path) -> None:
    answer = (
        "400 Bad Request: users[0].properties.id: a user property cannot be named any "
        "casing of 'id' (Heap refuses it; profile segment sends it unless id_property is set)"
    )

    message_id = "0f0e0d0c-0b0a-4909-8807-060504030201"
    path = tmp_path / "heaprelay.db"
    sqlite_with_dead_letters(path, ["segment-classic"], answer=answer, message_ids=[message_id])
    code, out, _ = run_apart("dlq", "list", "--data-dir", str(tmp_path), COLUMNS="80")
    assert code == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    assert lines[0].startswith("1  segment-classic  heap_rejected  1 try  dead ")
    assert " ".join(" ".join(lines[2:]).split()) == answer  # all of it, wrapped
    assert "0f0e0d0c-0b0a-4909-8807-060504030201" in lines[1]


def test_queue_commands_read_only_the_config_files_queue_settings(db: Path, tmp_path: Path) -> None:
    # The sources' secrets come from variables this shell does not have: status, dlq and
    # db migrate need only [server] (here its data_dir), as serve would.
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
data_dir = "{db.parent}"

[[sources]]
name = "web"
write_key_env = "WEB_WRITE_KEY_NOT_SET"

  [[sources.destinations]]
  app_id_env = "APP_ID_NOT_SET"
"""
    )
    code, out, err = run_apart("status", "--config", str(config), "--interval", "0", "--json")
    assert code == 0, err
    assert orjson.loads(out)["by_state"]["dead"] == 3
    code, out, err = run_apart("dlq", "list", "--config", str(config), "--json")
    assert (code, len(out.splitlines())) == (0, 3), err
    code, out, err = run_apart("db", "migrate", "--config", str(config))
    assert code == 0, err
    assert "up to date" in out
    # serve, which needs them, still refuses the file
    code, _, err = run_apart("serve", "--config", str(config))
    assert code == 1
    assert "WEB_WRITE_KEY_NOT_SET" in err
    # and a problem in [server] itself is one line, exit 1
    config.write_text('[server]\nqueue_url = "mysql://x"\n')
    code, _, err = run_apart("status", "--config", str(config))
    assert code == 1
    assert err.count("\n") == 1
    assert "server.queue_url" in err
