"""Profile ``rudderstack``: RudderStack's Heap.io transformer (the CDK v2 workflow that runs
today), byte for byte, quirks included. Reference: ``reference/rudderstack.md`` §2–§4; every
vector of ``tests/data/conformance/rudderstack.json`` passes.

- ``type`` must be exactly ``identify`` or ``track`` (case-sensitive, as the workflow checks);
- identity: the first JavaScript-truthy of ``userId``, ``traits.userId``, ``traits.id``,
  ``context.traits.userId``, ``context.traits.id``, ``anonymousId``, sent as it is (a number
  stays a number);
- identify: ``properties`` = ``flattenJson(traits ?? context.traits)`` (required);
- track: ``event`` required (truthy); ``properties`` = ``flattenJson(properties)`` (``{}`` when
  absent, ``{"": null}`` for ``null``); ``timestamp`` = ``timestamp ?? originalTimestamp``;
  ``idempotency_key`` = ``properties.idempotencyKey`` when truthy;
- the flattened top-level key ``idempotencyKey`` is always removed (traits too);
- numbers as JavaScript writes them (``67.0`` → ``67``;
  :func:`~heaprelay.transform._js.json_number`): the transformer runs on Node.js, so it
  sends ``JSON.stringify``'s bytes;
- EU host only when the destination's region is ``eu`` (RudderStack: ``dataResidency`` exactly
  ``"eu"``);
- ``app_id`` is the destination's; an empty one is "not configured" (RudderStack's settings
  schema needs 1–100 characters) and, as there, the key is then absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from heaprelay.heap.models import HeapRequest
from heaprelay.messages.reasons import Reason
from heaprelay.transform._base import DestinationSettings, Skip, TransformResult
from heaprelay.transform._js import json_numbers
from heaprelay.transform._properties import js_truthy, rudder_flatten

HEADERS: Final[Mapping[str, str]] = {
    "Content-Type": "application/json",
    "Accept": "application/json",
}
_MISSING = object()


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return _MISSING
        obj = obj.get(key, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def _nullish(value: Any) -> bool:
    return value is None or value is _MISSING


_IDENTITY_PATHS: Final = (
    ("userId",),
    ("traits", "userId"),
    ("traits", "id"),
    ("context", "traits", "userId"),
    ("context", "traits", "id"),
    ("anonymousId",),
)


class RudderStackProfile:
    name = "rudderstack"
    options: Mapping[str, tuple[str, ...] | None] = {}

    def check_settings(self, settings: DestinationSettings) -> None:
        # RudderStack's transformer validates nothing about its settings.
        return None

    def transform(
        self, message: Mapping[str, Any], settings: DestinationSettings
    ) -> TransformResult:
        kind = message.get("type")
        if not js_truthy(kind):
            return Skip(Reason.MISSING_TYPE, "message Type is not present. Aborting message.")
        if kind not in ("identify", "track"):
            return Skip(Reason.UNSUPPORTED_TYPE, f"message type {kind} is not supported")
        if kind == "identify":
            traits = message.get("traits")
            if traits is None:
                traits = _get(message, "context", "traits")
            if _nullish(traits) or not js_truthy(traits):
                return Skip(Reason.MISSING_TRAITS, "traits are required")
            properties = rudder_flatten(traits)
        else:
            event = message.get("event")
            if not js_truthy(event):
                return Skip(Reason.MISSING_EVENT, "event is required")
            props = message.get("properties", _MISSING)
            properties = {} if props is _MISSING else rudder_flatten(props)
        properties.pop("idempotencyKey", None)
        identity: Any = None
        for path in _IDENTITY_PATHS:
            value = _get(message, *path)
            if value is not _MISSING and js_truthy(value):
                identity = value
                break
        if identity is None:
            return Skip(Reason.MISSING_IDENTITY, "userId is required")
        body: dict[str, Any] = {"identity": identity, "properties": properties}
        if settings.app_id:
            body["app_id"] = settings.app_id
        if kind == "identify":
            json_numbers(body)
            return [
                HeapRequest(settings.heap_base_url, "add_user_properties", body, "POST", HEADERS)
            ]
        body["event"] = event
        timestamp = message.get("timestamp")
        if timestamp is None:
            timestamp = message.get("originalTimestamp")
        if timestamp is not None:
            body["timestamp"] = timestamp
        key = _get(message, "properties", "idempotencyKey")
        if key is not _MISSING and js_truthy(key):
            body["idempotency_key"] = key
        json_numbers(body)
        return [HeapRequest(settings.heap_base_url, "track", body, "POST", HEADERS)]


PROFILE: Final = RudderStackProfile()
