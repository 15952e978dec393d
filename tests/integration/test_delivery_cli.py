"""``heaprelay dlq`` / ``status`` / ``fake-heap`` options against a real SQLite queue."""

import asyncio
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from heaprelay.cli import main
from heaprelay.cli.fake_heap import _outage
from heaprelay.messages.reasons import Reason
from heaprelay.queue.base import DeadLetter, NewJob
from heaprelay.queue.sqlite import SQLiteQueue


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "heaprelay.db"

    async def fill() -> None:
        queue = await SQLiteQueue.open(path)
        jobs = [NewJob("s", "heap", f"m{i}", "k", orjson.dumps({"i": i}), 1.0) for i in range(3)]
        await queue.append(jobs, now=1.0)
        claimed = await queue.claim("w", limit=3, lease_seconds=60, now=2.0)
        await queue.complete(
            [
                DeadLetter(j.id, Reason.HEAP_REJECTED, "Heap answered 400", f"400 Bad {j.id}")
                for j in claimed
            ],
            now=3.0,
        )
        await queue.close()

    asyncio.run(fill())
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


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
    code, out = run("dlq", "replay", "2", "99", "--data-dir", str(db.parent))
    assert out.strip() == "replayed 1 dead letter(s)"
    assert code == 1  # one of the ids was not a dead letter
    code, out = run("status", "--data-dir", str(db.parent), "--interval", "0", "--json")
    status = orjson.loads(out)
    assert status["by_state"]["dead"] == 1
    assert status["by_state"]["pending"] == 1
    assert status["last_errors"][0]["answer"] == "400 Bad 3"
    code, out = run("status", "--data-dir", str(db.parent), "--interval", "0")
    assert "jobs by state" in out
    assert "last dead letters" in out


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
    assert code == 1
    assert "no queue at" in out


def test_outage_option() -> None:
    assert _outage("30-90") == (30.0, 90.0)
    for bad in ("90-30", "x", "5"):
        with pytest.raises(click.BadParameter):
            _outage(bad)
