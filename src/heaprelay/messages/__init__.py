"""Incoming messages (Segment / RudderStack format): types, limits and reason codes.

This package imports nothing else of heaprelay.
"""

from heaprelay.messages.reasons import Reason

__all__ = ["Reason"]
