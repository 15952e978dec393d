"""What the browser SDKs fetch from the relay, as values: analytics-next's CDN settings and
RudderStack's source config for one source (``reference/device-mode.md`` §4.2, §5.1). Pure:
the routes (:mod:`heaprelay.device._routes`) give them the relay's public base URL."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from heaprelay.config import Destination, Source

#: analytics-next's name for the classic destination, and RudderStack's for its definition.
SEGMENT_NAME: Final = "Heap"
RUDDERSTACK_NAME: Final = "HEAP"
RUDDERSTACK_DISPLAY_NAME: Final = "Heap.io"
_EPOCH: Final = "1970-01-01T00:00:00.000Z"


def device_destination(source: Source) -> Destination | None:
    """The source's destination in device mode (the configuration allows one), if any."""
    return next((d for d in source.destinations if d.enabled and d.device_mode), None)


def script_url(destination: Destination, base: str) -> str:
    """Heap's script for the destination; a path (the sandbox's) is taken on ``base``."""
    url = destination.heap_script()
    return base + url if url.startswith("/") else url


def integration_config(destination: Destination, base: str) -> dict[str, Any]:
    """The settings the integration reads, for either SDK: the App ID, where Heap's script
    is, the profile that cleans, and the event filter in RudderStack's shape (its SDK applies
    it itself; the integration applies it for analytics-next)."""
    config: dict[str, Any] = {
        "appId": destination.settings.app_id,
        "scriptUrl": script_url(destination, base),
        "profile": destination.settings.profile,
    }
    event_filter = destination.event_filter
    modes = {"disable": "disable", "allow": "whitelistedEvents", "deny": "blacklistedEvents"}
    config["eventFilteringOption"] = modes[event_filter.mode]
    for mode, key in (("allow", "whitelistedEvents"), ("deny", "blacklistedEvents")):
        names = event_filter.events if event_filter.mode == mode else ("",)
        config[key] = [{"eventName": name} for name in names]
    return config


def ingest_host(base: str) -> tuple[str, str]:
    """``(protocol, apiHost)`` as analytics-next takes them: ``("https", "relay.example/v1")``."""
    parts = urlsplit(base)
    return parts.scheme, f"{parts.netloc}{parts.path.rstrip('/')}/v1"


def segment_settings(source: Source, base: str, version: str) -> dict[str, Any]:
    """``GET /v1/projects/{writeKey}/settings``: the relay's own ingest as ``Segment.io``,
    and the device-mode destination as the classic integration ``Heap`` (loaded from
    ``{base}/next-integrations/integrations/heap/{version}/heap.dynamic.js.gz``)."""
    protocol, api_host = ingest_host(base)
    integrations: dict[str, Any] = {
        "Segment.io": {
            "apiKey": source.write_key,
            "apiHost": api_host,
            "protocol": protocol,
            "unbundledIntegrations": [],
            "addBundledMetadata": True,
            "maybeBundledConfigIds": {},
        }
    }
    destination = device_destination(source)
    if destination is not None:
        integrations[SEGMENT_NAME] = {
            **integration_config(destination, base),
            "versionSettings": {"version": version, "componentTypes": ["browser"]},
            "type": "browser",
            "bundlingStatus": "bundled",
        }
    return {
        "integrations": integrations,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        # analytics-next would post its own usage metrics (to Segment unless told otherwise;
        # the relay only acknowledges them): none.
        "metrics": {"sampleRate": 0, "host": api_host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


def rudderstack_config(source: Source, base: str) -> dict[str, Any]:
    """``GET /sourceConfig/``: the source, and its device-mode destination as ``HEAP``
    (display name ``Heap.io``, whose bundle is ``{destSDKBaseURL}/Heap.min.js``), with the
    destination's event filter and consent categories for the SDK to apply in the browser."""
    destinations: list[dict[str, Any]] = []
    destination = device_destination(source)
    if destination is not None:
        config = {
            **integration_config(destination, base),
            "connectionMode": "device",
            "useNativeSDK": True,
            **_consent(destination),
        }
        destinations.append(
            {
                "id": destination.id,
                "name": destination.id,
                "enabled": True,
                "deleted": False,
                "updatedAt": _EPOCH,
                "shouldApplyDeviceModeTransformation": False,
                "propagateEventsUntransformedOnError": False,
                "destinationDefinition": {
                    "name": RUDDERSTACK_NAME,
                    "displayName": RUDDERSTACK_DISPLAY_NAME,
                    "updatedAt": _EPOCH,
                },
                "config": config,
            }
        )
    return {
        "source": {
            "id": source.name,
            "name": source.name,
            "writeKey": source.write_key,
            "workspaceId": "heaprelay",
            "enabled": True,
            "deleted": False,
            "updatedAt": _EPOCH,
            "sourceDefinitionId": "heaprelay-javascript",
            "config": {
                "statsCollection": {"errors": {"enabled": False}, "metrics": {"enabled": False}}
            },
            "destinations": destinations,
        },
    }


def _consent(destination: Destination) -> dict[str, Any]:
    """RudderStack's destination consent settings, from the destination's ``consent``."""
    generic = [c for c in destination.consent if not c.legacy]
    out: dict[str, Any] = {
        "consentManagement": [
            {
                "provider": c.provider,
                "consents": [{"consent": category} for category in c.categories],
                **({"resolutionStrategy": c.resolution} if c.resolution else {}),
            }
            for c in generic
        ],
        "oneTrustCookieCategories": [
            {"oneTrustCookieCategory": category}
            for c in destination.consent
            if c.legacy and c.provider == "oneTrust"
            for category in c.categories
        ],
        "ketchConsentPurposes": [
            {"purpose": category}
            for c in destination.consent
            if c.legacy and c.provider == "ketch"
            for category in c.categories
        ],
    }
    return out
