"""Profile ``segment-heap-cloud``: Segment's "Heap Cloud" destination (2026), byte for byte.

Reference: ``reference/segment-actions.md`` §1 and §3 (``heap-cloud/sendEvent`` with its four
presets). Known users with traits get an ``/api/integrations/add_user_properties`` request
first; track / page / screen then go to ``/api/integrations/track``. identify sends the
profile update only. group / alias: no subscription, nothing sent.

Option ``nested_properties_mode=flatten|stringify|drop`` (the mapping field of that name;
``flatten`` is the preset's value).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from heaprelay.messages.reasons import Reason
from heaprelay.transform._base import DestinationSettings, Skip, TransformResult
from heaprelay.transform.profiles._actions import (
    SEGMENT_LIBRARY,
    InvalidField,
    actions_request,
    canonical_iso,
    flat_json_under,
    flat_mode_into,
    flat_under,
    is_date_like,
    obj_field,
    str_field,
)
from heaprelay.transform.profiles.segment_actions import check_actions_settings

_TYPES: Final = frozenset(("track", "page", "screen", "identify"))
_EVENT_NAMES: Final = {"page": "Page viewed", "screen": "Screen viewed"}
_MODES: Final = ("flatten", "stringify", "drop")
# ajv-formats' "email" format (full mode, the default of addFormats).
_EMAIL: Final = re.compile(
    r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?",
    re.ASCII | re.IGNORECASE,
)
# String.prototype.trim's white space (JavaScript WhiteSpace + LineTerminator).
_JS_TRIM: Final = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


class SegmentHeapCloudProfile:
    name = "segment-heap-cloud"
    options: Mapping[str, tuple[str, ...] | None] = {"nested_properties_mode": _MODES}

    def check_settings(self, settings: DestinationSettings) -> None:
        check_actions_settings(settings, self.name, region_required=True)

    def transform(
        self, message: Mapping[str, Any], settings: DestinationSettings
    ) -> TransformResult:
        kind = message.get("type")
        if not isinstance(kind, str):
            kind = repr(kind)
        if kind not in _TYPES:
            return Skip(
                Reason.NOT_SUBSCRIBED,
                f"no subscription of Heap Cloud matches type {kind!r} "
                "(presets: track, page, screen, identify)",
            )
        try:
            return _send_event(message, settings, kind)
        except InvalidField as exc:
            return Skip(Reason.INVALID_FIELD, str(exc))
        except RecursionError:
            return Skip(Reason.INVALID_FIELD, "properties nested too deeply")


def _send_event(
    msg: Mapping[str, Any], settings: DestinationSettings, kind: str
) -> TransformResult:
    # str_field / obj_field in the mapping's order (the first invalid field is the one named),
    # with the usual case (a non-empty string, a dict, absence) taken inline.
    ctx = msg.get("context")
    ctx_traits = ctx.get("traits") if isinstance(ctx, dict) else None
    # email: @if exists $.email then $.email else $.context.traits.email
    raw_email = msg.get("email")
    if raw_email is None and isinstance(ctx_traits, dict):
        raw_email = ctx_traits.get("email")
    value = msg.get("messageId")
    message_id = value if type(value) is str and value else str_field(value, "messageId")
    value = msg.get("event")
    event = value if type(value) is str and value else str_field(value, "event")
    value = msg.get("name")
    name = None if value is None else str_field(value, "name")
    value = msg.get("userId")
    identity = value if type(value) is str and value else str_field(value, "userId")
    value = msg.get("anonymousId")
    anonymous_id = value if type(value) is str and value else str_field(value, "anonymousId")
    email = None if raw_email is None else str_field(raw_email, "email")
    value = msg.get("timestamp")
    timestamp = value if type(value) is str and value else str_field(value, "timestamp")
    value = msg.get("properties")
    properties = value if type(value) is dict else obj_field(value, "properties")
    value = msg.get("traits") if kind == "identify" else ctx_traits
    if value is None or type(value) is dict:
        traits: Mapping[str, Any] | None = value
    else:
        traits = obj_field(value, "traits" if kind == "identify" else "context.traits")
    if message_id is None:
        return Skip(
            Reason.MISSING_MESSAGE_ID, "The root value is missing the required field 'message_id'."
        )
    if kind == "track" and event is None:
        return Skip(
            Reason.MISSING_EVENT,
            "The root value is missing the required field 'event'. "
            'The root value must match "then" schema.',
        )
    if timestamp is not None and not (canonical_iso(timestamp) or is_date_like(timestamp)):
        return Skip(
            Reason.INVALID_TIMESTAMP, "Timestamp must be a valid date-like string but it was not."
        )
    if email is not None and _EMAIL.fullmatch(email) is None:
        return Skip(
            Reason.INVALID_EMAIL, "Email must be a valid email address string but it was not."
        )

    mode = settings.options.get("nested_properties_mode", "flatten")
    if identity is not None:
        identity = identity.strip(_JS_TRIM) or None
    user_props: dict[str, Any] | None = None
    if traits:
        user_props = {}
        if mode == "flatten":
            flat_json_under(user_props, traits, "")
        else:
            flat_mode_into(user_props, traits, mode, True)
    if kind == "identify" and identity is None:
        return Skip(Reason.MISSING_IDENTITY, "Identity is required for identify calls.")
    if user_props and identity is None:
        return Skip(
            Reason.MISSING_IDENTITY, "Identity is required when User Properties are provided."
        )
    app_id = settings.app_id
    base = settings.heap_base_url
    profile = None
    if user_props:
        users = [{"user_identifier": {"identity": identity}, "custom_properties": user_props}]
        profile = actions_request(
            base,
            "integrations/add_user_properties",
            {"app_id": app_id, "library": "server", "users": users},
        )
    if kind == "identify":
        if profile is None:
            return Skip(
                Reason.NO_PROPERTIES,
                "No properties to update. Identify calls require at least one User Property.",
            )
        return [profile]

    user_identifier: dict[str, str] = {}
    if identity is not None:
        user_identifier["identity"] = identity
    if anonymous_id is not None and (anon := anonymous_id.strip(_JS_TRIM)):
        user_identifier["anonymous_id"] = anon
    if email is not None and (mail := email.strip(_JS_TRIM)):
        user_identifier["email"] = mail
    if not user_identifier:
        return Skip(
            Reason.MISSING_IDENTITY,
            "At least one of Identity, Anonymous ID, User ID or Email is required.",
        )
    custom: dict[str, Any] = {"segment_library": SEGMENT_LIBRARY}
    if properties:
        if mode == "flatten":
            flat_under(custom, properties, "")
        else:
            flat_mode_into(custom, properties, mode, False)
    if name is not None and name.strip(_JS_TRIM):
        custom["name"] = name
    track_event: dict[str, Any] = {
        "event": _EVENT_NAMES.get(kind) or event or "track",
        "user_identifier": user_identifier,
        "custom_properties": custom,
        "idempotency_key": message_id,
    }
    if timestamp is not None:
        track_event["timestamp"] = timestamp
    track = actions_request(
        base,
        "integrations/track",
        {"app_id": app_id, "library": "server", "events": [track_event]},
    )
    return [track] if profile is None else [profile, track]


PROFILE: Final = SegmentHeapCloudProfile()
