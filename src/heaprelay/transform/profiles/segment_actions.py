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

from heaprelay.messages.reasons import Reason
from heaprelay.transform._base import DestinationSettings, SettingsError, Skip, TransformResult
from heaprelay.transform.profiles._actions import (
    REGION_CHOICES,
    SEGMENT_LIBRARY,
    InvalidField,
    actions_request,
    checked_utc_iso,
    flat_under,
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
        raise SettingsError(
            f"profile {name!r} needs an app_id (Segment's 'appId' setting)", key="app_id"
        )
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
            f"Region' setting accepts exactly {' or '.join(REGION_CHOICES)} (upper case)",
            key="region",
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
    # str_field / obj_field in the same order as before (the first invalid field is the one
    # named), with the usual case (a non-empty string, a dict) taken inline.
    value = msg.get("messageId")
    message_id = value if type(value) is str and value else str_field(value, "messageId")
    if message_id is None:
        return Skip(
            Reason.MISSING_MESSAGE_ID, "The root value is missing the required field 'message_id'."
        )
    value = msg.get("anonymousId")
    anonymous_id = value if type(value) is str and value else str_field(value, "anonymousId")
    if "identity" in settings.options:
        value = msg.get("userId")
        identity = value if type(value) is str and value else str_field(value, "userId")
    else:
        identity = None
    value = msg.get("event")
    event = value if type(value) is str and value else str_field(value, "event")
    value = msg.get("name")
    name = None if value is None else str_field(value, "name")
    value = msg.get("properties")
    properties = value if type(value) is dict else obj_field(value, "properties")
    ctx = msg.get("context")
    traits: Mapping[str, Any] | None
    if isinstance(ctx, dict):
        value = ctx.get("traits")
        if value is None or type(value) is dict:
            traits = value
        else:
            traits = obj_field(value, "context.traits")
    else:
        traits = None
    value = msg.get("timestamp")
    raw_ts = value if type(value) is str and value else str_field(value, "timestamp")
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
    # is_defined of a string or None: neither empty nor "0".
    has_identity = bool(identity) and identity != "0"
    has_anonymous_id = bool(anonymous_id) and anonymous_id != "0"
    if has_identity:
        user_identifier = {"identity": identity}
    elif has_anonymous_id:
        user_identifier = {"anonymous_id": anonymous_id}
    else:
        return Skip(Reason.MISSING_IDENTITY, "Either identity or anonymous id are required.")

    custom: dict[str, Any] = {"segment_library": SEGMENT_LIBRARY}
    if properties:
        flat_under(custom, properties, "")
    if name and name != "0":
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
    track = actions_request(
        base,
        "integrations/track",
        {"app_id": app_id, "events": [track_event], "library": "server"},
    )
    if not has_identity or not (has_anonymous_id or is_defined(traits)):
        return [track]
    props: dict[str, Any] = {}
    if has_anonymous_id:
        props["anonymous_id"] = anonymous_id
    if traits:
        flat_under(props, traits, "")
    profile = actions_request(
        base,
        "add_user_properties",
        {"app_id": app_id, "identity": identity, "properties": props},
    )
    return [profile, track]


def _identify_user(msg: Mapping[str, Any], settings: DestinationSettings) -> TransformResult:
    value = msg.get("userId")
    user_id = value if type(value) is str and value else str_field(value, "userId")
    value = msg.get("anonymousId")
    anonymous_id = value if type(value) is str and value else str_field(value, "anonymousId")
    value = msg.get("traits")
    traits = value if value is None or type(value) is dict else obj_field(value, "traits")
    if not user_id or user_id == "0":
        return Skip(
            Reason.MISSING_IDENTITY, "Missing identity, cannot add user properties without identity"
        )
    props: dict[str, Any] = {}
    if anonymous_id:
        props["anonymous_id"] = anonymous_id
    if traits:
        flat_under(props, traits, "")
    body = {"identity": user_id, "app_id": settings.app_id, "properties": props}
    return [actions_request(settings.heap_base_url, "add_user_properties", body)]


PROFILE: Final = SegmentActionsProfile()
