"""Per-destination filters applied before the transform. Pure: message + destination -> Skip | None.

Each filter returns a :class:`~heaprelay.transform.Skip` with its own reason when the message
must not go to the destination, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heaprelay.config import Destination
from heaprelay.spec.reasons import Reason
from heaprelay.transform import Skip

#: Names by which the integrations object can address a Heap destination.
INTEGRATION_NAMES: tuple[str, ...] = ("Heap", "Heap.io")


def integrations_skip(message: Mapping[str, Any]) -> Skip | None:
    """The integrations object: ``"Heap": false`` / ``"Heap.io": false`` switch the destination
    off; ``"All": false`` switches off every destination not named ``true``."""
    integrations = message.get("integrations")
    if not isinstance(integrations, Mapping):
        return None
    named = [integrations[n] for n in INTEGRATION_NAMES if n in integrations]
    if named:
        if any(v is False for v in named) and not any(
            v is True or isinstance(v, Mapping) for v in named
        ):
            return Skip(Reason.FILTERED_INTEGRATIONS, "integrations object switches Heap off")
        return None
    if integrations.get("All") is False:
        return Skip(Reason.FILTERED_INTEGRATIONS, 'integrations object has "All": false')
    return None


def check(message: Mapping[str, Any], destination: Destination) -> Skip | None:
    """All filters of ``destination``, in order; the first that refuses gives the Skip."""
    return integrations_skip(message)
