"""Engage (formerly Personas) events: audience memberships and computed traits, recognised as
Segment's own Actions runtime does (``reference/audiences.md`` §2; action-destinations
``packages/core/src/audience-membership.ts``, ``engageAudienceMembership``).

An Engage event carries ``context.personas`` with a ``computation_class`` and a
``computation_key``. It is one of:

- an **audience** (or Journeys step) update: ``computation_class`` ``audience`` or
  ``journey_step``, a non-empty ``computation_key``, and a JSON boolean at
  ``traits[key]`` (``type`` ``identify``) or ``properties[key]`` (``type`` ``track``, the
  events ``Audience Entered`` / ``Audience Exited``): the membership, ``true`` or ``false``;
- a **computed trait** update: ``computation_class`` ``trait``, a non-empty
  ``computation_key`` present in ``traits`` (identify) or ``properties`` (track, the event
  ``Trait Computed`` by default, its name configurable in Engage): the trait's value, of any
  JSON type.

Anything else — no ``context.personas``, an empty or non-string key, an audience value that is
not a boolean, a key absent from the event — is an ordinary event. ``type`` is compared
exactly (``identify`` / ``track``), as the runtime does; the event name of a track is not
looked at (the runtime does not either). Pure functions; the profiles decide what Heap gets.

    >>> engage_update({"type": "identify", "userId": "u1",
    ...     "traits": {"first_time_shopper": True},
    ...     "context": {"personas": {"computation_class": "audience",
    ...                              "computation_key": "first_time_shopper"}}})
    EngageUpdate(computation='audience', key='first_time_shopper', value=True, form='identify')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "AUDIENCE_CLASSES",
    "TRAIT_CLASS",
    "EngageUpdate",
    "audience_membership",
    "engage_update",
]

#: ``computation_class`` values whose updates are memberships (a boolean).
AUDIENCE_CLASSES: Final = frozenset({"audience", "journey_step"})
#: ``computation_class`` of computed traits (any value).
TRAIT_CLASS: Final = "trait"

Computation = Literal["audience", "journey_step", "trait"]
Form = Literal["identify", "track"]


@dataclass(frozen=True, slots=True)
class EngageUpdate:
    """One user-property update that an Engage event carries.

    ``computation``: the ``computation_class``; ``key``: the ``computation_key`` (the audience
    or trait key, the user property's name); ``value``: the membership (``bool``) for an
    audience or journey step, the computed value for a trait; ``form``: which call carried it.
    """

    computation: Computation
    key: str
    value: Any
    form: Form

    @property
    def is_audience(self) -> bool:
        return self.computation != TRAIT_CLASS


def _personas(message: Mapping[str, Any]) -> tuple[str, str] | None:
    """(computation_class, computation_key) when both are non-empty strings."""
    context = message.get("context")
    personas = context.get("personas") if isinstance(context, Mapping) else None
    if not isinstance(personas, Mapping):
        return None
    computation = personas.get("computation_class")
    key = personas.get("computation_key")
    if not isinstance(computation, str) or not isinstance(key, str) or not key:
        return None
    return computation, key


def engage_update(message: Mapping[str, Any]) -> EngageUpdate | None:
    """The audience membership or computed trait ``message`` carries, or ``None`` when it is
    an ordinary event (see the module docstring)."""
    found = _personas(message)
    if found is None:
        return None
    computation, key = found
    kind = message.get("type")
    if kind == "identify":
        form: Form = "identify"
        holder = message.get("traits")
    elif kind == "track":
        form = "track"
        holder = message.get("properties")
    else:
        return None
    if not isinstance(holder, Mapping) or key not in holder:
        return None
    value = holder[key]
    if computation in AUDIENCE_CLASSES:
        if not isinstance(value, bool):
            return None
        return EngageUpdate(
            "audience" if computation == "audience" else "journey_step", key, value, form
        )
    if computation == TRAIT_CLASS:
        return EngageUpdate("trait", key, value, form)
    return None


def audience_membership(message: Mapping[str, Any]) -> bool | None:
    """Segment's ``engageAudienceMembership``: ``True`` (entered), ``False`` (exited), or
    ``None`` when ``message`` is not an audience / journey-step membership event."""
    update = engage_update(message)
    if update is None or not update.is_audience:
        return None
    return bool(update.value)
