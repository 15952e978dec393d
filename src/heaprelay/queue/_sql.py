"""Named SQL queries, kept in ``.sql`` files beside the backends (``-- name: x`` sections)."""

from __future__ import annotations

from importlib import resources


def load_queries(text: str) -> dict[str, str]:
    """``-- name: x`` sections of a .sql file → {name: sql}."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- name:"):
            if name is not None:
                queries[name] = "\n".join(lines).strip()
            name, lines = line.removeprefix("-- name:").strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        queries[name] = "\n".join(lines).strip()
    return queries


def package_queries(filename: str) -> dict[str, str]:
    """The queries of ``heaprelay/queue/sql/<filename>``."""
    return load_queries(
        resources.files("heaprelay.queue").joinpath("sql", filename).read_text("utf-8")
    )
