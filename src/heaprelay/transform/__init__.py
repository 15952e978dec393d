"""The transform: one Segment/RudderStack message + destination settings -> Heap requests.

Pure: no I/O, no clock, no randomness. Errors are values: an event that is not sent comes
back as :class:`Skip` with a :class:`~heaprelay.messages.Reason`, never as an exception.

Profiles reproduce a peer byte for byte (``rudderstack``, ``segment``, ``segment-actions``,
``segment-heap-cloud``) or give heaprelay's own best behaviour (``heap``, the default).

    >>> from heaprelay.transform import DestinationSettings, transform
    >>> transform({"type": "track", "userId": "u1", "event": "Signed Up"},
    ...           DestinationSettings(app_id="123", profile="heap"))  # doctest: +SKIP
    [HeapRequest(...)]
"""

from heaprelay.transform._base import (
    PROFILE_NAMES,
    DestinationSettings,
    Profile,
    SettingsError,
    Skip,
    TransformResult,
    check_options,
    get_profile,
    settings_warnings,
    transform,
    validate_settings,
)
from heaprelay.transform._engage import EngageUpdate, audience_membership, engage_update

__all__ = [
    "PROFILE_NAMES",
    "DestinationSettings",
    "EngageUpdate",
    "Profile",
    "SettingsError",
    "Skip",
    "TransformResult",
    "audience_membership",
    "check_options",
    "engage_update",
    "get_profile",
    "settings_warnings",
    "transform",
    "validate_settings",
]
