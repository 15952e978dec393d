"""Delivery: claim, filter, transform, batch, rate-limit, send, retry, dead-letter."""

from heaprelay.router.service import delivery_service
from heaprelay.router.worker import DeliveryStats, Router

__all__ = ["DeliveryStats", "Router", "delivery_service"]
