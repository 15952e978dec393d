"""Machine-readable reasons for every event that is not delivered.

Every message that heaprelay does not deliver to Heap carries one of these codes (and a
human-readable detail). They are part of the public contract: they appear in
``heaprelay transform`` output, in the queue, in the dead-letter queue, in metrics and in the
dashboard. Add codes; never rename one.
"""

from enum import StrEnum


class Reason(StrEnum):
    # --- transform: the event cannot become a Heap request -------------------------------
    MISSING_IDENTITY = "missing_identity"
    """No usable identity (userId / anonymousId / … as the profile requires)."""
    MISSING_EVENT = "missing_event"
    """A track call without an event name."""
    MISSING_TRAITS = "missing_traits"
    """An identify call without traits where the profile requires them."""
    MISSING_MESSAGE_ID = "missing_message_id"
    """The profile needs a messageId (Segment Actions' idempotency key) and there is none."""
    MISSING_TYPE = "missing_type"
    """The message has no ``type``."""
    UNSUPPORTED_TYPE = "unsupported_type"
    """page / screen / group / alias (or an unknown type) that the destination does not send."""
    INVALID_APP_ID = "invalid_app_id"
    """The destination's app_id is missing or not acceptable to Heap."""
    INVALID_TIMESTAMP = "invalid_timestamp"
    """A timestamp the profile must send cannot be parsed."""
    INVALID_EMAIL = "invalid_email"
    """An e-mail the profile validates is not an e-mail address."""
    INVALID_FIELD = "invalid_field"
    """Any other field whose value the profile refuses (detail says which)."""
    NOT_SUBSCRIBED = "not_subscribed"
    """Segment Actions: no subscription matches this event type (group, alias)."""
    NO_PROPERTIES = "no_properties"
    """An identify with nothing to update where the profile requires at least one property."""
    INVALID_JSON = "invalid_json"
    """``heaprelay transform``: an input line that is not JSON (the detail says where)."""
    # --- router filters ------------------------------------------------------------------
    FILTERED_INTEGRATIONS = "filtered_integrations"
    """The message's integrations object switches this destination off."""
    FILTERED_EVENT_NAME = "filtered_event_name"
    """The event name is blocked by the destination's allow-list / deny-list."""
    CONSENT_DENIED = "consent_denied"
    """The user denied a consent category the destination requires."""
    DEVICE_MODE = "device_mode"
    """Sent from a browser SDK to a destination in device mode: the browser delivers it to
    Heap through the relay's integration, so it is not also sent server-side."""
    DUPLICATE = "duplicate"
    """Same messageId from the same source within the dedupe window: accepted, not re-sent."""
    # --- delivery ------------------------------------------------------------------------
    HEAP_REJECTED = "heap_rejected"
    """Heap answered a 4xx other than 429; Heap's answer is kept with the dead letter."""
    RETRY_WINDOW_EXCEEDED = "retry_window_exceeded"
    """Retries (network errors, 429, 5xx) went on past the destination's retry window."""
    DESTINATION_REMOVED = "destination_removed"
    """The destination of a queued event no longer exists in the configuration."""
