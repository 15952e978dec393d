"""Incoming messages: parse and check one request body, fill what the platform fills.

Pure functions (no I/O, time passed in). The ingest API calls :func:`prepare` with the
request's JSON (already inflated) and gets either :class:`Prepared` messages, ready to be
stored as JSON bytes, or a :class:`Rejection` that says what is wrong (code, message and, for
a batch, the index of the offending item).

What the server fills, as Segment does (``reference/api-contracts.md`` §B.5, §B.6, §G):

- ``messageId`` when absent (a uuid4);
- ``receivedAt``: the server's time;
- ``originalTimestamp``: the client's own time (its ``originalTimestamp``, else its
  ``timestamp``, copied as sent), so that what the client sent is never lost;
- ``timestamp``, the time destinations get, by the rule of the platform whose SDK sent the
  message (``reference/api-contracts.md`` §B.6, §C.4):

  - RudderStack's server keeps a parseable ``timestamp`` as it is (no skew correction).
    RudderStack's SDKs are recognised by what they send and Segment's never do: a
    ``timestamp`` together with an ``originalTimestamp`` (``@rudderstack/rudder-sdk-node``
    sends the caller's ``timestamp``, a backfill's say, next to ``originalTimestamp`` = the
    call's time), or the top-level ``channel`` field (``"server"`` from rudder-sdk-python and
    rudder-sdk-node, ``"web"`` from the JS SDK). The kept time is rewritten as RudderStack's
    server rewrites it: RFC 3339 with milliseconds (truncated), in its own UTC offset
    (``Z`` for UTC).
  - Otherwise Segment's rule (its SDKs send only ``timestamp``, the caller's value or the
    call's time, and ``sentAt``): corrected for the client's clock skew,
    ``receivedAt - (sentAt - originalTimestamp)``; without ``sentAt`` the client time is
    kept, without any client time ``receivedAt`` is used (RudderStack computes the same
    when a message has no ``timestamp``);
- batch-level ``context`` and ``integrations`` merged into each item (the item's own values
  win), batch-level ``sentAt`` used for items without their own.

``writeKey`` is removed from the stored messages: it is a credential, not event data.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson

#: The message types every route accepts, and analytics.js's one-letter routes.
TYPES: Final = frozenset({"identify", "track", "page", "screen", "group", "alias"})
SHORT_TYPES: Final[Mapping[str, str]] = {
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
#: Segment: "messageId … fewer than 100 characters".
MAX_MESSAGE_ID_CHARS: Final = 99
#: How deep a message may nest objects and arrays, the message itself being level 1 (so its
#: ``properties`` may nest 253 levels). The most ``orjson`` writes back: a deeper message
#: could not be stored as it came, so it is refused (400 ``nesting_too_deep``).
MAX_DEPTH: Final = 254
#: How deep a request body may nest at all (what ``orjson`` reads).
MAX_BODY_DEPTH: Final = 1024
_OBJECT_FIELDS: Final = ("context", "integrations", "properties", "traits")
_TIME_FIELDS: Final = ("timestamp", "originalTimestamp", "sentAt")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request (or one item of a batch) is refused. ``status`` is the HTTP status."""

    code: str
    message: str
    status: int = 400
    index: int | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.index is not None:
            body["index"] = self.index
        return body


class Prepared(NamedTuple):
    """One accepted message: its id, its per-identity ordering key and its JSON bytes.

    (A named tuple: one is made per message on the ingest hot path.)"""

    message_id: str
    order_key: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    messages: list[Prepared]
    #: Items refused in partial mode (empty in all-or-nothing mode).
    rejected: list[Rejection] = field(default_factory=list)


def parse_json(body: bytes) -> dict[str, Any] | Rejection:
    """The request body as a JSON object (whatever the content type said)."""
    if not body.strip():
        return Rejection("invalid_json", "the request body is empty; send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            return Rejection(
                "nesting_too_deep",
                f"the request body nests objects and arrays more than {MAX_BODY_DEPTH} levels "
                f"deep; a message may nest at most {MAX_DEPTH} levels",
            )
        return Rejection("invalid_json", f"the request body is not valid JSON: {exc}")
    if not isinstance(value, dict):
        return Rejection(
            "invalid_body", f"the request body must be a JSON object, not {_kind(value)}"
        )
    return value


def prepare(
    body: dict[str, Any],
    *,
    route_type: str | None,
    received_at: float,
    max_message_bytes: int,
    body_bytes: int,
    partial: bool = False,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> PreparedRequest | Rejection:
    """Check and enrich the messages of one request.

    ``route_type``: the type of a single-message route (``track`` for ``/v1/track``), or
    ``None`` for a batch route (``/v1/batch``, ``/v1/import``, ``/v1/b``, the beacon).
    ``body_bytes``: the size of the inflated body (messages are only measured one by one when
    the whole body could be over ``max_message_bytes``). ``partial``: store the valid items
    of a batch and list the refused ones instead of refusing the whole batch.

    The messages of ``body`` (this request's own parsed JSON) are enriched in place.
    """
    received = _iso(received_at)
    if route_type is not None:
        if body_bytes > max_message_bytes:
            return _too_large(body_bytes, max_message_bytes, None)
        one = _prepare_one(body, route_type, received, received_at, (None, None), None, new_id)
        if isinstance(one, Rejection):
            return one
        return PreparedRequest([one])

    items = body.get("batch")
    if items is None:
        return Rejection("invalid_body", "a batch request needs a 'batch' array of messages")
    if not isinstance(items, list):
        return Rejection("invalid_body", f"'batch' must be an array, not {_kind(items)}")
    if not items:
        return Rejection("empty_batch", "'batch' is empty: nothing to store")
    batch_defaults: dict[str, Any] = {k: body[k] for k in ("context", "integrations") if k in body}
    for key, value in batch_defaults.items():
        if not isinstance(value, dict):
            return Rejection("invalid_field", f"batch-level '{key}' must be an object")
    sent_at = body.get("sentAt")
    sent_at_seconds = _parse_time(sent_at) if sent_at is not None else None
    if sent_at is not None and sent_at_seconds is None:
        return Rejection(
            "invalid_timestamp", f"batch-level 'sentAt' is not an ISO-8601 time: {sent_at!r}"
        )
    measure = body_bytes > max_message_bytes
    prepared: list[Prepared] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(items):
        result: Prepared | Rejection
        if not isinstance(item, dict):
            result = Rejection("invalid_message", f"must be a JSON object, not {_kind(item)}")
        elif measure and (size := _size(item)) > max_message_bytes:
            result = _too_large(size, max_message_bytes, index)
        else:
            result = _prepare_one(
                item,
                None,
                received,
                received_at,
                (sent_at, sent_at_seconds),
                batch_defaults,
                new_id,
            )
        if isinstance(result, Rejection):
            located = Rejection(
                result.code, f"batch[{index}]: {result.message}", result.status, index
            )
            if not partial:
                return located
            rejected.append(located)
        else:
            prepared.append(result)
    if not prepared:
        return (
            rejected[0]
            if len(rejected) == 1
            else Rejection(
                "invalid_batch",
                "no valid message in the batch: "
                + "; ".join(r.message for r in rejected[:5])
                + ("; …" if len(rejected) > 5 else ""),
            )
        )
    return PreparedRequest(prepared, rejected)


def order_key(message: Mapping[str, Any]) -> str:
    """The identity whose events must stay in order: the first non-blank of ``userId``,
    ``traits.userId``, ``traits.id``, ``context.traits.userId``, ``context.traits.id``,
    ``anonymousId`` (RudderStack's identity rule; Segment's userId-first rule agrees)."""
    value = _text(message.get("userId"))
    if value:
        return value
    traits = message.get("traits")
    if isinstance(traits, dict):
        value = _text(traits.get("userId")) or _text(traits.get("id"))
        if value:
            return value
    context = message.get("context")
    if isinstance(context, dict):
        ctraits = context.get("traits")
        if isinstance(ctraits, dict):
            value = _text(ctraits.get("userId")) or _text(ctraits.get("id"))
            if value:
                return value
    return _text(message.get("anonymousId"))


def check_message(message: Mapping[str, Any], route_type: str | None) -> Rejection | None:
    """What is wrong with one message, or ``None``. Does not look at sizes."""
    checked = _check(message, route_type)
    return checked if isinstance(checked, Rejection) else None


def corrected_timestamp(received_at: float, sent_at: float | None, original: float | None) -> float:
    """Segment's skew correction: ``receivedAt - (sentAt - originalTimestamp)``."""
    if original is None:
        return received_at
    if sent_at is None:
        return original
    return received_at - (sent_at - original)


# --- internals --------------------------------------------------------------------------

_TYPE_LIST = ", ".join(sorted(TYPES))
_MAX_SECONDS = 253_402_300_799.0


_Times = tuple[str, float | None, float | None, float | None]


def _check(message: Mapping[str, Any], route_type: str | None) -> Rejection | _Times:
    """A Rejection, or the type and the parsed timestamp, originalTimestamp and sentAt."""
    get = message.get
    kind = get("type")
    if route_type is not None:
        if kind is not None and kind != route_type:
            return Rejection(
                "invalid_type",
                f"'type' is {kind!r} but this route takes {route_type!r} messages",
            )
        kind = route_type
    elif kind is None:
        return Rejection("missing_type", "'type' is missing; use one of " + _TYPE_LIST)
    if type(kind) is not str or kind not in TYPES:
        return Rejection("invalid_type", f"unknown 'type' {kind!r}; use one of " + _TYPE_LIST)
    if not (_id_text(get("userId")) or _id_text(get("anonymousId"))):
        return Rejection("missing_identity", f"{kind} needs a non-empty 'userId' or 'anonymousId'")
    if kind == "track":
        event = get("event")
        if not isinstance(event, str) or not event.strip():
            return Rejection("missing_event", "track needs a non-empty string 'event'")
    elif kind == "group":
        if not _id_text(get("groupId")):
            return Rejection("missing_group_id", "group needs a non-empty 'groupId'")
    elif kind == "alias" and not _id_text(get("previousId")):
        return Rejection("missing_previous_id", "alias needs a non-empty 'previousId'")
    for key in _OBJECT_FIELDS:
        if key in message and type(value := message[key]) is not dict and value is not None:
            return Rejection("invalid_field", f"'{key}' must be an object, not {_kind(value)}")
    message_id = get("messageId")
    if message_id is not None and type(message_id) is not str:
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            return Rejection("invalid_field", "'messageId' must be a string")
        message_id = str(message_id)
    if message_id is not None and len(message_id) > MAX_MESSAGE_ID_CHARS:
        return Rejection(
            "invalid_field",
            f"'messageId' must be fewer than {MAX_MESSAGE_ID_CHARS + 1} characters",
        )
    times: list[float | None] = [None, None, None]
    for i, key in enumerate(_TIME_FIELDS):
        if key in message and (value := message[key]) is not None:
            parsed = _parse_time(value)
            if parsed is None:
                return Rejection(
                    "invalid_timestamp", f"'{key}' is not an ISO-8601 date-time: {value!r}"
                )
            times[i] = parsed
    return kind, times[0], times[1], times[2]


def _prepare_one(
    item: dict[str, Any],
    route_type: str | None,
    received: str,
    received_at: float,
    batch_sent_at: tuple[Any, float | None],
    batch_defaults: Mapping[str, Any] | None,
    new_id: Callable[[], str],
) -> Prepared | Rejection:
    checked = _check(item, route_type)
    if isinstance(checked, Rejection):
        return checked
    kind, timestamp, original, sent = checked
    # ``item`` is this request's own parsed JSON: enriched in place.
    message = item
    message["type"] = kind
    message.pop("writeKey", None)
    if batch_defaults:
        for key, value in batch_defaults.items():
            own = message.get(key)
            message[key] = _merge(value, own) if isinstance(own, dict) else value
    message_id = message.get("messageId")
    message_id = new_id() if message_id is None or message_id == "" else str(message_id)
    message["messageId"] = message_id
    if sent is None and batch_sent_at[0] is not None:
        message["sentAt"], sent = batch_sent_at
    message["receivedAt"] = received
    if timestamp is not None and (original is not None or type(message.get("channel")) is str):
        # A RudderStack SDK: its server keeps the client's timestamp (a backfill's time).
        if original is None:
            message["originalTimestamp"] = message["timestamp"]
        message["timestamp"] = _rfc3339_milli(message["timestamp"])
        return _prepared(message_id, message)
    if original is None and timestamp is not None:
        message["originalTimestamp"] = message["timestamp"]
        original = timestamp
    corrected = corrected_timestamp(received_at, sent, original)
    message["timestamp"] = received if corrected == received_at else _iso(corrected)
    return _prepared(message_id, message)


def _prepared(message_id: str, message: dict[str, Any]) -> Prepared | Rejection:
    payload = _dumps(message)
    if isinstance(payload, Rejection):
        return payload
    return Prepared(message_id, order_key(message), payload)


def _size(message: Any) -> int:
    """Bytes of the message's JSON (0 if it cannot be written: :func:`_prepared` says why)."""
    encoded = _dumps(message)
    return 0 if isinstance(encoded, Rejection) else len(encoded)


def _dumps(message: Any) -> bytes | Rejection:
    """The message's JSON bytes; a Rejection for one ``orjson`` cannot write (nested deeper
    than :data:`MAX_DEPTH`: what it reads, it writes otherwise)."""
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError as exc:
        if "recursion" in str(exc).lower():
            return Rejection(
                "nesting_too_deep",
                f"the message nests objects and arrays more than {MAX_DEPTH} levels deep "
                f"(the message itself is level 1); the limit is {MAX_DEPTH}",
            )
        return Rejection("invalid_message", f"the message cannot be stored as JSON: {exc}")


def _merge(base: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``, objects merged key by key."""
    merged = dict(base)
    for key, value in own.items():
        under = merged.get(key)
        if isinstance(value, dict) and isinstance(under, dict):
            merged[key] = _merge(under, value)
        else:
            merged[key] = value
    return merged


def _parse_time(value: Any) -> float | None:
    """Seconds since the epoch for an ISO-8601 date-time string (any precision, ``Z`` or an
    offset; no offset means UTC); ``None`` if it is not one."""
    if type(value) is str and len(value) == 24 and value[19] == "." and value[23] == "Z":
        # What the SDKs send ("2024-05-01T12:00:00.123Z"): the seconds part is looked up.
        millis = value[20:23]
        whole = _PREFIX_SECONDS.get(value[:19])
        if whole is not None and millis.isascii() and millis.isdigit():
            # Exactly what the general path gives: total microseconds / 10**6, rounded once.
            return (whole * 1000 + int(millis)) / 1000
    parsed = _parse_time_general(value)
    if parsed is not None and type(value) is str and len(value) == 24 and value[23] == "Z":
        _remember_prefix(value[:19])
    return parsed


def _remember_prefix(prefix: str) -> None:
    # Only plain "YYYY-MM-DDTHH:MM:SS" (then prefix + ".mmmZ" means what the fast path says).
    if prefix in _PREFIX_SECONDS or not _PLAIN_SECONDS.fullmatch(prefix):
        return
    seconds = _parse_time_general(prefix)
    if seconds is not None and seconds == int(seconds):
        if len(_PREFIX_SECONDS) > 4096:
            _PREFIX_SECONDS.clear()
        _PREFIX_SECONDS[prefix] = int(seconds)


#: Seconds since the epoch of an ISO-8601 date-time string, as the relay reads ``timestamp``
#: (``None`` if it is not one): for those who read stored messages (the audiences' history).
parse_time: Final = _parse_time

#: "YYYY-MM-DDTHH:MM:SS" -> seconds since the epoch (events of one batch share their seconds).
_PREFIX_SECONDS: dict[str, int] = {}
_PLAIN_SECONDS: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")


def _parse_time_general(value: Any) -> float | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        # Python 3.11 takes at most 6 fractional digits; JavaScript/Go may send 9.
        trimmed = _trim_fraction(text)
        if trimmed is None:
            return None
        try:
            parsed = datetime.fromisoformat(trimmed)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    seconds = parsed.timestamp()
    # Outside 1970..9999 the corrected time could not be written back.
    return seconds if 0 <= seconds < _MAX_SECONDS else None


def _rfc3339_milli(value: str) -> str:
    """A parseable time as Go's ``Format("2006-01-02T15:04:05.000Z07:00")`` writes it (what
    RudderStack's server stores): milliseconds truncated, the time's own offset kept."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = datetime.fromisoformat(_trim_fraction(text) or text)
    offset = parsed.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    if minutes == 0:
        zone = "Z"
    else:
        sign = "+" if minutes > 0 else "-"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{parsed:%Y-%m-%dT%H:%M:%S}.{parsed.microsecond // 1000:03d}{zone}"


def _trim_fraction(text: str) -> str | None:
    dot = text.find(".", 10)
    if dot < 0:
        return None
    end = dot + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    if end - dot - 1 <= 6:
        return None
    return text[: dot + 7] + text[end:]


def _iso(seconds: float) -> str:
    """RFC 3339 in UTC with milliseconds, as Segment writes its times."""
    seconds = min(max(seconds, 0.0), _MAX_SECONDS)
    whole = int(seconds)
    millis = round((seconds - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    prefix = _ISO_PREFIXES.get(whole)
    if prefix is None:
        if len(_ISO_PREFIXES) > 4096:
            _ISO_PREFIXES.clear()
        prefix = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ISO_PREFIXES[whole] = prefix
    return f"{prefix}.{millis:03d}Z"


#: Seconds -> "YYYY-MM-DDTHH:MM:SS" (events of one batch share their seconds).
_ISO_PREFIXES: dict[int, str] = {}


def _text(value: Any) -> str:
    if value is None or isinstance(value, bool | dict | list):
        return ""
    return str(value).strip()


def _id_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def _too_large(size: int, limit: int, index: int | None) -> Rejection:
    return Rejection(
        "message_too_large",
        f"the message is {size} bytes, over this source's message limit of {limit} bytes "
        "(max_message_bytes)",
        413,
        index,
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
