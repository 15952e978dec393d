"""Fixtures of the integration tier."""

from _served import served_relay

__all__ = ["served_relay"]
