"""Property and value helpers shared by the ``heap``, ``segment`` and ``rudderstack`` profiles.

Each peer cleans properties its own way; these functions reproduce each way exactly, plus
heaprelay's own (``heap_flatten``), which keeps every value within Heap's documented limits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from heaprelay.transform._js import json_number, number_to_string, object_keys, stringify

#: Heap: property names and values must have *fewer* than 1024 characters.
MAX_PROPERTY_CHARS: Final = 1023
#: Heap: event names at most 1024 characters.
MAX_EVENT_CHARS: Final = 1024
#: Heap: identities at most 255 characters.
MAX_IDENTITY_CHARS: Final = 255
_MAX_SAFE_INT: Final = 2**53
#: The detail of a Skip for values nested deeper than Python's stack allows walking them
#: (about 900 levels of objects, 450 of arrays; JSON parsers stop at 1024): refused, as a
#: value, rather than an exception escaping the pipeline.
TOO_DEEP: Final = "properties or traits nested too deeply to be flattened"

# orjson writes some numbers differently from JavaScript (``1.0``, ``-0.0``, ``1e+16``) and
# keeps integer-like keys in insertion order; when its output could hold one of those, the
# exact (slower) path is taken. The checks may also fire on text inside strings: that costs
# speed, never exactness. Integers beyond 2^53 (JavaScript rounds them) make orjson raise
# (OPT_STRICT_INTEGER). Digits are mapped to 0 (zero) / 1 (other) so that plain substring
# searches find "a digit before a key's closing quote".
_DIGIT_CLASSES = bytes.maketrans(b"123456789", b"111111111")
_INTEGRAL_FLOAT = re.compile(rb"\.0(?![01])")
_STRICT = orjson.OPT_STRICT_INTEGER


def js_json(value: Any) -> str:
    """``JSON.stringify(value)`` (compact), fast for the common case."""
    try:
        out = orjson.dumps(value, option=_STRICT)
    except (TypeError, orjson.JSONEncodeError):  # lone surrogates, integers beyond 2^53
        return stringify(value)
    if b"e+" in out or b"e-" in out:
        return stringify(value)
    digits = out.translate(_DIGIT_CLASSES)
    if b'0":' in digits or b'1":' in digits or _INTEGRAL_FLOAT.search(digits):
        return stringify(value)
    return out.decode()


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value (objects and arrays are always truthy)."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value != ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == value and value != 0
    return True


def utf16_len(text: str) -> int:
    """Length as JavaScript (and Heap's JSON tooling) counts it: UTF-16 code units."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 code units, never inside a surrogate pair.

    Counting UTF-16 units is the stricter of the two readings of "characters" (a code point
    outside the BMP counts twice), so the result fits either way."""
    if len(text) * 2 <= limit or (len(text) <= limit and text.isascii()):
        return text
    if utf16_len(text) <= limit:
        return text
    if text.isascii():
        return text[:limit]
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return text[:i]
    return text


# --- timestamps ---------------------------------------------------------------------------

_CANONICAL_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def iso_utc(value: Any) -> str | None:
    """An ISO-8601 UTC time with milliseconds (``2026-01-02T03:04:05.678Z``) for a JSON
    timestamp: an ISO-8601 string (any precision; ``Z``, an offset, or none = UTC) or a
    number of milliseconds since the epoch. ``None`` when it is not one."""
    if isinstance(value, str):
        if _CANONICAL_TS.fullmatch(value):
            try:
                datetime.fromisoformat(value)  # rejects month 13, Feb 30, …
            except ValueError:
                return None
            return value
        text = _FRACTION.sub(r"\1", value.strip(), count=1)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            parsed = parsed.astimezone(UTC)
        except (OverflowError, ValueError):
            return None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            return None
        try:
            parsed = datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            return None
    else:
        return None
    return (
        f"{parsed.year:04d}-{parsed.month:02d}-{parsed.day:02d}T{parsed.hour:02d}:"
        f"{parsed.minute:02d}:{parsed.second:02d}.{parsed.microsecond // 1000:03d}Z"
    )


# --- RudderStack: flattenJson -------------------------------------------------------------


def js_items(obj: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """``obj``'s items in JavaScript's key order (integer-like keys first)."""
    if obj and min(obj) < ":":  # (in C) no key below ":" means none starts with a digit
        for key in obj:
            if "0" <= key[:1] <= "9":  # maybe an array index: take the exact path
                return [(k, obj[k]) for k in object_keys(obj)]
    return obj.items()


def rudder_flatten(data: Any) -> dict[str, Any]:
    """RudderStack's ``flattenJson(data)`` with its defaults (separator ``.``, arrays
    exploded as ``key[i]``, nulls kept, empty objects/arrays kept as leaves, a top-level
    scalar as ``{"": value}``), walking keys in JavaScript order; numbers as JavaScript
    writes them (:func:`~heaprelay.transform._js.json_number`)."""
    result: dict[str, Any] = {}
    _rudder_recurse(data, "", result)
    return result


def _rudder_recurse(cur: Any, prop: str, result: dict[str, Any]) -> None:
    kind = type(cur)
    if kind is dict or (kind is not list and isinstance(cur, Mapping)):
        if not cur:
            if prop:
                result[prop] = {}
            return
        for key, value in js_items(cur):
            name = prop + "." + key if prop else key
            leaf = type(value)
            if leaf in _CONTAINERS:
                _rudder_recurse(value, name, result)
            elif leaf is float or leaf is int:
                result[name] = json_number(value)
            else:
                result[name] = value
    elif kind is list:
        for i, item in enumerate(cur):
            _rudder_recurse(item, f"{prop}[{i}]", result)
        if not cur:
            result[prop] = []
    elif kind is float or kind is int:
        result[prop] = json_number(cur)
    else:
        result[prop] = cur


_CONTAINERS: Final = (dict, list)


# --- Segment classic: clean() -------------------------------------------------------------


def segment_clean(props: Mapping[str, Any], library: str) -> dict[str, Any]:
    """Segment's classic Heap cleaning of traits/properties (already with ``_email`` / ``id``
    applied by the caller): nulls dropped, scalars kept (numbers as JavaScript writes them,
    :func:`~heaprelay.transform._js.json_number`), then ``segment_library``, then nested
    objects flattened with ``.`` (arrays inside them stringified), then top-level arrays
    stringified (compact, as ``JSON.stringify``)."""
    out: dict[str, Any] = {}
    objects: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Any]]] = []
    for key, value in js_items(props):
        if value is None:
            continue
        if isinstance(value, Mapping):
            objects.append((key, value))
        elif isinstance(value, list):
            arrays.append((key, value))
        elif type(value) is float or type(value) is int:
            out[key] = json_number(value)
        else:
            out[key] = value
    out["segment_library"] = library
    for key, value in objects:
        _segment_flatten(value, key, out)
    for key, value in arrays:
        out[key] = js_json(value)
    return out


def _segment_flatten(obj: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in js_items(obj):
        name = f"{prefix}.{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            _segment_flatten(value, name, out)
        elif isinstance(value, list):
            out[name] = js_json(value)
        elif type(value) is float or type(value) is int:
            out[name] = json_number(value)
        else:
            out[name] = value


# --- Segment classic, device mode: clean() of analytics.js-integration-heap -------------


def classic_clean(props: Mapping[str, Any]) -> dict[str, Any]:
    """The ``clean`` of Segment's classic browser integration (``reference/device-mode.md``
    §1.5), on JSON values: per top-level key, nulls dropped, numbers and booleans kept,
    strings kept, an array JSON-stringified (compact), an object flattened with ``.``. Inside
    an object nothing else changes: arrays are stringified under their dotted key, nulls and
    empty objects are kept as they are. Unlike the cloud-mode :func:`segment_clean`, no
    ``segment_library`` and no nulls dropped below the top level. A later key overwrites an
    earlier one of the same (flattened) name, walking keys in JavaScript's order."""
    out: dict[str, Any] = {}
    for key, value in js_items(props):
        if value is None:
            continue
        if isinstance(value, Mapping):
            _classic_flatten(value, key, out)
        elif isinstance(value, list):
            out[key] = js_json(value)
        else:
            out[key] = value
    return out


def _classic_flatten(obj: Mapping[str, Any], name: str, out: dict[str, Any]) -> None:
    if not obj:
        out[name] = {}
        return
    for key, value in js_items(obj):
        if isinstance(value, list):
            out[f"{name}.{key}"] = js_json(value)
        elif isinstance(value, Mapping) and value:
            _classic_flatten(value, f"{name}.{key}", out)
        else:
            out[f"{name}.{key}"] = value


# --- Heap's forbidden user property: any casing of ``id`` ---------------------------------


def is_id_key(key: str) -> bool:
    """Heap refuses a user property named any casing of ``id``."""
    return len(key) == 2 and key.lower() == "id"


def renamed_id_key(key: str, taken: Mapping[str, Any]) -> str:
    """The name an ``id`` user property is sent under: ``_`` in front (``_id``, ``_ID``, …),
    more ``_`` if that name is ``taken`` too (the ``_email`` convention of Segment's classic
    destination)."""
    new = "_" + key
    while new in taken:
        new = "_" + new
    return new


# --- heaprelay's own: heap_flatten --------------------------------------------------------


def heap_flatten(props: Mapping[str, Any], out: dict[str, Any], prefix: str = "") -> None:
    """Flatten ``props`` into ``out`` so that Heap accepts every entry.

    Nested objects → ``a.b.c`` keys; arrays → compact JSON strings (``JSON.stringify``);
    ``null`` (and non-finite numbers) dropped; booleans → ``"true"`` / ``"false"`` (Heap takes
    only strings and numbers); integers beyond ±2^53 → their decimal string (a JSON number
    would lose digits); other numbers within ±2^53 as JavaScript writes them (``67.0`` →
    ``67``, the same bytes as the peers send); names and string values cut to fewer than 1024
    characters."""
    # The hot path of the default profile: exact type tests, and the length checks skipped
    # for strings too short to reach the limit even in UTF-16 (511 * 2 < 1024).
    for key, value in props.items():
        name = prefix + key if prefix else key
        if len(name) > 511:
            name = truncate(name, MAX_PROPERTY_CHARS)
        kind = type(value)
        if kind is str:
            out[name] = value if len(value) <= 511 else truncate(value, MAX_PROPERTY_CHARS)
        elif kind is int:
            out[name] = (
                value
                if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
                else truncate(str(value), MAX_PROPERTY_CHARS)
            )
        elif kind is dict:
            heap_flatten(value, out, name + ".")
        elif kind is float:
            if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:  # finite, and digits kept
                out[name] = json_number(value)
            elif value - value == 0.0:  # finite (a double beyond 2^53 stays one)
                out[name] = value
        elif kind is bool:
            out[name] = "true" if value else "false"
        elif value is None:
            continue
        elif kind is list or isinstance(value, list | tuple):
            text = js_json(value)
            out[name] = text if len(text) <= 511 else truncate(text, MAX_PROPERTY_CHARS)
        elif isinstance(value, Mapping):
            heap_flatten(value, out, name + ".")
        else:  # not a JSON value; keep its text rather than lose it
            out[name] = truncate(str(value), MAX_PROPERTY_CHARS)


def js_string(value: Any) -> str:
    """``String(value)`` for a JSON scalar."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number_to_string(value)
    return stringify(value)
