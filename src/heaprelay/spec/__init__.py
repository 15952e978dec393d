"""Incoming messages (Segment / RudderStack format): types, limits and reason codes.

This package imports nothing else of heaprelay.
"""

from heaprelay.spec.reasons import Reason

__all__ = ["Reason"]
