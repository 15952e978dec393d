"""Heap's side: request models, the HTTP client (injectable transport) and the fake Heap."""

from heaprelay.heap.models import EU_BASE_URL, US_BASE_URL, HeapRequest, base_url_for

__all__ = ["EU_BASE_URL", "US_BASE_URL", "HeapRequest", "base_url_for"]
