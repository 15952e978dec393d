"""Device mode, in Python: the calls heaprelay's browser integration makes on Heap's web SDK
(``window.heap``) for one message, by profile. Pure, like the rest of the transform.

The integration itself is JavaScript (``heaprelay/device/heap-integration.js``, served to
the browser SDKs by :mod:`heaprelay.device`); this module is its specification in the
project's own language, and both are run against one set of vectors
(``tests/data/device/cleaning.json``): Python here, the JavaScript in Chromium. A call is
a list, ``[method, *arguments]``: ``["identify", "u1"]``, ``["addUserProperties", {...}]``,
``["track", "Signed Up", {...}]``.

Profile ``heap`` (the same cleaning as :mod:`heaprelay.transform.profiles.heap`):

- identify → ``heap.identify(identity)`` when the message has a usable identity (the
  profile's chain ``userId``, ``traits.userId``, ``traits.id``, ``context.traits.userId``,
  ``context.traits.id``; never a junk value such as ``"null"`` or ``"0"``, never one over 255
  characters), then ``heap.addUserProperties(properties)`` when there is anything to add
  (the traits, else ``context.traits``, flattened and cleaned as the server-side profile
  does, ``id`` renamed ``_id``);
- track → ``heap.track(event, properties)`` (no call without an event name, or when
  ``properties`` is not an object);
- the limits are those of Heap's web SDK: event names of at most 255 characters, property
  names of fewer than 512, values of fewer than 1024 (longer ones are cut).

Profile ``segment`` (Segment's classic device-mode integration, ``reference/device-mode.md``
§1.3–1.5):

- identify → ``heap.identify(userId)`` when the userId is truthy, then always
  ``heap.addUserProperties(clean(traits))``, where the traits (else ``context.traits``, as
  RudderStack's SDK keeps them) get ``id`` = the userId, and ``email`` becomes ``_email`` —
  also the userId when it looks like an e-mail address and no trait is one (Segment's
  ``Identify#traits({email: '_email'})``);
- track → ``heap.track(event, clean(properties))`` when the event is truthy;
- ``clean`` is :func:`~heaprelay.transform._properties.classic_clean`.

Both: page, screen, group and alias make no call (Heap captures page views itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from heaprelay.transform._js import object_keys
from heaprelay.transform._properties import classic_clean, js_truthy, truncate
from heaprelay.transform.profiles.heap import (
    event_name,
    event_properties,
    find_identity,
    user_properties,
)

__all__ = ["DEVICE_PROFILES", "WEB_MAX_EVENT_CHARS", "WEB_MAX_NAME_CHARS", "browser_calls"]

#: The profiles the browser integration can clean for.
DEVICE_PROFILES: Final = ("heap", "segment")
#: Heap's web SDK: ``heap.track`` event names of at most 255 characters …
WEB_MAX_EVENT_CHARS: Final = 255
#: … and property names of fewer than 512 (values: fewer than 1024, as server-side).
WEB_MAX_NAME_CHARS: Final = 511

BrowserCall = list[Any]


def browser_calls(message: Mapping[str, Any], profile: str) -> list[BrowserCall]:
    """The ``window.heap`` calls the integration makes for ``message`` under ``profile``
    (one of :data:`DEVICE_PROFILES`)."""
    kind = message.get("type")
    kind = kind.lower() if isinstance(kind, str) else ""
    if profile == "segment":
        return _segment(message, kind)
    if profile == "heap":
        return _heap(message, kind)
    raise ValueError(f"no browser integration for profile {profile!r}")


def _heap(message: Mapping[str, Any], kind: str) -> list[BrowserCall]:
    calls: list[BrowserCall] = []
    if kind == "identify":
        identity = find_identity(message)
        if isinstance(identity, str):
            calls.append(["identify", identity])
        traits = _web_names(user_properties(message))
        if traits:
            calls.append(["addUserProperties", traits])
    elif kind == "track":
        event = event_name(message)
        properties = event_properties(message)
        if event and properties is not None:
            calls.append(["track", truncate(event, WEB_MAX_EVENT_CHARS), _web_names(properties)])
    return calls


def _web_names(properties: dict[str, Any]) -> dict[str, Any]:
    """Property names cut to the web SDK's limit (the server-side one is twice as long)."""
    if all(len(name) <= WEB_MAX_NAME_CHARS // 2 for name in properties):
        return properties
    return {truncate(name, WEB_MAX_NAME_CHARS): value for name, value in properties.items()}


_EMAIL_LIKE: Final = re.compile(r".+@.+\..+")
_NOT_KEY_CHARS: Final = re.compile(r"[^a-zA-Z0-9.]+")


def _segment(message: Mapping[str, Any], kind: str) -> list[BrowserCall]:
    if kind == "identify":
        user_id = message.get("userId")
        traits = _segment_traits(message, user_id)
        calls: list[BrowserCall] = [["identify", user_id]] if js_truthy(user_id) else []
        return [*calls, ["addUserProperties", classic_clean(traits)]]
    if kind == "track":
        event = message.get("event")
        props = message.get("properties")
        if js_truthy(event):
            return [["track", event, classic_clean(props if isinstance(props, Mapping) else {})]]
    return []


def _segment_traits(message: Mapping[str, Any], user_id: Any) -> dict[str, Any]:
    """``Identify#traits({email: '_email'})`` of Segment's facade."""
    traits = message.get("traits")
    if not isinstance(traits, Mapping):
        context = message.get("context")
        traits = context.get("traits") if isinstance(context, Mapping) else None
    out = dict(traits) if isinstance(traits, Mapping) else {}
    if js_truthy(user_id):
        out["id"] = user_id
    # Identify#email(): the first trait whose name is "email" once obj-case normalises it
    # (letters and digits, lower case), if truthy; else the userId if it looks like one.
    email: Any = None
    for key in object_keys(out):
        if _NOT_KEY_CHARS.sub("", key).lower() == "email":
            email = out[key]
            break
    if not js_truthy(email):
        email = user_id if isinstance(user_id, str) and _EMAIL_LIKE.search(user_id) else None
    if email is not None:
        out.pop("email", None)
        out["_email"] = email
    return out
