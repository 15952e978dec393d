"""``dlq``, ``status`` and ``db``: a queue that cannot be opened (PostgreSQL down, a file that
is not a queue) is one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from heaprelay.testing.servers import free_port

COMMANDS = [["dlq", "list"], ["status", "--interval", "0"], ["db", "migrate"]]


def heaprelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heaprelay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_postgres_down(command: list[str]) -> None:
    url = f"postgresql://relay:s3cret@127.0.0.1:{free_port()}/heaprelay"
    result = heaprelay(*command, "--queue", url)
    assert_one_line_error(result, "postgresql://relay:***@127.0.0.1", "Connection refused")
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_file_that_is_not_a_queue(command: list[str], tmp_path: Path) -> None:
    (tmp_path / "heaprelay.db").write_bytes(b"this is not an SQLite database\n" * 200)
    result = heaprelay(*command, "--data-dir", str(tmp_path))
    assert_one_line_error(result, str(tmp_path / "heaprelay.db"), "not a database")
