"""Per-destination filters applied before the transform. Pure: message + destination -> Skip | None.

Each filter returns a :class:`~heaprelay.transform.Skip` with its own reason when the message
must not go to the destination, so nothing is dropped silently. :func:`check` applies them in
this order; the first that refuses gives the reason:

1. **The integrations object** (``filtered_integrations``), as Segment and RudderStack define
   it. ``All`` defaults to true; a destination key whose value is ``true`` or an object sends,
   ``false`` skips, any other value (or no key) falls back to ``All``. A Heap destination
   answers to two kinds of key, the most specific first:

   - its own ``id`` from the configuration (``{"All": false, "web-eu": true}`` sends to that
     destination only, whatever the platform keys say);
   - the platform names ``"Heap"`` (Segment) and ``"Heap.io"`` (RudderStack), shared by every
     Heap destination of the source, and the destination's own ``integration_names`` (the
     name of a destination that forwards to the relay, e.g. ``"Webhooks"``). If several are
     present and disagree, ``false`` wins: an explicit opt-out is never overridden by
     another name.

   As in RudderStack, an integrations value that is not an object, or an ``All`` that is not a
   boolean, sends to no destination. ``"integrations": null`` is treated as absent.
2. **Consent** (``consent_denied``), RudderStack's consent management: the event's
   ``context.consentManagement.deniedConsentIds`` against the destination's configured
   categories; see :func:`consent_skip`.
3. **Event-name allow/deny list** (``filtered_event_name``), RudderStack's client-side events
   filtering, for track events only; see :func:`event_name_skip`.
4. **Device mode** (``device_mode``): an event from a browser SDK to a destination in device
   mode was delivered to Heap by the browser; see :func:`device_mode_skip`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from heaprelay.config import Consent, Destination, EventFilter
from heaprelay.messages.reasons import Reason
from heaprelay.transform import Skip

#: Names by which the integrations object addresses every Heap destination.
INTEGRATION_NAMES: tuple[str, ...] = ("Heap", "Heap.io")
#: ``context.library.name`` of the browser SDKs whose pages load the device-mode integration:
#: Segment's analytics.js (classic and analytics-next) and RudderStack's JavaScript SDK.
BROWSER_LIBRARIES: frozenset[str] = frozenset(
    {"analytics.js", "analytics-next", "RudderLabs JavaScript SDK", "RudderStack JavaScript SDK"}
)

__all__ = [
    "BROWSER_LIBRARIES",
    "INTEGRATION_NAMES",
    "check",
    "consent_skip",
    "device_mode_skip",
    "event_name_skip",
    "integrations_skip",
]


def _switch(value: Any) -> bool | None:
    """A destination key's meaning: True (send), False (skip) or None (falls back to All)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return True
    return None


def integrations_skip(
    message: Mapping[str, Any],
    destination_id: str | None = None,
    names: tuple[str, ...] = (),
) -> Skip | None:
    """The integrations object for one destination (see the module docstring); ``names``:
    the destination's ``integration_names``."""
    integrations = message.get("integrations")
    if integrations is None:
        return None
    if not isinstance(integrations, Mapping):
        return Skip(Reason.FILTERED_INTEGRATIONS, "integrations is not an object")
    all_value = integrations.get("All", True)
    if not isinstance(all_value, bool):
        return Skip(
            Reason.FILTERED_INTEGRATIONS,
            f'integrations object has a non-boolean "All" ({all_value!r})',
        )
    levels: list[tuple[str, ...]] = [INTEGRATION_NAMES + names]
    if destination_id:
        levels.insert(0, (destination_id,))
    for names in levels:
        decided = [(n, s) for n in names if (s := _switch(integrations.get(n))) is not None]
        if not decided:
            continue
        off = [n for n, s in decided if s is False]
        if off:
            return Skip(Reason.FILTERED_INTEGRATIONS, f'integrations object has "{off[0]}": false')
        return None
    if all_value is False:
        return Skip(
            Reason.FILTERED_INTEGRATIONS,
            'integrations object has "All": false and does not name this destination true',
        )
    return None


@lru_cache(maxsize=256)
def _trimmed(events: tuple[str, ...]) -> frozenset[str]:
    return frozenset(e.strip() for e in events)


def event_name_skip(message: Mapping[str, Any], event_filter: EventFilter) -> Skip | None:
    """RudderStack's client-side events filtering: only ``track`` events are filtered; names are
    compared case-sensitively after trimming white space. A deny-list lets a track without a
    (string) event name through; an allow-list blocks it."""
    if event_filter.mode == "disable" or message.get("type") != "track":
        return None
    event = message.get("event")
    name = event.strip() if isinstance(event, str) and event else None
    listed = name is not None and name in _trimmed(event_filter.events)
    if event_filter.mode == "deny" and listed:
        return Skip(Reason.FILTERED_EVENT_NAME, f"event {name!r} is on the deny-list")
    if event_filter.mode == "allow" and not listed:
        shown = repr(name) if name is not None else "without a name"
        return Skip(Reason.FILTERED_EVENT_NAME, f"event {shown} is not on the allow-list")
    return None


def _strings(value: Any) -> list[str]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [v for v in value if isinstance(v, str) and v]


def consent_skip(message: Mapping[str, Any], consent: Sequence[Consent]) -> Skip | None:
    """RudderStack's server-side consent filter (rudder-server ``processor/consent.go``).

    Reads ``context.consentManagement`` = ``{deniedConsentIds, provider, resolutionStrategy}``
    (``allowedConsentIds`` is not used, as in RudderStack). Without denied ids nothing is
    filtered. Then, for the destination:

    - generic settings for the event's ``provider``: the strategy is the destination's
      ``resolution`` for ``custom``, else the event's ``resolutionStrategy``; ``"or"`` skips
      only when *every* configured category is denied, anything else (``"and"``, missing)
      skips when *any* is denied;
    - else, provider absent or ``oneTrust``, legacy OneTrust categories: skip when any is denied;
    - else, provider absent or ``ketch``, legacy Ketch purposes: skip when all are denied;
    - else send. Category ids are case-sensitive.
    """
    if not consent:
        return None
    context = message.get("context")
    info = context.get("consentManagement") if isinstance(context, Mapping) else None
    if not isinstance(info, Mapping):
        return None
    denied = set(_strings(info.get("deniedConsentIds")))
    if not denied:
        return None
    provider = info.get("provider") if isinstance(info.get("provider"), str) else ""
    strategy = info.get("resolutionStrategy")

    for entry in consent:
        if entry.legacy or entry.provider != provider or not entry.categories:
            continue
        if provider == "custom":
            strategy = entry.resolution
        hit = [c for c in entry.categories if c in denied]
        if strategy == "or":
            if len(hit) == len(entry.categories):
                return Skip(
                    Reason.CONSENT_DENIED,
                    f"{provider}: every required category is denied ({', '.join(hit)}; "
                    f'resolution "or")',
                )
        elif hit:
            return Skip(
                Reason.CONSENT_DENIED,
                f"{provider}: denied category {', '.join(hit)} is required "
                f'(resolution "{strategy if strategy == "and" else "and (default)"}")',
            )
        return None

    for legacy_provider in ("oneTrust", "ketch"):
        if provider not in ("", legacy_provider):
            continue
        categories = [
            c for e in consent if e.legacy and e.provider == legacy_provider for c in e.categories
        ]
        if not categories:
            continue
        hit = [c for c in categories if c in denied]
        if legacy_provider == "oneTrust" and hit:
            return Skip(
                Reason.CONSENT_DENIED, f"oneTrust cookie category {', '.join(hit)} is denied"
            )
        if legacy_provider == "ketch" and len(hit) == len(categories):
            return Skip(Reason.CONSENT_DENIED, f"every Ketch purpose is denied ({', '.join(hit)})")
        return None
    return None


def device_mode_skip(message: Mapping[str, Any], destination: Destination) -> Skip | None:
    """An event of a browser SDK (:data:`BROWSER_LIBRARIES`, by ``context.library.name``) to a
    destination with ``device_mode``: the page's integration delivered it to Heap, so it is
    not sent again, unless ``device_mode_server_side``. Every other event (server and mobile
    SDKs, curl, files) goes server-side as usual."""
    if not destination.device_mode or destination.device_mode_server_side:
        return None
    context = message.get("context")
    library = context.get("library") if isinstance(context, Mapping) else None
    name = library.get("name") if isinstance(library, Mapping) else None
    if isinstance(name, str) and name in BROWSER_LIBRARIES:
        return Skip(
            Reason.DEVICE_MODE,
            f"sent by {name} to a destination in device mode: the browser delivers it to Heap "
            "(device_mode_server_side = true sends it server-side too)",
        )
    return None


def check(message: Mapping[str, Any], destination: Destination) -> Skip | None:
    """All filters of ``destination``, in order; the first that refuses gives the Skip."""
    return (
        integrations_skip(message, destination.id, destination.integration_names)
        or consent_skip(message, destination.consent)
        or event_name_skip(message, destination.event_filter)
        or device_mode_skip(message, destination)
    )
