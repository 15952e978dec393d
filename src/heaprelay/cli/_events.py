"""Reading events from files, for the commands that take them (``transform``, ``send``).

Accepted: NDJSON (one event a line), a JSON array of events, one event object, or a Segment
batch object ``{"batch": [...]}`` (its ``context`` and ``integrations`` merged into each
item, the item's own values winning, and its ``sentAt`` given to items without one, as
Segment does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["InputError", "Unreadable", "loads", "parse_events"]


class InputError(ValueError):
    """The input cannot be read as events; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An NDJSON line that is not JSON, in the place of the event it would have been."""

    detail: str


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as first:
        # orjson refuses integers beyond 64 bits, which are valid JSON; NaN/Infinity are not.
        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not JSON")

        try:
            return json.loads(data, parse_constant=no_constants)
        except (ValueError, RecursionError):
            raise first from None


def parse_events(data: bytes) -> list[Any]:
    """The events held by ``data`` (see the module docstring for the accepted forms)."""
    stripped = data.lstrip()
    if stripped.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        stripped = stripped[3:].lstrip()
    if not stripped:
        return []
    if stripped[:1] in (b"[", b"{"):
        try:
            doc = loads(stripped)
        except orjson.JSONDecodeError:
            doc = None  # maybe NDJSON: several documents, one per line
        if isinstance(doc, list):
            return doc
        if isinstance(doc, dict):
            return _batch_items(doc) if "batch" in doc else [doc]
        if stripped[:1] == b"[":
            _loads_or_raise(stripped, "the input")
    events: list[Any] = []
    # Lines and columns as in the input (``stripped`` lost its leading blank lines and the
    # blanks before the first event).
    skipped = data[: len(data) - len(stripped)].replace(b"\xef\xbb\xbf", b"")
    first_line = skipped.count(b"\n") + 1
    first_indent = len(skipped) - (skipped.rfind(b"\n") + 1)
    for lineno, line in enumerate(stripped.split(b"\n"), start=first_line):
        if line.strip():
            try:
                events.append(loads(line))
            except orjson.JSONDecodeError as e:
                column = e.colno + (first_indent if lineno == first_line else 0)
                events.append(Unreadable(f"line {lineno}, column {column}: not JSON: {e.msg}"))
    return events


def _loads_or_raise(data: bytes, where: str) -> Any:
    try:
        return loads(data)
    except orjson.JSONDecodeError as e:
        raise InputError(f"{where} is not valid JSON: {e}") from None


def _batch_items(doc: Mapping[str, Any]) -> list[Any]:
    items = doc["batch"]
    if not isinstance(items, list):
        raise InputError(f"'batch' must be an array of events, not {type(items).__name__}")
    defaults = {k: doc[k] for k in ("context", "integrations") if isinstance(doc.get(k), dict)}
    sent_at = doc.get("sentAt")
    out: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            for key, value in defaults.items():
                own = item.get(key)
                item[key] = _merge(value, own) if isinstance(own, dict) else value
            if sent_at is not None and item.get("sentAt") is None:
                item["sentAt"] = sent_at
        out.append(item)
    return out


def _merge(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in own.items():
        under = merged.get(key)
        merged[key] = (
            _merge(under, value) if isinstance(value, dict) and isinstance(under, dict) else value
        )
    return merged
