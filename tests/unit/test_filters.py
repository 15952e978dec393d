"""Router filters, rule by rule, from the platforms' own documentation and code.

Sources: Segment's integrations object (api-contracts §B.8), rudder-server
``processor/integrations/integrations.go`` (§C.5), rudder-server ``processor/consent.go``
(§C.6) and rudder-sdk-js ``isEventDenyListed`` (client-side events filtering).
"""

from __future__ import annotations

from typing import Any

import pytest

from heaprelay.config import Consent, Destination, EventFilter
from heaprelay.messages.reasons import Reason
from heaprelay.router.filters import check, consent_skip, event_name_skip, integrations_skip
from heaprelay.transform import DestinationSettings


def dest(id: str = "web-prod", **kw: Any) -> Destination:
    return Destination(id=id, settings=DestinationSettings(app_id="123"), **kw)


def track(event: Any = "Order Completed", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "u1", **extra}


# --- integrations object ----------------------------------------------------------------


@pytest.mark.parametrize(
    "integrations",
    [
        None,
        {},
        {"All": True},
        {"All": True, "Salesforce": False},  # Segment's documented default example
        {"Heap": True},
        {"Heap.io": True},
        {"All": False, "Heap": True},  # Segment: All false, Heap named true
        {"All": False, "Heap.io": True},  # RudderStack
        {"All": False, "Heap.io": {"some": "option"}},  # an object enables (RudderStack)
        {"All": False, "web-prod": True},  # the destination's own id
        {"Heap": False, "web-prod": True},  # own id is more specific than the platform name
        {"Heap": "no"},  # not a bool nor an object: falls back to All (true)
    ],
)
def test_integrations_send(integrations: Any) -> None:
    message = track(integrations=integrations)
    assert integrations_skip(message, "web-prod") is None
    assert check(message, dest()) is None


@pytest.mark.parametrize(
    ("integrations", "detail"),
    [
        ({"Heap": False}, '"Heap": false'),
        ({"Heap.io": False}, '"Heap.io": false'),
        ({"All": False}, '"All": false'),
        ({"All": False, "Segment.io": True, "Mixpanel": True}, '"All": false'),
        # Engage's shape (api-contracts §D.2) addressed to another destination
        ({"All": False, "Amplitude": True, "Warehouses": {"all": False}}, '"All": false'),
        ({"All": True, "Heap": True, "web-prod": False}, '"web-prod": false'),
        ({"Heap": True, "Heap.io": False}, '"Heap.io": false'),  # false wins on a tie
        ({"All": False, "Heap": None}, '"All": false'),
        ({"All": "false"}, 'non-boolean "All"'),  # RudderStack: no destination at all
        ({"All": None, "Heap": True}, 'non-boolean "All"'),
    ],
)
def test_integrations_skip(integrations: dict[str, Any], detail: str) -> None:
    skip = check(track(integrations=integrations), dest())
    assert skip is not None
    assert skip.reason is Reason.FILTERED_INTEGRATIONS
    assert detail in skip.detail


def test_integration_names_address_the_destination_too() -> None:
    # Engage forwarding through another Segment destination (here: a webhook to the relay)
    # names that destination only.
    forwarded = track(integrations={"All": False, "Webhooks": True})
    assert check(forwarded, dest()) is not None
    named = dest(integration_names=("Webhooks",))
    assert check(forwarded, named) is None
    # an explicit opt-out by a platform name still wins over the extra name
    skip = check(track(integrations={"Webhooks": True, "Heap": False}), named)
    assert skip is not None
    assert '"Heap": false' in skip.detail
    # the destination's own id is still the most specific
    assert check(track(integrations={"Webhooks": False, "web-prod": True}), named) is None


def test_integrations_not_an_object_sends_nowhere() -> None:
    skip = check(track(integrations=["Heap"]), dest())
    assert skip is not None
    assert skip.reason is Reason.FILTERED_INTEGRATIONS


def test_integrations_names_are_case_sensitive() -> None:
    assert check(track(integrations={"heap": False, "HEAP.IO": False}), dest()) is None


def test_two_heap_destinations_addressed_by_id() -> None:
    message = track(integrations={"All": False, "web-eu": True})
    assert check(message, dest("web-eu")) is None
    skip = check(message, dest("web-us"))
    assert skip is not None
    assert skip.reason is Reason.FILTERED_INTEGRATIONS
    # the platform name reaches both
    both = track(integrations={"All": False, "Heap": True})
    assert check(both, dest("web-eu")) is None
    assert check(both, dest("web-us")) is None


# --- event-name filter ------------------------------------------------------------------

DENY = EventFilter(mode="deny", events=("Product Viewed", " Cart Viewed "))
ALLOW = EventFilter(mode="allow", events=("Order Completed",))


def test_disable_lets_everything_through() -> None:
    assert event_name_skip(track("Anything"), EventFilter()) is None


def test_deny_list_blocks_listed_track_events() -> None:
    skip = event_name_skip(track("Product Viewed"), DENY)
    assert skip is not None
    assert skip.reason is Reason.FILTERED_EVENT_NAME
    assert "deny-list" in skip.detail
    assert event_name_skip(track("Order Completed"), DENY) is None


def test_names_are_trimmed_and_case_sensitive() -> None:
    assert event_name_skip(track("  Cart Viewed"), DENY) is not None
    assert event_name_skip(track("product viewed"), DENY) is None
    assert event_name_skip(track("order completed"), ALLOW) is not None


def test_allow_list_lets_only_listed_events_through() -> None:
    assert event_name_skip(track("Order Completed"), ALLOW) is None
    skip = event_name_skip(track("Product Viewed"), ALLOW)
    assert skip is not None
    assert skip.reason is Reason.FILTERED_EVENT_NAME
    assert "allow-list" in skip.detail


@pytest.mark.parametrize("event", [None, "", 42])
def test_track_without_a_name(event: Any) -> None:
    assert event_name_skip(track(event), DENY) is None
    skip = event_name_skip(track(event), ALLOW)
    assert skip is not None
    assert skip.reason is Reason.FILTERED_EVENT_NAME


@pytest.mark.parametrize("kind", ["identify", "page", "screen", "group", "alias"])
def test_only_track_events_are_filtered(kind: str) -> None:
    message = {"type": kind, "event": "Product Viewed", "userId": "u1"}
    assert event_name_skip(message, DENY) is None
    assert event_name_skip(message, ALLOW) is None


# --- consent ----------------------------------------------------------------------------


def cm(denied: Any, provider: str | None = None, strategy: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"allowedConsentIds": ["C0001"], "deniedConsentIds": denied}
    if provider is not None:
        info["provider"] = provider
    if strategy is not None:
        info["resolutionStrategy"] = strategy
    return track(context={"consentManagement": info})


ONETRUST = (Consent(provider="oneTrust", categories=("C0002", "C0003")),)
CUSTOM_AND = (Consent(provider="custom", categories=("analytics", "ads"), resolution="and"),)
CUSTOM_OR = (Consent(provider="custom", categories=("analytics", "ads"), resolution="or"),)


def test_no_denied_ids_never_filters() -> None:
    assert consent_skip(cm([], "oneTrust", "and"), ONETRUST) is None
    assert consent_skip(cm(["", ""], "oneTrust", "and"), ONETRUST) is None
    assert consent_skip(track(), ONETRUST) is None
    assert consent_skip(track(context={"consentManagement": "x"}), ONETRUST) is None


def test_destination_without_consent_settings_gets_everything() -> None:
    assert consent_skip(cm(["C0002", "C0003"], "oneTrust", "and"), ()) is None


def test_and_skips_when_any_configured_category_is_denied() -> None:
    skip = consent_skip(cm(["C0003"], "oneTrust", "and"), ONETRUST)
    assert skip is not None
    assert skip.reason is Reason.CONSENT_DENIED
    assert "C0003" in skip.detail
    assert consent_skip(cm(["C0004"], "oneTrust", "and"), ONETRUST) is None


def test_missing_strategy_means_and() -> None:
    assert consent_skip(cm(["C0002"], "oneTrust"), ONETRUST) is not None


def test_or_skips_only_when_every_configured_category_is_denied() -> None:
    assert consent_skip(cm(["C0002"], "oneTrust", "or"), ONETRUST) is None
    skip = consent_skip(cm(["C0003", "C0002", "C0009"], "oneTrust", "or"), ONETRUST)
    assert skip is not None
    assert skip.reason is Reason.CONSENT_DENIED


def test_custom_provider_takes_the_destinations_strategy() -> None:
    # the event's strategy is ignored for custom
    assert consent_skip(cm(["ads"], "custom", "or"), CUSTOM_AND) is not None
    assert consent_skip(cm(["ads"], "custom", "and"), CUSTOM_OR) is None
    assert consent_skip(cm(["ads", "analytics"], "custom", "and"), CUSTOM_OR) is not None


def test_custom_without_strategy_defaults_to_and() -> None:
    custom = (Consent(provider="custom", categories=("analytics", "ads")),)
    assert consent_skip(cm(["ads"], "custom"), custom) is not None


def test_consent_ids_are_case_sensitive() -> None:
    assert consent_skip(cm(["c0002"], "oneTrust", "and"), ONETRUST) is None


def test_settings_for_another_provider_do_not_apply() -> None:
    assert consent_skip(cm(["C0002"], "ketch", "and"), ONETRUST) is None
    assert consent_skip(cm(["C0002"], "iubenda", "and"), ONETRUST) is None
    iubenda = (Consent(provider="iubenda", categories=("4",)),)
    assert consent_skip(cm(["4"], "iubenda", "and"), iubenda) is not None


def test_provider_per_destination() -> None:
    settings = (*ONETRUST, Consent(provider="ketch", categories=("analytics",)))
    assert consent_skip(cm(["analytics"], "ketch", "and"), settings) is not None
    assert consent_skip(cm(["analytics"], "oneTrust", "and"), settings) is None


LEGACY_ONETRUST = (Consent(provider="oneTrust", categories=("C0002", "C0003"), legacy=True),)
LEGACY_KETCH = (Consent(provider="ketch", categories=("analytics", "ads"), legacy=True),)


@pytest.mark.parametrize("provider", [None, "oneTrust"])
def test_legacy_onetrust_skips_when_any_category_is_denied(provider: str | None) -> None:
    skip = consent_skip(cm(["C0002"], provider), LEGACY_ONETRUST)
    assert skip is not None
    assert skip.reason is Reason.CONSENT_DENIED
    assert consent_skip(cm(["C0009"], provider), LEGACY_ONETRUST) is None


@pytest.mark.parametrize("provider", [None, "ketch"])
def test_legacy_ketch_skips_only_when_all_purposes_are_denied(provider: str | None) -> None:
    assert consent_skip(cm(["ads"], provider), LEGACY_KETCH) is None
    skip = consent_skip(cm(["ads", "analytics"], provider), LEGACY_KETCH)
    assert skip is not None
    assert skip.reason is Reason.CONSENT_DENIED


def test_legacy_settings_ignore_other_providers() -> None:
    assert consent_skip(cm(["C0002"], "ketch"), LEGACY_ONETRUST) is None
    assert consent_skip(cm(["ads", "analytics"], "oneTrust"), LEGACY_KETCH) is None


def test_generic_settings_win_over_legacy_ones() -> None:
    settings = (Consent(provider="oneTrust", categories=("C0004",)), *LEGACY_ONETRUST)
    assert consent_skip(cm(["C0002"], "oneTrust", "and"), settings) is None
    assert consent_skip(cm(["C0004"], "oneTrust", "and"), settings) is not None


# --- order of the filters ---------------------------------------------------------------


def test_check_applies_every_filter() -> None:
    d = dest(event_filter=DENY, consent=ONETRUST)
    assert check(track("Order Completed"), d) is None
    integrations = check(track("Product Viewed", integrations={"Heap": False}), d)
    assert integrations is not None
    assert integrations.reason is Reason.FILTERED_INTEGRATIONS
    message = cm(["C0002"], "oneTrust", "and")
    message["event"] = "Product Viewed"
    consent = check(message, d)
    assert consent is not None
    assert consent.reason is Reason.CONSENT_DENIED
    name = check(track("Product Viewed"), d)
    assert name is not None
    assert name.reason is Reason.FILTERED_EVENT_NAME


# --- device mode ---------------------------------------------------------------------------


def browser_track(library: Any, **extra: Any) -> dict[str, Any]:
    return track(context={"library": {"name": library, "version": "1"}}, **extra)


@pytest.mark.parametrize("library", ["analytics.js", "RudderLabs JavaScript SDK"])
def test_device_mode_skips_the_browser_sdks_events(library: str) -> None:
    skip = check(browser_track(library), dest(device_mode=True))
    assert skip is not None
    assert skip.reason is Reason.DEVICE_MODE
    assert library in skip.detail
    assert check({**browser_track(library), "type": "identify"}, dest(device_mode=True))


@pytest.mark.parametrize(
    "message",
    [
        browser_track("analytics-python"),  # server SDKs of the same source go server-side
        browser_track("analytics-node"),
        browser_track("RudderStack Python SDK"),
        browser_track("analytics-ios"),  # mobile: no page, no integration
        browser_track(None),
        browser_track({"name": "analytics.js"}),
        track(),  # curl, files: no context at all
        track(context="analytics.js"),
        track(context={"library": "analytics.js"}),
    ],
)
def test_device_mode_sends_every_other_event_server_side(message: dict[str, Any]) -> None:
    assert check(message, dest(device_mode=True)) is None


def test_device_mode_off_or_server_side_too_sends_browser_events() -> None:
    message = browser_track("analytics.js")
    assert check(message, dest()) is None
    assert check(message, dest(device_mode=True, device_mode_server_side=True)) is None
    # server_side alone means nothing without device mode
    assert check(message, dest(device_mode_server_side=True)) is None


def test_device_mode_comes_after_the_other_filters() -> None:
    """An event the destination would not take at all says why, not that the browser has it."""
    off = check(browser_track("analytics.js", integrations={"Heap": False}), dest(device_mode=True))
    assert off is not None
    assert off.reason is Reason.FILTERED_INTEGRATIONS
    denied = dest(device_mode=True, event_filter=EventFilter("deny", ("Order Completed",)))
    filtered = check(browser_track("analytics.js"), denied)
    assert filtered is not None
    assert filtered.reason is Reason.FILTERED_EVENT_NAME
