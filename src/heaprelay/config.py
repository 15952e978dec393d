"""Configuration as frozen values: sources (write keys), their Heap destinations, and the
relay's own settings. Built from ``heaprelay serve`` flags (one source, one destination) or
from a TOML file (``heaprelay serve --config FILE``), with ``HEAPRELAY_*`` environment
overrides. Loading and checking live in :mod:`heaprelay.config_file`; this module only
holds the shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from heaprelay.transform import DestinationSettings

DEFAULT_PORT = 8787
DEFAULT_HOST = "127.0.0.1"
DEFAULT_RETRY_WINDOW = 4 * 3600.0
DEFAULT_DEDUPE_WINDOW = 24 * 3600.0
DEFAULT_RETENTION = 7 * 24 * 3600.0
DEFAULT_HEADER_TIMEOUT = 10.0
#: A 4 MB RudderStack batch over a slow mobile link still makes it.
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 1000
#: Heap's own CDN script for an App ID (classic heap.js); ``{app_id}`` is replaced.
DEFAULT_HEAP_SCRIPT_URL = "https://cdn.heapanalytics.com/js/heap-{app_id}.js"

Role = Literal["all", "api", "worker"]


def default_data_dir() -> Path:
    """``$HEAPRELAY_DATA_DIR``, else ``$XDG_DATA_HOME/heaprelay``, else ``~/.local/share/...``."""
    import os

    if env := os.environ.get("HEAPRELAY_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "heaprelay"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """RudderStack's client-side events filtering, applied to track events by name."""

    mode: Literal["disable", "allow", "deny"] = "disable"
    events: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Consent:
    """RudderStack consent management for one destination.

    Generic form (``legacy=False``): the categories this destination needs under ``provider``;
    ``resolution`` is used for the ``custom`` provider only (for the others the event's
    ``resolutionStrategy`` decides, as in RudderStack). Legacy form (``legacy=True``):
    RudderStack's ``oneTrustCookieCategories`` (provider ``oneTrust``: skip when any is denied)
    or ``ketchConsentPurposes`` (provider ``ketch``: skip when all are denied).
    """

    provider: Literal["oneTrust", "ketch", "iubenda", "custom"] = "oneTrust"
    categories: tuple[str, ...] = ()
    resolution: Literal["and", "or"] | None = None
    legacy: bool = False


@dataclass(frozen=True, slots=True)
class Destination:
    """One Heap destination of a source. ``id`` is unique in the whole config and is what
    queued events refer to."""

    id: str
    settings: DestinationSettings
    event_filter: EventFilter = field(default_factory=EventFilter)
    consent: tuple[Consent, ...] = ()
    retry_window: float = DEFAULT_RETRY_WINDOW
    enabled: bool = True
    #: Device mode: the browser SDKs load Heap's own script through the relay's integration
    #: (:mod:`heaprelay.device`), and deliver their events to Heap themselves; the relay
    #: skips those events (reason ``device_mode``) unless ``device_mode_server_side``.
    device_mode: bool = False
    #: With ``device_mode``: send browser SDKs' events server-side too (both ways).
    device_mode_server_side: bool = False
    #: Where the browser loads Heap's script from; ``{app_id}`` is replaced by the App ID.
    #: A path (``/fake-heap/js/heap-{app_id}.js``, the sandbox's) is taken on the relay's
    #: own public URL.
    heap_script_url: str = DEFAULT_HEAP_SCRIPT_URL
    #: More names by which an event's integrations object addresses this destination, next
    #: to "Heap" and "Heap.io": e.g. the Segment destination that forwards to the relay
    #: ("Webhooks"), whose name Engage's ``{"All": false, "<name>": true}`` carries.
    integration_names: tuple[str, ...] = ()

    def heap_script(self) -> str:
        """``heap_script_url`` for this destination's App ID."""
        return self.heap_script_url.replace("{app_id}", self.settings.app_id)


@dataclass(frozen=True, slots=True)
class Limits:
    """Ingest size limits, in bytes of the (inflated) JSON. Defaults never refuse what a
    supported SDK legitimately sends."""

    max_request_bytes: int = 4 * 1024 * 1024 + 64 * 1024
    max_message_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    write_key: str
    destinations: tuple[Destination, ...]
    limits: Limits = field(default_factory=Limits)
    #: Browser origins allowed to send with this source's write key: ``scheme://host[:port]``
    #: (exact, default ports implied), ``scheme://*.example.com`` (any subdomain), ``"*"``
    #: (any origin but ``null``), ``"null"`` (sandboxed frames, ``file:``; only when listed).
    cors_origins: tuple[str, ...] = ("*",)
    #: Send ``Access-Control-Allow-Credentials: true`` (only for pages that send with
    #: ``credentials: 'include'``; the browser SDKs' defaults send no credentials).
    cors_credentials: bool = False
    dedupe_window: float = DEFAULT_DEDUPE_WINDOW
    #: False: a batch with one invalid message is refused whole (400). True: the valid
    #: messages are stored and the answer lists the refused ones.
    partial_batches: bool = False
    #: How long the events this source accepted are kept for its audiences
    #: (:class:`Audience`); 0: none are recorded (a source without audiences).
    history_window: float = 0.0
    #: The (track event, property) pairs whose numeric values the history keeps: those of
    #: this source's computed traits with ``sum`` (none: no source pays for them).
    history_sums: tuple[tuple[str, str], ...] = ()

    def allows_origin(self, origin: str) -> bool:
        """Whether a browser page on ``origin`` (its ``Origin`` header) may call the relay for
        this source: the one place origins are matched (ingest and device-mode routes)."""
        if origin == "null":
            return "null" in self.cors_origins
        parsed = parse_origin(origin)
        if parsed is None or "*" in parsed[1]:
            return False
        scheme, host, port = parsed
        for pattern in _origin_patterns(self.cors_origins):
            if pattern == "*":
                return True
            p_scheme, p_host, p_port = pattern
            if p_scheme != scheme or p_port != port:
                continue
            if host == p_host or (p_host.startswith("*.") and host.endswith(p_host[1:])):
                return True
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of an origin (``scheme://host[:port]``, lower-cased, the
    scheme's default port as ``None``); ``None`` if ``text`` is not one (a path, user info,
    a query or no host)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not parts.scheme or not host or parts.path or parts.query or parts.fragment:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    scheme = parts.scheme.lower()
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    return scheme, host.lower(), port


def origin_problem(pattern: str) -> str | None:
    """What is wrong with one ``cors_origins`` entry (for ``config check``), or ``None``."""
    if pattern in ("*", "null"):
        return None
    parsed = parse_origin(pattern)
    if parsed is None:
        return (
            f"{pattern!r} is not an origin: write scheme://host[:port] (no path), "
            '"https://*.example.com", "*" or "null"'
        )
    if "*" in parsed[1] and not (parsed[1].startswith("*.") and "*" not in parsed[1][2:]):
        return f"{pattern!r}: a wildcard is only allowed as the first label (https://*.example.com)"
    return None


@lru_cache(maxsize=256)
def _origin_patterns(
    origins: tuple[str, ...],
) -> tuple[tuple[str, str, int | None] | Literal["*"], ...]:
    patterns: list[tuple[str, str, int | None] | Literal["*"]] = []
    for text in origins:
        if text == "*":
            patterns.append("*")
        elif text != "null" and (parsed := parse_origin(text)) is not None:
            patterns.append(parsed)
    return tuple(patterns)


#: A trait value an audience rule compares (TOML's scalars).
TraitValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class AudienceRule:
    """Users who performed ``event`` at least ``at_least`` times in the last ``within``
    seconds, and whose latest traits (from identify) have every ``traits`` value."""

    event: str
    within: float
    at_least: int = 1
    traits: tuple[tuple[str, TraitValue], ...] = ()
    #: A computed trait's rule (``[[computed_traits]]``): the value per user is the count of
    #: ``event`` in the window (``at_least`` and ``traits`` are not used) ...
    count: bool = False
    #: ... or the sum of this numeric property of ``event`` (non-numbers ignored).
    sum: str | None = None


@dataclass(frozen=True, slots=True)
class Audience:
    """An audience over the stored events of ``source`` (``[[audiences]]``), evaluated every
    ``every`` seconds; its members get the Heap user property ``key`` = true, and false once
    they leave, through the source's Heap destinations."""

    name: str
    key: str
    source: str
    every: float
    rule: AudienceRule

    @property
    def kind(self) -> str:
        """``"audience"`` (``[[audiences]]``: key = true | false), or ``"trait"``
        (``[[computed_traits]]``: key = the user's value, :attr:`AudienceRule.count` or
        :attr:`AudienceRule.sum`)."""
        return "trait" if self.rule.count or self.rule.sum is not None else "audience"


DEFAULT_AUDIENCE_EVERY = 3600.0


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    batch_size: int = 1000
    flush_interval: float = 0.2
    #: Enforce Heap's documented rate limits (per app_id and per identity).
    rate_limits: bool = True
    app_events_per_minute: int = 15_000
    identity_events_per_minute: int = 1_000
    #: Divides every rate-limit window (benchmarks on a compressed time scale).
    time_scale: float = 1.0
    concurrency: int = 8
    request_timeout: float = 10.0
    #: Retry backoff: ``retry_base * 2**n`` seconds (with jitter), at most ``retry_cap``.
    retry_base: float = 1.0
    retry_cap: float = 300.0
    #: How long a worker holds claimed jobs; a worker that dies (kill -9, lost machine) gives
    #: them back after this long, to be taken over by another worker.
    lease_seconds: float = 120.0


@dataclass(frozen=True, slots=True)
class Config:
    sources: tuple[Source, ...]
    data_dir: Path = field(default_factory=default_data_dir)
    #: ``None``: SQLite in ``data_dir``; else ``sqlite:///path`` or ``postgresql://…``.
    queue_url: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    role: Role = "all"
    #: How long delivered and skipped jobs are kept (for the debugger) before they are deleted;
    #: dead letters stay until replayed or purged.
    retention: float = DEFAULT_RETENTION
    sandbox: bool = False
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    #: The relay's URL as browsers reach it (behind a proxy, e.g. ``https://relay.example``):
    #: the ingest host and script URLs the device-mode settings name. ``None``: taken from
    #: each request (its scheme and ``Host``).
    public_url: str | None = None
    #: Opens the dashboard (/ui): a login form or ``Authorization: Bearer``. ``None``: the
    #: dashboard is served without login, and only when listening on loopback.
    admin_token: str | None = None
    #: ``None``: /metrics is open (as exporters are); else it needs ``Bearer`` this token.
    metrics_token: str | None = None
    #: Slow clients (:mod:`heaprelay._http`): seconds a connection has to send a request's
    #: headers, and a request its body (else 408 and the connection is closed).
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    #: Seconds an idle keep-alive connection is kept open.
    keep_alive_timeout: float = DEFAULT_KEEP_ALIVE_TIMEOUT
    #: Connections (and requests in progress) served at once; past it, requests get a 503.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: Audiences over the stored events (``[[audiences]]``), then the computed traits
    #: (``[[computed_traits]]``, :attr:`Audience.kind` ``"trait"``): both are evaluated,
    #: scheduled, synced and listed alike.
    audiences: tuple[Audience, ...] = ()

    def history_windows(self) -> dict[str, float]:
        """Per source that records its events for audiences: how long they are kept."""
        return {s.name: s.history_window for s in self.sources if s.history_window > 0}

    def audience(self, name: str) -> Audience | None:
        """The audience called ``name`` (or whose key is ``name``)."""
        for audience in self.audiences:
            if name in (audience.name, audience.key):
                return audience
        return None

    def secrets(self) -> list[str]:
        """Every secret of this configuration (masked in logs)."""
        found = [s.write_key for s in self.sources]
        found += [t for t in (self.admin_token, self.metrics_token) if t]
        return found

    def source_for_key(self, write_key: str) -> Source | None:
        for source in self.sources:
            if source.write_key == write_key:
                return source
        return None

    def destinations(self) -> dict[str, Destination]:
        return {d.id: d for s in self.sources for d in s.destinations}

    def shared_app_destinations(self) -> frozenset[str]:
        """Ids of the destinations whose Heap app_id another source sends to as well.

        Heap deduplicates track events by ``idempotency_key`` per app_id, while messageIds
        are only unique per source: the router scopes the keys of these destinations to
        their source (see :func:`heaprelay.router.worker.scoped_key`)."""
        sources_of: dict[str, set[str]] = {}
        for source in self.sources:
            for d in source.destinations:
                sources_of.setdefault(d.settings.app_id, set()).add(source.name)
        return frozenset(
            d.id
            for source in self.sources
            for d in source.destinations
            if len(sources_of[d.settings.app_id]) > 1
        )
