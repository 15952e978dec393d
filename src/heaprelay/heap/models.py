"""What heaprelay sends to Heap, as plain values (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

US_BASE_URL = "https://heapanalytics.com"
EU_BASE_URL = "https://c.eu.heap-api.com"

Region = Literal["us", "eu"]

Endpoint = Literal[
    "track",  # /api/track (single event, or bulk with "events")
    "add_user_properties",  # /api/add_user_properties (single user, or bulk with "users")
    "integrations/track",  # /api/integrations/track (Segment Actions; "events" array)
    "integrations/add_user_properties",  # /api/integrations/add_user_properties ("users")
]

ENDPOINT_PATHS: Mapping[Endpoint, str] = {
    "track": "/api/track",
    "add_user_properties": "/api/add_user_properties",
    "integrations/track": "/api/integrations/track",
    "integrations/add_user_properties": "/api/integrations/add_user_properties",
}


def base_url_for(region: Region, base_url: str | None = None) -> str:
    """The Heap base URL for a destination: an explicit ``base_url`` wins over the region."""
    if base_url:
        return base_url.rstrip("/")
    return EU_BASE_URL if region == "eu" else US_BASE_URL


@dataclass(frozen=True, slots=True)
class HeapRequest:
    """One HTTP request to Heap, exactly as a peer (or the ``heap`` profile) would send it.

    ``body`` is the JSON body for this one event (a single-event form, or for the integration
    endpoints a one-item ``events`` / ``users`` array). Delivery may merge several requests of
    the same ``base_url`` + ``endpoint`` + ``app_id`` into one bulk request; what Heap receives
    per event stays the same.
    """

    base_url: str
    endpoint: Endpoint
    body: dict[str, Any]
    method: Literal["POST"] = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base_url + ENDPOINT_PATHS[self.endpoint]

    @property
    def app_id(self) -> Any:
        return self.body.get("app_id")

    def to_json_obj(self) -> dict[str, Any]:
        """The form ``heaprelay transform`` prints: ``{"method", "url", "body"}``."""
        return {"method": self.method, "url": self.url, "body": self.body}
