"""Audience keys: the Heap user property an audience's membership is written to."""

from __future__ import annotations

import re
from typing import Final

#: Heap's limit for property names is 1024 characters; keys are kept well below it.
MAX_KEY_CHARS: Final = 255

_NOT_KEY: Final = re.compile(r"[^a-z0-9]+")


class AudienceKeyError(ValueError):
    """A name with no usable key, or a key Heap cannot take."""


def audience_key(name: str) -> str:
    """The snake_case key of an audience name, as Segment Engage derives it (reference
    audiences.md §3): lower-case; each run of characters other than ``[a-z0-9]`` becomes one
    ``_``; ``_`` trimmed at both ends; no split between letters and digits
    (``Order Completed Last 30days`` → ``order_completed_last_30days``)."""
    key = _NOT_KEY.sub("_", name.lower()).strip("_")
    if not key:
        raise AudienceKeyError(
            f"audience name {name!r} has no letters or digits to make a key of: give --key"
        )
    return check_key(key)


def check_key(key: str) -> str:
    """``key`` if Heap can take it as a user property name, else :class:`AudienceKeyError`."""
    if not key or not key.strip():
        raise AudienceKeyError("the audience key is empty")
    if key != key.strip():
        raise AudienceKeyError(f"the audience key {key!r} starts or ends with white space")
    if len(key) > MAX_KEY_CHARS:
        raise AudienceKeyError(
            f"the audience key is {len(key)} characters long; at most {MAX_KEY_CHARS}"
        )
    return key
