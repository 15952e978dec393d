"""Merge single-event Heap requests into Heap's bulk forms. Pure.

Requests are grouped by everything that is not the event itself: the URL, the headers and the
envelope (``app_id``, and for the integrations endpoints any other top-level field such as
``library``). Each group becomes bulk requests of at most ``max_items`` items, in the order
the requests came in (Heap applies a bulk array in order, which keeps per-identity order):

- ``track``: ``{"app_id", "events": [event, ...]}`` where an event is the single-event body
  without ``app_id`` (a body already in bulk form contributes its ``events``);
- ``add_user_properties``: ``{"app_id", "users": [{"identity", "properties"}, ...]}``;
- ``integrations/track`` / ``integrations/add_user_properties``: the ``events`` / ``users``
  arrays are concatenated under the shared envelope.

Each item remembers its *owner* (the queue job it came from) so that an answer for the bulk
request, or for a part of it, maps back to jobs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from heaprelay.heap.models import Endpoint, HeapRequest

__all__ = ["MAX_BULK_ITEMS", "Batch", "Item", "array_key", "batch", "items_of"]

#: Heap accepts at most 1000 events (or users) per bulk request.
MAX_BULK_ITEMS = 1000

_ARRAY: dict[Endpoint, str] = {
    "track": "events",
    "add_user_properties": "users",
    "integrations/track": "events",
    "integrations/add_user_properties": "users",
}


def array_key(endpoint: Endpoint) -> str:
    """The bulk array's name for an endpoint (``events`` or ``users``)."""
    return _ARRAY[endpoint]


@dataclass(frozen=True, slots=True)
class Item:
    owner: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Batch:
    """One bulk request: ``envelope`` + ``items`` under :attr:`array`."""

    url: str
    endpoint: Endpoint
    envelope: dict[str, Any]
    items: tuple[Item, ...]
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def array(self) -> str:
        return _ARRAY[self.endpoint]

    @property
    def app_id(self) -> str:
        return str(self.envelope.get("app_id", ""))

    def body(self) -> dict[str, Any]:
        return {**self.envelope, self.array: [item.body for item in self.items]}

    def owners(self) -> list[int]:
        """The jobs in this request, each once, in order."""
        return list(dict.fromkeys(item.owner for item in self.items))

    def with_items(self, items: Sequence[Item]) -> Batch:
        return Batch(self.url, self.endpoint, self.envelope, tuple(items), self.headers)

    def split(self, parts: int = 2) -> tuple[Batch, ...]:
        """``parts`` consecutive parts of (nearly) equal size, in order (for isolating the
        items Heap refuses); at most one part per item."""
        n = len(self.items)
        parts = max(1, min(parts, n))
        bounds = [n * k // parts for k in range(parts + 1)]
        return tuple(self.with_items(self.items[bounds[k] : bounds[k + 1]]) for k in range(parts))


def items_of(request: HeapRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A request's envelope and its items (one for a single-event body)."""
    body = dict(request.body)
    array = _ARRAY[request.endpoint]
    items = body.pop(array, None)
    if isinstance(items, list):
        return body, [dict(i) if isinstance(i, dict) else i for i in items]
    envelope = {"app_id": body.pop("app_id")} if "app_id" in body else {}
    return envelope, [body]


def batch(
    requests: Iterable[tuple[int, HeapRequest]], *, max_items: int = MAX_BULK_ITEMS
) -> list[Batch]:
    """Group ``(owner, request)`` pairs into bulk requests, keeping the order within a group."""
    groups: dict[Hashable, tuple[HeapRequest, dict[str, Any], list[Item]]] = {}
    for owner, request in requests:
        envelope, items = items_of(request)
        key = (
            request.url,
            request.endpoint,
            orjson.dumps(envelope, option=orjson.OPT_SORT_KEYS),
            tuple(sorted(request.headers.items())),
        )
        group = groups.get(key)
        if group is None:
            group = groups[key] = (request, envelope, [])
        group[2].extend(Item(owner, item) for item in items)
    batches: list[Batch] = []
    for request, envelope, members in groups.values():
        headers = tuple(sorted(request.headers.items()))
        for start in range(0, len(members), max_items):
            chunk = tuple(members[start : start + max_items])
            batches.append(Batch(request.url, request.endpoint, envelope, chunk, headers))
    return batches
