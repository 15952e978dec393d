"""Profile ``segment-actions``: Segment's "Heap Cloud (Actions)" destination, byte for byte.

Reference: ``reference/segment-actions.md`` §1–§2 (``heap/trackEvent``, ``heap/identifyUser``
with the two presets as subscriptions). track / page / screen → ``trackEvent``: one
``/api/integrations/track`` request, preceded by ``/api/add_user_properties`` when an identity
is mapped. identify → ``identifyUser``: one ``/api/add_user_properties``. group / alias: no
subscription, nothing sent.

Option ``identity=userId``: the customer mapping ``identity ← $.userId`` (the pre-2023 default,
still carried by older instances); without it the identity field is unmapped, as in the preset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from heaprelay.heap.models import HeapRequest
from heaprelay.spec.reasons import Reason
from heaprelay.transform._base import DestinationSettings, SettingsError, Skip, TransformResult
from heaprelay.transform.profiles._actions import (
    ACTIONS_HEADERS,
    REGION_CHOICES,
    SEGMENT_LIBRARY,
    InvalidField,
    checked_utc_iso,
    flat_into,
    is_defined,
    obj_field,
    str_field,
)

_TRACK_TYPES: Final = frozenset(("track", "page", "screen"))
_EVENT_NAMES: Final = {"page": "Page viewed", "screen": "Screen viewed"}


def check_actions_settings(settings: DestinationSettings, name: str, region_required: bool) -> None:
    """The peer's settings validation, on heaprelay's settings.

    Segment's ``region`` setting is an exact enum ``US`` | ``EU`` (a ``choices`` list): the
    region as the user wrote it (``settings.region_setting``, from the config file or
    ``--region``) must be one of those two, upper case, as in Segment; ``settings.region``
    (``us``/``eu``) is its normalised form and picks the host. ``appId`` is required.
    """
    if not settings.app_id:
        raise SettingsError(f"profile {name!r} needs an app_id (Segment's 'appId' setting)")
    raw = settings.region_setting
    if raw is None:
        if region_required:
            raise SettingsError(
                f"profile {name!r} needs the region setting, as Segment's Heap Cloud "
                "destination does (its 'region' is required); accepted: "
                + " or ".join(REGION_CHOICES)
            )
        return
    if raw not in REGION_CHOICES:
        raise SettingsError(
            f"region {raw!r} is not accepted by profile {name!r}: Segment's 'Data Residency "
            f"Region' setting accepts exactly {' or '.join(REGION_CHOICES)} (upper case)"
        )


class SegmentActionsProfile:
    name = "segment-actions"
    options: Mapping[str, tuple[str, ...] | None] = {"identity": ("userId",)}

    def check_settings(self, settings: DestinationSettings) -> None:
        check_actions_settings(settings, self.name, region_required=False)

    def transform(
        self, message: Mapping[str, Any], settings: DestinationSettings
    ) -> TransformResult:
        try:
            kind = message.get("type")
            if not isinstance(kind, str):
                kind = repr(kind)
            if kind in _TRACK_TYPES:
                return _track_event(message, settings, kind)
            if kind == "identify":
                return _identify_user(message, settings)
            return Skip(
                Reason.NOT_SUBSCRIBED,
                f"no subscription of Heap Cloud (Actions) matches type {kind!r} "
                "(presets: track, page, screen, identify)",
            )
        except InvalidField as exc:
            return Skip(Reason.INVALID_FIELD, str(exc))
        except RecursionError:
            return Skip(Reason.INVALID_FIELD, "properties nested too deeply")


def _track_event(
    msg: Mapping[str, Any], settings: DestinationSettings, kind: str
) -> TransformResult:
    message_id = str_field(msg.get("messageId"), "messageId")
    if message_id is None:
        return Skip(
            Reason.MISSING_MESSAGE_ID, "The root value is missing the required field 'message_id'."
        )
    anonymous_id = str_field(msg.get("anonymousId"), "anonymousId")
    identity = str_field(msg.get("userId"), "userId") if "identity" in settings.options else None
    event = str_field(msg.get("event"), "event")
    name = str_field(msg.get("name"), "name")
    properties = obj_field(msg.get("properties"), "properties")
    ctx = msg.get("context")
    traits = obj_field(ctx.get("traits"), "context.traits") if isinstance(ctx, dict) else None
    raw_ts = str_field(msg.get("timestamp"), "timestamp")
    iso = None
    if raw_ts is not None:
        date_like, iso = checked_utc_iso(raw_ts)
        if not date_like:
            return Skip(
                Reason.INVALID_TIMESTAMP,
                "Timestamp must be a valid date-like string but it was not.",
            )
    if not anonymous_id and not identity:
        return Skip(Reason.MISSING_IDENTITY, "Either Anonymous id or Identity should be specified.")
    if is_defined(identity):
        user_identifier = {"identity": identity}
    elif is_defined(anonymous_id):
        user_identifier = {"anonymous_id": anonymous_id}
    else:
        return Skip(Reason.MISSING_IDENTITY, "Either identity or anonymous id are required.")

    custom: dict[str, Any] = {"segment_library": SEGMENT_LIBRARY}
    if properties:
        flat_into(custom, properties)
    if is_defined(name):
        custom["name"] = name
    track_event: dict[str, Any] = {
        "event": (event or "track") if kind == "track" else _EVENT_NAMES[kind],
        "custom_properties": custom,
        "idempotency_key": message_id,
        "user_identifier": user_identifier,
    }
    if raw_ts is not None:
        if iso is None:  # passes the unix-time check but not dayjs.utc: toISOString throws
            return Skip(Reason.INVALID_TIMESTAMP, f"timestamp {raw_ts!r} is not a valid date")
        track_event["timestamp"] = iso
    app_id = settings.app_id
    base = settings.heap_base_url
    track = HeapRequest(
        base,
        "integrations/track",
        {"app_id": app_id, "events": [track_event], "library": "server"},
        "POST",
        ACTIONS_HEADERS,
    )
    if not is_defined(identity) or not (is_defined(anonymous_id) or is_defined(traits)):
        return [track]
    props: dict[str, Any] = {}
    if is_defined(anonymous_id):
        props["anonymous_id"] = anonymous_id
    if traits:
        flat_into(props, traits)
    profile = HeapRequest(
        base,
        "add_user_properties",
        {"app_id": app_id, "identity": identity, "properties": props},
        "POST",
        ACTIONS_HEADERS,
    )
    return [profile, track]


def _identify_user(msg: Mapping[str, Any], settings: DestinationSettings) -> TransformResult:
    user_id = str_field(msg.get("userId"), "userId")
    anonymous_id = str_field(msg.get("anonymousId"), "anonymousId")
    traits = obj_field(msg.get("traits"), "traits")
    if not user_id or not is_defined(user_id):
        return Skip(
            Reason.MISSING_IDENTITY, "Missing identity, cannot add user properties without identity"
        )
    props: dict[str, Any] = {}
    if anonymous_id:
        props["anonymous_id"] = anonymous_id
    if traits:
        flat_into(props, traits)
    body = {"identity": user_id, "app_id": settings.app_id, "properties": props}
    return [
        HeapRequest(settings.heap_base_url, "add_user_properties", body, "POST", ACTIONS_HEADERS)
    ]


PROFILE: Final = SegmentActionsProfile()
