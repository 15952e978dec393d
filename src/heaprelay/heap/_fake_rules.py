"""Heap's documented body rules, as the fake Heap checks them. Pure: body -> problem | None.

Sources: ``reference/heap-api.md`` and ``api-contracts.md`` §A. Each check returns the first
problem as a human-readable string naming the field (``events[3].identity: ...``), or
``None`` when the body is acceptable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

MAX_BULK = 1000
MAX_EVENT = 1024
MAX_IDENTITY = 255
MAX_VALUE = 1024  # values and keys must have *fewer* than 1024 characters
MAX_USER_ID = 2**53 - 1
_DIGITS = re.compile(r"[0-9]+")


def _app_id(body: Mapping[str, Any]) -> str | None:
    app_id = body.get("app_id")
    if not isinstance(app_id, str) or not app_id.strip():
        return "app_id: required, a non-empty string"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _properties(value: Any, where: str, *, user: bool) -> str | None:
    if not isinstance(value, Mapping):
        return f"{where}: must be an object"
    for key, v in value.items():
        if len(key) >= MAX_VALUE:
            return f"{where}.{key[:40]}...: key must have fewer than 1024 characters"
        if user and key.lower() == "id":
            return f"{where}.{key}: a user property cannot be named any casing of 'id'"
        if _number(v):
            continue
        if isinstance(v, str):
            if len(v) >= MAX_VALUE:
                return f"{where}.{key}: value must have fewer than 1024 characters"
            continue
        if not user and isinstance(v, list) and all(_number(x) or isinstance(x, str) for x in v):
            continue  # Heap joins arrays with "||" (see accepted_properties)
        return f"{where}.{key}: value must be a string or a number, got {type(v).__name__}"
    return None


def _identity(value: Any, where: str) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{where}: must be a non-empty string"
    if len(value) > MAX_IDENTITY:
        return f"{where}: longer than 255 characters"
    return None


def _timestamp(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"{where}: not an ISO-8601 timestamp"
        return None
    return f"{where}: must be an ISO-8601 string"


def track_event(event: Mapping[str, Any], where: str = "") -> str | None:
    """One event of ``/api/track`` (single form or an item of ``events``)."""
    p = f"{where}." if where else ""
    name = event.get("event")
    if not isinstance(name, str) or not name:
        return f"{p}event: required, a non-empty string"
    if len(name) > MAX_EVENT:
        return f"{p}event: longer than 1024 characters"
    has_identity = event.get("identity") is not None
    has_user_id = event.get("user_id") is not None
    if has_identity == has_user_id:
        return f"{p}identity / user_id: exactly one of them is required"
    if has_identity:
        problem = _identity(event["identity"], f"{p}identity")
        if problem:
            return problem
    else:
        uid = event["user_id"]
        if not isinstance(uid, str) or not _DIGITS.fullmatch(uid) or int(uid) > MAX_USER_ID:
            return f"{p}user_id: must be a string holding a number between 0 and 2^53-1"
    if "session_id" in event and not isinstance(event["session_id"], str):
        return f"{p}session_id: must be a string"
    if "properties" in event:
        problem = _properties(event["properties"], f"{p}properties", user=False)
        if problem:
            return problem
    if "timestamp" in event:
        problem = _timestamp(event["timestamp"], f"{p}timestamp")
        if problem:
            return problem
    if "idempotency_key" in event and not isinstance(event["idempotency_key"], str):
        return f"{p}idempotency_key: must be a string"
    return None


def user(item: Mapping[str, Any], where: str = "") -> str | None:
    """One user of ``/api/add_user_properties`` (single form or an item of ``users``)."""
    p = f"{where}." if where else ""
    problem = _identity(item.get("identity"), f"{p}identity")
    if problem:
        return problem
    if "properties" not in item:
        return f"{p}properties: required"
    return _properties(item["properties"], f"{p}properties", user=True)


def _array(body: Mapping[str, Any], name: str) -> list[Any] | str:
    items = body.get(name)
    if not isinstance(items, list) or not items:
        return f"{name}: must be a non-empty array"
    if len(items) > MAX_BULK:
        return f"{name}: at most 1000 items per request, got {len(items)}"
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            return f"{name}[{n}]: must be an object"
    return items


def _single_or_bulk(
    body: Mapping[str, Any], name: str, check_item: Callable[[Mapping[str, Any], str], str | None]
) -> str | None:
    """A single-item body, or a bulk one with its items under ``name``: the first problem."""
    problem = _app_id(body)
    if problem:
        return problem
    if name not in body:
        return check_item(body, "")
    items = _array(body, name)
    if isinstance(items, str):
        return items
    for n, item in enumerate(items):
        problem = check_item(item, f"{name}[{n}]")
        if problem:
            return problem
    return None


def check_track(body: Mapping[str, Any]) -> str | None:
    return _single_or_bulk(body, "events", track_event)


def check_users(body: Mapping[str, Any]) -> str | None:
    return _single_or_bulk(body, "users", user)


def _identifier(value: Any, where: str) -> str | None:
    if not isinstance(value, Mapping) or not value:
        return f"{where}: must be an object with at least one of identity, anonymous_id, ..."
    for key, v in value.items():
        if not isinstance(v, str) or not v:
            return f"{where}.{key}: must be a non-empty string"
    return None


def check_integrations_track(body: Mapping[str, Any]) -> str | None:
    problem = _app_id(body)
    if problem:
        return problem
    items = _array(body, "events")
    if isinstance(items, str):
        return items
    for n, event in enumerate(items):
        w = f"events[{n}]"
        name = event.get("event")
        if not isinstance(name, str) or not name:
            return f"{w}.event: required, a non-empty string"
        problem = _identifier(event.get("user_identifier"), f"{w}.user_identifier")
        if problem:
            return problem
        props = event.get("custom_properties", {})
        if not isinstance(props, Mapping) or not all(isinstance(v, str) for v in props.values()):
            return f"{w}.custom_properties: must be an object of string values"
        key = event.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or len(key) < 8):
            return f"{w}.idempotency_key: must be a string of at least 8 characters"
    return None


def check_integrations_users(body: Mapping[str, Any]) -> str | None:
    problem = _app_id(body)
    if problem:
        return problem
    items = _array(body, "users")
    if isinstance(items, str):
        return items
    for n, item in enumerate(items):
        w = f"users[{n}]"
        problem = _identifier(item.get("user_identifier"), f"{w}.user_identifier")
        if problem:
            return problem
        props = item.get("custom_properties", {})
        if not isinstance(props, Mapping):
            return f"{w}.custom_properties: must be an object"
        for key, v in props.items():
            if not (v is None or isinstance(v, str | bool) or _number(v)):
                return f"{w}.custom_properties.{key}: must be a string, number, boolean or null"
    return None


def accepted_properties(props: Mapping[str, Any]) -> dict[str, Any]:
    """Properties as Heap stores them: arrays joined with ``||``, truncated at 1024."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if isinstance(value, list):
            value = "||".join(str(v) for v in value)[:MAX_VALUE]
        out[key] = value
    return out
