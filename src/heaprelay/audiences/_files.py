"""Membership files: who is in an audience, one user a row (CSV) or a line (NDJSON)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Final, Literal

import orjson

#: Heap's limit for an identity.
MAX_USER_ID_CHARS: Final = 255

Format = Literal["auto", "csv", "ndjson"]


class MembershipFileError(ValueError):
    """A file that cannot be used, with where: nothing of it is synced."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.line = line


def detect_format(path: Path, head: bytes, fmt: Format = "auto") -> Literal["csv", "ndjson"]:
    """``fmt`` unless ``auto``: then the extension (``.csv``; ``.ndjson``, ``.jsonl``,
    ``.json``), else the content (a first non-blank character ``{`` is NDJSON)."""
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".ndjson", ".jsonl", ".json"):
        return "ndjson"
    return "ndjson" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def read_members(path: Path, fmt: Format = "auto") -> dict[str, dict[str, Any]]:
    """user_id -> extra traits of every member in ``path``. Refused whole
    (:class:`MembershipFileError`, with the line) for invalid UTF-8, no ``user_id`` column,
    an empty or over-255-character id, or a line that is not a JSON object. A user listed
    twice keeps the traits of the later line."""
    data = path.read_bytes()
    name = str(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MembershipFileError(name, line, "not valid UTF-8") from None
    if detect_format(path, data[:64], fmt) == "csv":
        return _read_csv(name, text)
    return _read_ndjson(name, text)


def _check_id(name: str, line: int, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MembershipFileError(name, line, f"user_id must be a string, not {value!r}")
    user_id = str(value)
    if not user_id.strip():
        raise MembershipFileError(name, line, "user_id is empty")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise MembershipFileError(
            name, line, f"user_id is {len(user_id)} characters long; Heap takes at most 255"
        )
    return user_id


def _read_csv(name: str, text: str) -> dict[str, dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise MembershipFileError(name, None, "empty file: no header row with user_id") from None
    except csv.Error as exc:
        raise MembershipFileError(name, reader.line_num, f"not CSV: {exc}") from None
    columns = [c.strip() for c in header]
    if "user_id" not in columns:
        raise MembershipFileError(
            name, 1, f"no user_id column in the header row (columns: {', '.join(columns)})"
        )
    at = columns.index("user_id")
    members: dict[str, dict[str, Any]] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) > len(columns):
                raise MembershipFileError(
                    name, line, f"{len(row)} cells, but the header has {len(columns)} columns"
                )
            user_id = _check_id(name, line, row[at] if at < len(row) else "")
            members[user_id] = {
                column: cell
                for i, (column, cell) in enumerate(zip(columns, row, strict=False))
                if i != at and column and cell != ""
            }
    except csv.Error as exc:
        raise MembershipFileError(name, reader.line_num, f"not CSV: {exc}") from None
    return members


def _read_ndjson(name: str, text: str) -> dict[str, dict[str, Any]]:
    members: dict[str, dict[str, Any]] = {}
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MembershipFileError(name, line, f"not JSON: {exc}") from None
        if not isinstance(item, dict):
            raise MembershipFileError(name, line, "must be a JSON object with a user_id")
        if "user_id" not in item:
            raise MembershipFileError(name, line, "no user_id")
        user_id = _check_id(name, line, item.pop("user_id"))
        members[user_id] = {k: v for k, v in item.items() if v is not None}
    return members
