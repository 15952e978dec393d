"""Profile ``segment``: Segment's classic Heap destination in cloud mode, byte for byte.
Reference: ``reference/segment.md`` and the seeds; every vector of
``tests/data/conformance/segment.json`` passes.

- identify → ``/api/add_user_properties`` ``{app_id, identity, properties}``;
  track → ``/api/track`` ``{app_id, identity, event, timestamp, properties}``; nothing else;
- ``identity`` = ``userId`` (required: "Heap drops all anonymous events anyway");
- ``timestamp``: the event's time as an ISO string in UTC with milliseconds;
- properties (track) / traits (identify): ``email`` renamed ``_email``; identify adds
  ``id`` = the userId (option ``id_property``, below); nulls dropped; scalars kept;
  ``segment_library`` =
  ``context.library.name`` (``""`` without one); nested objects flattened with ``.`` and
  arrays JSON-stringified (compact) — see :func:`~heaprelay.transform._properties.segment_clean`;
- numbers as JavaScript writes them (``67.0`` → ``67``;
  :func:`~heaprelay.transform._js.json_number`): the integration ran on Node.js.

Heap refuses a user property named any casing of ``id`` (400 "Bad Request"), so with Heap's
public API, as with the fake Heap, every identify Segment's way is dead-lettered. Option
``id_property`` (``--option id_property=…``) says what to do with it: ``id`` (the default:
Segment's bytes; ``config check`` and ``serve`` warn), ``_id`` (sent as ``_id``, as ``heap``
renames it; another casing such as ``ID`` becomes ``_ID``) or ``omit`` (not sent).

Not pinned by the vectors, so chosen here: ``type`` is compared case-insensitively (Segment's
API normalises it); an event without a timestamp is sent without one (Heap uses "now"); an
unparseable timestamp is not sent (``invalid_timestamp``: the peer's ``toISOString`` throws).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from heaprelay.heap.models import HeapRequest
from heaprelay.messages.reasons import Reason
from heaprelay.transform._base import DestinationSettings, Skip, TransformResult
from heaprelay.transform._js import json_numbers
from heaprelay.transform._properties import (
    is_id_key,
    iso_utc,
    js_truthy,
    renamed_id_key,
    segment_clean,
)

HEADERS: Final[Mapping[str, str]] = {"Content-Type": "application/json"}
#: Option ``id_property``: what becomes of the ``id`` user property Segment adds.
ID_PROPERTY_MODES: Final = ("id", "_id", "omit")


class SegmentProfile:
    name = "segment"
    options: Mapping[str, tuple[str, ...] | None] = {"id_property": ID_PROPERTY_MODES}

    def warnings(self, settings: DestinationSettings) -> list[str]:
        if "id_property" in settings.options:
            return []
        return [
            "profile 'segment' adds the user property id = userId to every identify, as "
            "Segment's classic destination does, and Heap refuses a property named id (400): "
            "every identify would be dead-lettered. Set option id_property=_id (sent as _id, "
            "as profile heap does) or id_property=omit; id_property=id keeps Segment's bytes "
            "without this warning"
        ]

    def check_settings(self, settings: DestinationSettings) -> None:
        # Segment lets a destination be saved without an App ID; each event is then refused
        # ("settings.appId is required"), which transform() reproduces as invalid_app_id.
        return None

    def transform(
        self, message: Mapping[str, Any], settings: DestinationSettings
    ) -> TransformResult:
        kind = message.get("type")
        if not isinstance(kind, str) or not kind:
            return Skip(Reason.MISSING_TYPE, "the message has no type")
        kind = kind.lower()
        if kind not in ("identify", "track"):
            return Skip(Reason.UNSUPPORTED_TYPE, f"Segment's Heap destination does not send {kind}")
        if not settings.app_id:
            return Skip(Reason.INVALID_APP_ID, "settings.appId is required")
        user_id = message.get("userId")
        if not js_truthy(user_id):
            return Skip(Reason.MISSING_IDENTITY, "message.userId is required")
        library = _library(message)
        if kind == "identify":
            traits = message.get("traits")
            props = _renamed_email(traits if isinstance(traits, Mapping) else {})
            props["id"] = user_id
            properties = segment_clean(props, library)
            mode = settings.options.get("id_property", "id")
            if mode != "id":
                properties = _without_id(properties, keep=mode == "_id")
            body: dict[str, Any] = {
                "app_id": settings.app_id,
                "identity": user_id,
                "properties": properties,
            }
            json_numbers(body)
            return [
                HeapRequest(settings.heap_base_url, "add_user_properties", body, "POST", HEADERS)
            ]
        event = message.get("event")
        if not js_truthy(event):
            return Skip(Reason.MISSING_EVENT, "message.event is required")
        body = {"app_id": settings.app_id, "identity": user_id, "event": event}
        raw_ts = message.get("timestamp")
        if raw_ts is not None:
            timestamp = iso_utc(raw_ts)
            if timestamp is None:
                return Skip(Reason.INVALID_TIMESTAMP, f"timestamp {raw_ts!r} is not a date")
            body["timestamp"] = timestamp
        props_in = message.get("properties")
        props = _renamed_email(props_in if isinstance(props_in, Mapping) else {})
        body["properties"] = segment_clean(props, library)
        json_numbers(body)
        return [HeapRequest(settings.heap_base_url, "track", body, "POST", HEADERS)]


def _library(message: Mapping[str, Any]) -> str:
    context = message.get("context")
    library = context.get("library") if isinstance(context, Mapping) else None
    name = library.get("name") if isinstance(library, Mapping) else None
    return name if isinstance(name, str) else ""


def _without_id(properties: Mapping[str, Any], *, keep: bool) -> dict[str, Any]:
    """``properties`` without a key Heap refuses (any casing of ``id``): renamed with ``_``
    in front where it was (``keep``), or left out."""
    out: dict[str, Any] = {}
    for key, value in properties.items():
        if is_id_key(key):
            if keep:
                out[renamed_id_key(key, {**properties, **out})] = value
        else:
            out[key] = value
    return out


def _renamed_email(props: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with ``email`` moved to ``_email`` (appended, as the peer's alias does)."""
    out = dict(props)
    if "email" in out:
        out["_email"] = out.pop("email")
    return out


PROFILE: Final = SegmentProfile()
