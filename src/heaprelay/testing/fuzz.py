"""Hypothesis strategies and checks for fuzzing the ingest API and every profile's transform
(issue 12): used by tests/unit/test_fuzz.py, tests/integration/test_fuzz_ingest.py (the short
run of every ``pytest``) and ``bench/fuzz.py`` (the long run).

What must hold, for any input:

- the transform of every profile returns a :class:`~heaprelay.transform.Skip` with a reason
  and a detail, or Heap requests whose bodies, bulked as the router bulks them, are JSON;
- ingest (:func:`~heaprelay.messages.incoming.prepare`, and the HTTP API) answers 200 with
  what it stored, or a 4xx ``{"code", "message"}``; never a 5xx, never an exception;
- what ingest stores goes through every profile as above (depths up to 1,100 included).

Needs the test extra (``hypothesis``).
"""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from heaprelay.messages.incoming import PreparedRequest, Rejection, parse_json, prepare
from heaprelay.messages.reasons import Reason
from heaprelay.router.batcher import batch
from heaprelay.router.worker import unwritable
from heaprelay.transform import (
    PROFILE_NAMES,
    DestinationSettings,
    SettingsError,
    Skip,
    get_profile,
    transform,
    validate_settings,
)

#: The deepest nesting the strategies make (past what JSON is read at, 1024).
MAX_FUZZ_DEPTH: Final = 1100

TEXT = (
    st.text(max_size=8)
    | st.text(max_size=300)
    | st.sampled_from(["", " ", "null", "undefined", "0", "😀" * 600, "é" * 1100, "\x00"])
)
KEYS = st.text(max_size=6) | st.sampled_from(["id", "Id", "email", "idempotencyKey", "a.b", ""])
SCALARS = (
    st.none()
    | st.booleans()
    # What orjson reads as integers (the only ones a stored message holds; longer ones it
    # reads as floats, and the HTTP bodies below carry those as digits).
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([2**53 + 1, -(2**63), 2**64 - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=16,
)


def nest(depth: int, leaf: Any, kinds: str) -> Any:
    """``leaf`` inside ``depth`` containers, the i-th an object or an array by ``kinds``."""
    value = leaf
    for i in range(depth):
        value = {"a": value} if kinds[i % len(kinds)] == "o" else [value]
    return value


#: Values nested 0 to 1,100 levels, mostly around the limits (253-256, 1022-1026).
DEEP = st.builds(
    nest,
    st.integers(0, MAX_FUZZ_DEPTH)
    | st.sampled_from([200, 252, 253, 254, 255, 256, 1000, 1022, 1023, 1024, 1025]),
    SCALARS,
    st.sampled_from(["o", "a", "oa", "ooa"]),
)
IDS = (
    st.sampled_from(["u-1", "", " ", "0", "null", "undefined", "x" * 255, "x" * 256])
    | st.integers(-2, 2**60)
    | st.floats()
    | st.text(max_size=40)
    | JSON
)
TIMES = (
    st.sampled_from(
        [
            "2026-01-02T03:04:05.678Z",
            "2026-01-02T03:04:05.123456789+05:30",
            "2026-01-02",
            "1969-12-31T23:59:59Z",
            "9999-12-31T23:59:59Z",
            "2026-02-30T00:00:00Z",
            "nope",
            "",
        ]
    )
    | st.datetimes().map(lambda d: d.isoformat() + "Z")
    | st.integers(-(10**15), 10**15)
    | JSON
)
TYPES = st.sampled_from(["track", "identify", "page", "screen", "group", "alias"])
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "userId": IDS,
    "anonymousId": IDS,
    "event": TEXT | JSON,
    "name": TEXT,
    "groupId": IDS,
    "previousId": IDS,
    "messageId": TEXT | JSON,
    "timestamp": TIMES,
    "originalTimestamp": TIMES,
    "sentAt": TIMES,
    "channel": st.sampled_from(["server", "web"]) | JSON,
    "properties": st.dictionaries(KEYS, JSON | DEEP, max_size=5) | JSON,
    "traits": st.dictionaries(KEYS, JSON | DEEP, max_size=5) | JSON,
    "context": st.fixed_dictionaries(
        {},
        optional={
            "traits": st.dictionaries(KEYS, JSON | DEEP, max_size=4),
            "library": st.fixed_dictionaries(
                {"name": st.sampled_from(["analytics.js", "RudderLabs JavaScript SDK"]) | TEXT}
            ),
            "consentManagement": JSON,
        },
    )
    | JSON,
    "integrations": st.dictionaries(
        st.sampled_from(["All", "Heap", "Heap.io"]) | KEYS, JSON, max_size=3
    )
    | JSON,
}
#: Messages that should mostly be accepted (so that the transforms are reached), with a
#: deep value now and then.
WELL_FORMED = st.fixed_dictionaries(
    {
        "type": TYPES,
        "userId": st.text(min_size=1, max_size=20) | IDS,
        "event": st.text(min_size=1, max_size=30),
        "groupId": st.just("g1"),
        "previousId": st.just("p1"),
        "messageId": st.text(min_size=1, max_size=40),
    },
    optional={
        "timestamp": TIMES,
        "properties": st.dictionaries(KEYS, JSON | DEEP, max_size=6),
        "traits": st.dictionaries(KEYS, JSON | DEEP, min_size=1, max_size=6),
        "context": FIELDS["context"],
        "integrations": FIELDS["integrations"],
        "channel": FIELDS["channel"],
    },
)
#: Any top-level field with any value (wrong types at every field).
ANY_FIELDS = st.fixed_dictionaries({"type": TYPES | JSON}, optional=FIELDS) | st.dictionaries(
    st.text(max_size=6), JSON, max_size=5
)
MESSAGES = WELL_FORMED | WELL_FORMED | ANY_FIELDS


def _settings_for(profile: str, options: Mapping[str, str], region: str) -> DestinationSettings:
    upper = region.upper()
    for candidate in (
        DestinationSettings(app_id="1535634150", profile=profile, options=options),
        DestinationSettings(
            app_id="1535634150",
            profile=profile,
            region="eu" if upper == "EU" else "us",
            options=options,
            region_setting=upper,
        ),
    ):
        try:
            validate_settings(candidate)
        except SettingsError:
            continue
        return candidate
    return DestinationSettings(app_id="1535634150", profile=profile)


@st.composite
def destination_settings(draw: st.DrawFn) -> DestinationSettings:
    """Valid settings of any profile, with any of its options."""
    profile = draw(st.sampled_from(PROFILE_NAMES))
    options: dict[str, str] = {}
    for name, allowed in sorted(get_profile(profile).options.items()):
        if draw(st.booleans()):
            values = st.sampled_from(allowed) if allowed else st.sampled_from(["userId", "x"])
            options[name] = draw(values)
    return _settings_for(profile, options, draw(st.sampled_from(["us", "eu"])))


def check_transform(message: Any, settings: DestinationSettings) -> str:
    """Transform ``message``; AssertionError if the result breaks a rule above. Returns a
    label of the outcome (a Skip's reason, or the endpoints)."""
    out = transform(message, settings)
    if isinstance(out, Skip):
        assert isinstance(out.reason, Reason), out
        assert out.detail, out
        return f"skip:{out.reason.value}"
    assert out, "no request and no Skip"
    if any(unwritable(request) is not None for request in out):
        # A peer profile keeps a deep value as its peer does (rudderstack's idempotencyKey):
        # the router dead-letters the job with the reason instead of sending it.
        return "dead:unwritable"
    for group in batch((0, request) for request in out):
        orjson.dumps(group.body())  # what the Heap client writes: must not raise
    return "+".join(sorted({r.endpoint for r in out}))


def check_rejection(rejection: Rejection) -> None:
    assert 400 <= rejection.status < 500, rejection
    assert rejection.code, rejection
    assert rejection.message, rejection


def check_ingest(body: bytes, route_type: str | None) -> PreparedRequest | Rejection:
    """Ingest's pure path on one request body (what the HTTP route does after reading it):
    a 4xx Rejection, or messages whose stored JSON reads back as objects."""
    parsed = parse_json(body)
    if isinstance(parsed, Rejection):
        check_rejection(parsed)
        return parsed
    prepared = prepare(
        parsed,
        route_type=route_type,
        received_at=1_767_225_600.0,
        max_message_bytes=4 * 1024 * 1024,
        body_bytes=len(body),
    )
    if isinstance(prepared, Rejection):
        check_rejection(prepared)
        return prepared
    assert prepared.messages
    for message in prepared.messages:
        assert isinstance(orjson.loads(message.payload), dict)
    return prepared


def check_pipeline(body: bytes, route_type: str | None, settings: DestinationSettings) -> str:
    """:func:`check_ingest`, then :func:`check_transform` of every stored message."""
    prepared = check_ingest(body, route_type)
    if isinstance(prepared, Rejection):
        return f"refused:{prepared.code}"
    labels = {check_transform(orjson.loads(m.payload), settings) for m in prepared.messages}
    return "stored:" + ",".join(sorted(labels))


def encode(value: Any) -> bytes:
    """JSON bytes of ``value`` as a client would write them, any depth (``orjson`` writes
    254 levels and 64-bit integers; past that the text is built here, without recursion)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        pass
    out: list[bytes] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):  # JSON values are never bytes: text already written
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [b"{"]
            for i, (key, inner) in enumerate(item.items()):
                parts += [b"," if i else b"", orjson.dumps(str(key)) + b":", inner]
            stack.extend(reversed([*parts, b"}"]))
        elif isinstance(item, list):
            parts = [b"["]
            for i, inner in enumerate(item):
                parts += [b"," if i else b"", inner]
            stack.extend(reversed([*parts, b"]"]))
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(str(item).encode())
        else:
            out.append(orjson.dumps(item))
    return b"".join(out)


# --- HTTP requests ----------------------------------------------------------------------

#: Single-message routes and their type (None: a batch route).
ROUTES: Final[dict[str, str | None]] = {
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/page": "page",
    "/v1/t": "track",
    "/v1/i": "identify",
    "/v1/group": "group",
    "/v1/alias": "alias",
    "/v1/batch": None,
    "/v1/import": None,
    "/v1/b": None,
    "/beacon/v1/batch": None,
}


@dataclass(frozen=True)
class FuzzRequest:
    route: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    #: Messages this request carries if accepted (for checking what was stored).
    messages: int = 0

    def __repr__(self) -> str:
        return f"FuzzRequest({self.route!r}, {self.body[:200]!r}…, {self.headers!r})"


def _mutate(data: bytes, how: str, where: int, byte: int) -> bytes:
    if not data:
        return data
    i = where % len(data)
    if how == "truncate":
        return data[:i]
    if how == "flip":
        return data[:i] + bytes([byte]) + data[i + 1 :]
    if how == "insert":
        return data[:i] + bytes([byte]) + data[i:]
    return data


@st.composite
def fuzz_requests(draw: st.DrawFn, write_keys: tuple[str, ...]) -> FuzzRequest:
    """A request to the ingest API: a route, a body (JSON of messages, often mutated, maybe
    gzip'd, maybe junk) and an authentication form, with one of ``write_keys`` or not."""
    route = draw(st.sampled_from(sorted(ROUTES)))
    route_type = ROUTES[route]
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["basic", "basic", "body", "none", "unknown", "garbage", "query"]))
    key = draw(st.sampled_from(write_keys))
    if route_type is None:
        items = draw(st.lists(MESSAGES, min_size=0, max_size=4))
        value: Any = {"batch": items}
        if draw(st.booleans()):
            value["sentAt"] = draw(TIMES)
        count = len(items)
    else:
        value = draw(MESSAGES)
        if draw(st.integers(0, 3)):  # mostly the route's own type, or none (the route's)
            value["type"] = route_type
            if draw(st.booleans()):
                del value["type"]
        count = 1
    if auth == "body" and isinstance(value, dict):
        value["writeKey"] = key
    elif auth == "basic":
        headers["authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    elif auth == "unknown":
        headers["authorization"] = "Basic " + base64.b64encode(b"not-a-key:").decode()
    elif auth == "garbage":
        headers["authorization"] = draw(st.sampled_from(["Basic !!!", "Basic", "Bearer x"]))
    elif auth == "query":
        route += "?writeKey=" + key
    body = encode(value)
    how = draw(st.sampled_from(["none"] * 6 + ["truncate", "flip", "insert", "junk"]))
    if how == "junk":
        body = draw(st.binary(max_size=64))
    else:
        body = _mutate(body, how, draw(st.integers(0, 2**16)), draw(st.integers(0, 255)))
    if draw(st.integers(0, 4)) == 0:
        headers["content-encoding"] = "gzip"
        body = gzip.compress(body)
        if draw(st.booleans()):
            body = _mutate(body, "truncate", draw(st.integers(0, 2**16)), 0)
    if draw(st.booleans()):
        headers["content-type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/json;charset=UTF-8"])
        )
    return FuzzRequest(route, body, headers, count)


def check_answer(status: int, content_type: str, body: bytes) -> dict[str, Any]:
    """An ingest answer: never a 5xx (other than 503 while not ready), 200 or a 4xx JSON
    ``{"code", "message"}``. Returns the JSON."""
    assert status < 500, (status, body[:300])
    assert content_type.startswith("application/json"), (status, content_type)
    data = orjson.loads(body)
    assert isinstance(data, dict), data
    if status == 200:
        assert data.get("success") is True, data
    else:
        assert 400 <= status < 500, status
        assert isinstance(data.get("code"), str), data
        assert data["code"], data
        assert isinstance(data.get("message"), str), data
        assert data["message"], data
    return data


def ci_settings(examples: int) -> settings:
    """The short run of the default ``pytest``: ``examples`` cases (``HEAPRELAY_FUZZ_EXAMPLES``
    overrides), derandomized so that CI is reproducible, no deadline (a shared machine)."""
    return settings(
        max_examples=int(os.environ.get("HEAPRELAY_FUZZ_EXAMPLES", examples)),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


__all__ = [
    "DEEP",
    "JSON",
    "MAX_FUZZ_DEPTH",
    "MESSAGES",
    "FuzzRequest",
    "check_answer",
    "check_ingest",
    "check_pipeline",
    "check_transform",
    "ci_settings",
    "destination_settings",
    "encode",
    "fuzz_requests",
]
