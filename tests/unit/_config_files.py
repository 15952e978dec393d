"""What the configuration-file tests share (imported as ``_config_files``: this folder is on
``sys.path`` as pytest imports its test modules): writing a file, and finding one problem
``config check`` reports in a good file broken in one place."""

from __future__ import annotations

from pathlib import Path

from heaprelay.config_file import Problem, check_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "heaprelay.toml"
    path.write_text(text)
    return path


def assert_reported(
    tmp_path: Path, good: str, old: str, new: str, line: int, path: str, needle: str
) -> Problem:
    """``good`` with ``old`` replaced by ``new`` has a problem at ``path`` whose message has
    ``needle``, reported at ``line``."""
    assert old in good
    text = good.replace(old, new, 1)
    problems = check_config(write(tmp_path, text), {})
    found = [p for p in problems if p.path == path and needle in p.message]
    assert found, problems
    assert found[0].line == line, (found[0], text.splitlines()[(found[0].line or 1) - 1])
    return found[0]
