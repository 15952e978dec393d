"""Delivery: claim, filter, transform, batch, rate-limit, send, retry, dead-letter."""
