"""Profile interface, registry and the ``transform`` entry point."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from heaprelay.heap.models import HeapRequest, Region, base_url_for
from heaprelay.messages.reasons import Reason
from heaprelay.transform._properties import TOO_DEEP

#: Profile name -> module under ``heaprelay.transform.profiles`` exposing ``PROFILE``.
_PROFILE_MODULES: dict[str, str] = {
    "heap": "heap",
    "rudderstack": "rudderstack",
    "segment": "segment",
    "segment-actions": "segment_actions",
    "segment-heap-cloud": "segment_heap_cloud",
}
PROFILE_NAMES: tuple[str, ...] = tuple(_PROFILE_MODULES)


@dataclass(frozen=True, slots=True)
class Skip:
    """An event that is not sent, and why. ``detail`` is for people; ``reason`` for machines."""

    reason: Reason
    detail: str = ""


TransformResult = list[HeapRequest] | Skip
"""Either the requests to send, in the order to send them (never empty), or a Skip."""


class SettingsError(ValueError):
    """Destination settings or options that a profile refuses; the message says what is
    accepted. ``key``: the setting at fault (``app_id``, ``region``, …) when one is."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class DestinationSettings:
    """What the transform needs to know about one Heap destination."""

    app_id: str
    profile: str = "heap"
    region: Region = "us"
    base_url: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    #: The region exactly as the user wrote it (config file or ``--region``), before it is
    #: normalised into ``region``; ``None`` when none was given. Profiles that reproduce a
    #: peer's own settings validation check it (segment-actions / segment-heap-cloud accept
    #: exactly ``US`` or ``EU``, and segment-heap-cloud requires one).
    region_setting: str | None = None

    @property
    def heap_base_url(self) -> str:
        return base_url_for(self.region, self.base_url)


class Profile(Protocol):
    """One way of turning messages into Heap requests."""

    name: str
    #: Option name -> accepted values (``None``: any string). Documented in ``--help``.
    options: Mapping[str, tuple[str, ...] | None]

    def check_settings(self, settings: DestinationSettings) -> None:
        """Raise :class:`SettingsError` for settings this profile (or its peer) refuses."""
        ...

    def transform(
        self, message: Mapping[str, Any], settings: DestinationSettings
    ) -> TransformResult:
        """Turn one message into Heap requests or a Skip. Must not raise on any JSON input,
        except a ``RecursionError`` on values nested deeper than the stack (:func:`transform`
        turns that into a Skip)."""
        ...


_loaded: dict[str, Profile] = {}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; :class:`SettingsError` naming the known ones otherwise."""
    try:
        return _loaded[name]
    except KeyError:
        pass
    module = _PROFILE_MODULES.get(name)
    if module is None:
        raise SettingsError(
            f"unknown profile {name!r}; accepted: {', '.join(PROFILE_NAMES)}"
        ) from None
    profile: Profile = importlib.import_module(f"heaprelay.transform.profiles.{module}").PROFILE
    _loaded[name] = profile
    return profile


def check_options(profile: Profile, options: Mapping[str, str]) -> None:
    """Refuse unknown option names or values, naming the accepted ones."""
    for key, value in options.items():
        if key not in profile.options:
            accepted = ", ".join(sorted(profile.options)) or "none"
            raise SettingsError(
                f"unknown option {key!r} for profile {profile.name!r}; accepted options: {accepted}"
            )
        allowed = profile.options[key]
        if allowed is not None and value not in allowed:
            raise SettingsError(
                f"option {key}={value!r} is not accepted by profile {profile.name!r}; "
                f"accepted values: {', '.join(allowed)}"
            )


def settings_warnings(settings: DestinationSettings) -> list[str]:
    """What a profile warns about for valid settings that will surprise (say, requests that
    Heap refuses). A profile may define ``warnings(settings) -> list[str]``; most do not."""
    warnings = getattr(get_profile(settings.profile), "warnings", None)
    return list(warnings(settings)) if callable(warnings) else []


def validate_settings(settings: DestinationSettings) -> Profile:
    """Check a destination's settings once, when configuration is read; returns its profile."""
    profile = get_profile(settings.profile)
    check_options(profile, settings.options)
    profile.check_settings(settings)
    return profile


def transform(message: Mapping[str, Any], settings: DestinationSettings) -> TransformResult:
    """Transform one message for one destination (settings assumed validated)."""
    if not isinstance(message, Mapping):
        return Skip(Reason.INVALID_FIELD, "message is not a JSON object")
    try:
        return get_profile(settings.profile).transform(message, settings)
    except RecursionError:
        return Skip(Reason.INVALID_FIELD, TOO_DEEP)
