"""Profile ``heap`` (the default): heaprelay's own behaviour, the best of the peers, and never
anything Heap would reject (``reference/heap-api.md``; SPEC §3).

identify → ``POST /api/add_user_properties`` ``{app_id, identity, properties}``
track    → ``POST /api/track`` ``{app_id, identity, event, timestamp, properties, idempotency_key}``

Rules:

- ``type`` is matched case-insensitively. ``page`` / ``screen`` are not sent
  (``unsupported_type``) unless option ``page_screen=track``: then they are sent as track
  events named ``Page viewed`` / ``Screen viewed`` with the page's ``name`` as property
  ``name``, as Segment's Actions destination does. ``group``, ``alias`` and any other type:
  ``unsupported_type``.
- Identity: RudderStack's chain — the first usable of ``userId``, ``traits.userId``,
  ``traits.id``, ``context.traits.userId``, ``context.traits.id`` — then ``anonymousId`` only
  with option ``anonymous_identity=allow`` (default ``deny``: Segment's rule, as Heap's
  server-side API is meant for identified users). Usable: a string, or a number (sent as its
  JavaScript text), that is not junk: empty, blank, or (ignoring case and surrounding blanks)
  ``null``, ``undefined``, ``none``, ``nan``, ``infinity``, ``0``, ``[object Object]`` —
  such values come from bugs and would merge unrelated users in Heap for good. None usable:
  ``missing_identity``.
  An identity longer than 255 characters is refused (``invalid_field``), not truncated: two
  users whose ids share their first 255 characters would become one user.
- ``event``: a non-blank string (a number is taken as its text), cut to 1024 characters;
  otherwise ``missing_event``.
- Properties (track: ``properties``; identify: ``traits``, else ``context.traits``): nested
  objects flattened with ``.``; arrays JSON-stringified (compact); ``null`` dropped; booleans
  → ``"true"``/``"false"``; names and string values cut to fewer than 1024 characters;
  integers beyond ±2^53 sent as text; other numbers as JavaScript writes them (``67.0`` →
  ``67``, ``-0.0`` → ``0``: the bytes the peers send, the same number for Heap); the
  top-level ``idempotencyKey`` removed.
  User properties only: a key that is any casing of ``id`` (Heap refuses it) is renamed
  ``_id`` / ``_ID`` / … (the ``_email`` convention of Segment's classic destination; more
  ``_`` in front if that name is taken); a key that is another casing of ``email``
  (``Email``, ``EMAIL``) is sent as ``email``, the key Heap maps to its built-in Email
  property, unless ``email`` itself is there. An identify with nothing left to send:
  ``no_properties``.
- Engage events (``heaprelay.transform._engage``: ``context.personas`` with an audience,
  journey step or computed trait): an identify is an identify (the membership ``true`` /
  ``false`` becomes ``"true"`` / ``"false"`` by the rule above, a computed trait its value).
  A track (``Audience Entered`` / ``Audience Exited`` / ``Trait Computed``) is sent as the
  user-property update ``add_user_properties`` ``{key: value}`` for its identity, cleaned as
  traits are, and nothing else; with option ``audience_events=track`` the Heap event follows
  (an ordinary track, after the update). A computed trait whose value cleans to nothing
  (``null``): ``no_properties``, unless the event is sent. Identity: the rule above.
- ``timestamp`` (track): ``timestamp``, else ``originalTimestamp``, as ISO-8601 UTC with
  milliseconds; absent → omitted (Heap uses the time it receives the event); present but not
  a date → ``invalid_timestamp``.
- ``idempotency_key`` (track), always: ``properties.idempotencyKey`` if it is a non-empty
  string or a number, else ``messageId``, else a digest of the message (so a retry of the
  same message is still not counted twice). Keys over 255 characters are replaced by their
  SHA-256 digest (still unique, and short).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

from heaprelay.heap.models import HeapRequest
from heaprelay.messages.reasons import Reason
from heaprelay.transform._base import DestinationSettings, SettingsError, Skip, TransformResult
from heaprelay.transform._engage import EngageUpdate, engage_update
from heaprelay.transform._js import number_to_string, stringify
from heaprelay.transform._properties import (
    MAX_EVENT_CHARS,
    MAX_IDENTITY_CHARS,
    heap_flatten,
    iso_utc,
    renamed_id_key,
    truncate,
    utf16_len,
)

HEADERS: Final[Mapping[str, str]] = {"Content-Type": "application/json"}
JUNK_IDENTITIES: Final = frozenset(
    {"", "null", "undefined", "none", "nan", "infinity", "-infinity", "0", "[object object]"}
)
_EVENT_NAMES: Final = {"page": "Page viewed", "screen": "Screen viewed"}
_MAX_KEY_CHARS: Final = 255
#: Option ``audience_events``: an Engage track event is sent as the user-property update only
#: (``user_properties``, the default) or as the update and the Heap event (``track``).
AUDIENCE_EVENT_MODES: Final = ("user_properties", "track")


def usable_identity(value: Any) -> str | None:
    """The identity text for a candidate value, or ``None`` if it is not usable."""
    kind = type(value)
    if kind is str:
        text: str = value
    elif kind is int or kind is float:
        text = number_to_string(value)
    else:
        return None
    stripped = text.strip()
    if not stripped or (len(stripped) <= 16 and stripped.casefold() in JUNK_IDENTITIES):
        return None
    return text


_IDENTITY_PATHS: Final = (
    ("userId",),
    ("traits", "userId"),
    ("traits", "id"),
    ("context", "traits", "userId"),
    ("context", "traits", "id"),
)
_ANONYMOUS_PATH: Final = ("anonymousId",)


def _candidates(message: Mapping[str, Any], allow_anonymous: bool) -> Iterator[tuple[str, Any]]:
    """(where, value) of every identity candidate, in order, looked up lazily."""
    for path in (*_IDENTITY_PATHS, _ANONYMOUS_PATH) if allow_anonymous else _IDENTITY_PATHS:
        obj: Any = message
        for key in path:
            obj = obj.get(key) if isinstance(obj, Mapping) else None
        if obj is not None:
            yield ".".join(path), obj


class HeapProfile:
    name = "heap"
    options: Mapping[str, tuple[str, ...] | None] = {
        "anonymous_identity": ("deny", "allow"),
        "page_screen": ("skip", "track"),
        "audience_events": AUDIENCE_EVENT_MODES,
    }

    def check_settings(self, settings: DestinationSettings) -> None:
        app_id = settings.app_id
        if not app_id or not app_id.strip():
            raise SettingsError(
                "profile 'heap' needs the Heap app_id of the environment "
                "(--app-id on the command line, app_id in the config file)",
                key="app_id",
            )
        if app_id != app_id.strip():
            raise SettingsError(f"app_id {app_id!r} has surrounding blanks", key="app_id")

    def transform(
        self, message: Mapping[str, Any], settings: DestinationSettings
    ) -> TransformResult:
        raw_type = message.get("type")
        if raw_type is None or raw_type == "":
            return Skip(Reason.MISSING_TYPE, "the message has no type")
        if not isinstance(raw_type, str):
            return Skip(Reason.UNSUPPORTED_TYPE, f"type {stringify(raw_type)} is not a string")
        kind = raw_type if raw_type in ("track", "identify") else raw_type.lower()
        if kind in _EVENT_NAMES and settings.options.get("page_screen") == "track":
            pass
        elif kind not in ("track", "identify"):
            hint = (
                " (option page_screen=track sends it as a track event)"
                if kind in _EVENT_NAMES
                else ""
            )
            return Skip(Reason.UNSUPPORTED_TYPE, f"Heap has no equivalent of {kind}{hint}")
        app_id = settings.app_id
        if not app_id:
            return Skip(Reason.INVALID_APP_ID, "the destination has no app_id")
        identity = find_identity(message, settings.options.get("anonymous_identity") == "allow")
        if isinstance(identity, Skip):
            return identity
        if kind == "identify":
            return _identify(message, settings, identity)
        if kind == "track":
            update = engage_update(message)
            if update is not None:
                return _engage_track(message, settings, identity, update)
        return _track(message, settings, identity, kind)


def find_identity(message: Mapping[str, Any], allow_anonymous: bool = False) -> str | Skip:
    """The identity of ``message`` by the rules above, or why there is none."""
    user_id = message.get("userId")
    if (
        type(user_id) is str
        and 0 < len(user_id) <= 16
        and user_id.strip().casefold() not in JUNK_IDENTITIES
    ):
        return user_id  # the common case, short-circuited
    candidates = _candidates(message, allow_anonymous)
    for where, value in candidates:
        text = usable_identity(value)
        if text is None:
            continue
        if len(text) > MAX_IDENTITY_CHARS // 2 and utf16_len(text) > MAX_IDENTITY_CHARS:
            # Not truncated: users whose ids share a 255-character prefix would be merged.
            return Skip(
                Reason.INVALID_FIELD,
                f"{where} is {utf16_len(text)} characters long; Heap accepts identities of at "
                f"most {MAX_IDENTITY_CHARS}",
            )
        return text
    detail = (
        "no usable userId, traits.userId, traits.id, context.traits.userId or context.traits.id"
    )
    if not allow_anonymous and usable_identity(message.get("anonymousId")) is not None:
        detail += " (the anonymousId is not used unless option anonymous_identity=allow)"
    elif allow_anonymous:
        detail = detail.replace(" or context.traits.id", ", context.traits.id or anonymousId")
    return Skip(Reason.MISSING_IDENTITY, detail)


def user_properties(message: Mapping[str, Any]) -> dict[str, Any]:
    """The user properties of an identify (``traits``, else ``context.traits``), cleaned."""
    traits = message.get("traits")
    if not isinstance(traits, Mapping) or not traits:
        context = message.get("context")
        ctx_traits = context.get("traits") if isinstance(context, Mapping) else None
        if isinstance(ctx_traits, Mapping):
            traits = ctx_traits
    out: dict[str, Any] = {}
    if isinstance(traits, Mapping):
        heap_flatten(traits, out)
    out.pop("idempotencyKey", None)
    for key in [k for k in out if len(k) in (2, 5)]:
        low = key.lower()
        if low == "id":
            out[renamed_id_key(key, out)] = out.pop(key)
        elif low == "email" and key != "email" and "email" not in out:
            out["email"] = out.pop(key)
    return out


def _identify(
    message: Mapping[str, Any], settings: DestinationSettings, identity: str
) -> TransformResult:
    properties = user_properties(message)
    if not properties:
        return Skip(Reason.NO_PROPERTIES, "an identify without traits: nothing to update")
    body = {"app_id": settings.app_id, "identity": identity, "properties": properties}
    return [HeapRequest(settings.heap_base_url, "add_user_properties", body, "POST", HEADERS)]


def _engage_track(
    message: Mapping[str, Any], settings: DestinationSettings, identity: str, update: EngageUpdate
) -> TransformResult:
    """An Engage track event (``Audience Entered`` / ``Audience Exited`` / ``Trait Computed``):
    the user property ``key`` = its value, cleaned as identify traits are; with option
    ``audience_events=track`` followed by the event itself, as an ordinary track."""
    properties = user_properties({"traits": {update.key: update.value}})
    with_event = settings.options.get("audience_events") == "track"
    requests: list[HeapRequest] = []
    if properties:
        body = {"app_id": settings.app_id, "identity": identity, "properties": properties}
        requests.append(
            HeapRequest(settings.heap_base_url, "add_user_properties", body, "POST", HEADERS)
        )
    elif not with_event:
        return Skip(
            Reason.NO_PROPERTIES,
            f"{update.computation} {update.key!r} has no value to send "
            "(option audience_events=track sends the event)",
        )
    if with_event:
        event = _track(message, settings, identity, "track")
        if isinstance(event, Skip):
            return event
        requests += event
    return requests


def _track(
    message: Mapping[str, Any], settings: DestinationSettings, identity: str, kind: str
) -> TransformResult:
    if kind == "track":
        event = event_name(message)
        if not event:
            return Skip(Reason.MISSING_EVENT, "a track call needs an event name")
        if len(event) > MAX_EVENT_CHARS // 2:
            event = truncate(event, MAX_EVENT_CHARS)
    else:
        event = _EVENT_NAMES[kind]
    properties = event_properties(message)
    if properties is None:
        return Skip(Reason.INVALID_FIELD, "properties must be an object")
    if kind != "track":
        name = message.get("name")
        if isinstance(name, str) and name.strip():
            properties["name"] = truncate(name, 1023)
    body: dict[str, Any] = {"app_id": settings.app_id, "identity": identity, "event": event}
    raw_ts = message.get("timestamp")
    if raw_ts is None or raw_ts == "":
        raw_ts = message.get("originalTimestamp")
    if raw_ts is not None and raw_ts != "":
        timestamp = iso_utc(raw_ts)
        if timestamp is None:
            return Skip(
                Reason.INVALID_TIMESTAMP, f"timestamp {stringify(raw_ts)[:100]} is not a date"
            )
        body["timestamp"] = timestamp
    body["properties"] = properties
    body["idempotency_key"] = _idempotency_key(message)
    return [HeapRequest(settings.heap_base_url, "track", body, "POST", HEADERS)]


def event_name(message: Mapping[str, Any]) -> str:
    """A track's event name (a number is taken as its text); ``""`` when it has none."""
    raw_event = message.get("event")
    if isinstance(raw_event, str):
        event: str = raw_event
    elif isinstance(raw_event, int | float) and not isinstance(raw_event, bool):
        event = number_to_string(raw_event)
    else:
        return ""
    return event if event.strip() else ""


def event_properties(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """A track's properties, cleaned; ``None`` when ``properties`` is not an object."""
    raw_props = message.get("properties")
    properties: dict[str, Any] = {}
    if type(raw_props) is dict or isinstance(raw_props, Mapping):
        heap_flatten(raw_props, properties)
    elif raw_props is not None:
        return None
    properties.pop("idempotencyKey", None)
    return properties


def _idempotency_key(message: Mapping[str, Any]) -> str:
    props = message.get("properties")
    raw = props.get("idempotencyKey") if isinstance(props, Mapping) else None
    key = ""
    if isinstance(raw, str) and raw.strip():
        key = raw
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        key = number_to_string(raw)
    if not key:
        message_id = message.get("messageId")
        if isinstance(message_id, str) and message_id.strip():
            key = message_id
        elif isinstance(message_id, int | float) and not isinstance(message_id, bool):
            key = number_to_string(message_id)
    if not key:
        key = (
            "digest:"
            + hashlib.sha256(stringify(message).encode("utf-8", "surrogatepass")).hexdigest()
        )
    if len(key) > _MAX_KEY_CHARS:
        key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key


PROFILE: Final = HeapProfile()
