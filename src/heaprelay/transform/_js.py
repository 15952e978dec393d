"""JavaScript value semantics the peers' transforms rely on (they run on Node.js).

Reproducing a peer byte for byte means formatting numbers as ``Number#toString`` does,
serialising as ``JSON.stringify`` does (compact) and walking object keys in JavaScript's
order (integer-like keys first, ascending, then insertion order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, MutableMapping
from decimal import Decimal
from typing import Any

import orjson

_MAX_SAFE = 2**53
_ARRAY_INDEX_MAX = 2**32 - 2
_encode_str = json.JSONEncoder(ensure_ascii=False).encode


def number_to_string(value: float | int) -> str:
    """ECMAScript ``Number::toString`` (radix 10) for a JSON number."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if -_MAX_SAFE <= value <= _MAX_SAFE:
            return str(value)
        value = float(value)  # JavaScript holds every number as a double
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    _, digit_tuple, exp = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple))
    stripped = digits.rstrip("0")
    exp = int(exp) + len(digits) - len(stripped)
    digits = stripped or "0"
    k = len(digits)
    n = exp + k
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mant = digits if k == 1 else digits[0] + "." + digits[1:]
        out = f"{mant}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + out


JsonNumber = int | float | orjson.Fragment
"""A number in a request body, such that ``orjson.dumps`` writes what ``JSON.stringify``
writes for it (:func:`json_number`)."""

_U64 = 2**64
_I64_MIN = -(2**63)


def json_number(value: int | float) -> JsonNumber:
    """``value`` in the form orjson writes exactly as JavaScript's ``JSON.stringify`` does,
    for the bodies the peers (which run on Node.js) send byte for byte.

    A JSON number read by JavaScript is a double, written back by ``Number#toString``: an
    integral float is an integer (``67.0`` → ``67``, ``-0.0`` → ``0``); an integer beyond
    2^53 is rounded (``12345678901234567890`` → ``12345678901234567000``); exponents start
    at 1e21 and below 1e-6 (``1e+21``, ``1e-7``, but ``0.000001``). orjson writes most
    numbers so already; the others become an :class:`orjson.Fragment` holding JavaScript's
    text (only integral values between 2^64 and 1e21, and a few below 1e-5)."""
    if type(value) is float:
        # The usual case first: orjson and JavaScript agree on non-integral floats from
        # 1e-5 up (and beyond 2^53 every float is integral).
        if 1e-5 <= value < 9007199254740992.0 or -9007199254740992.0 < value <= -1e-5:
            return int(value) if value.is_integer() else value
        return _rare_float(value)
    if type(value) is int and not -9007199254740992 <= value <= 9007199254740992:
        text = number_to_string(value)
        return _integer_text(text) if "e" not in text else float(text)
    return value


def _rare_float(value: float) -> JsonNumber:
    if value - value != 0.0:
        return value  # NaN or infinite: not JSON (JSON.stringify writes null, orjson too)
    if value.is_integer():
        if -_MAX_SAFE <= value <= _MAX_SAFE:
            return int(value)  # 0.0, -0.0
        if abs(value) >= 1e21:
            return value  # orjson writes 1e+21 as JavaScript does
        return _integer_text(number_to_string(value))
    text = number_to_string(value)
    return value if orjson.dumps(value) == text.encode() else orjson.Fragment(text)


def _integer_text(text: str) -> JsonNumber:
    number = int(text)
    return number if _I64_MIN <= number < _U64 else orjson.Fragment(text)


def json_numbers(obj: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """:func:`json_number` applied in place to the numbers among ``obj``'s values (one
    level: the flat bodies and property maps the peers send); returns ``obj``."""
    for key, value in obj.items():
        kind = type(value)
        if kind is float:
            if (
                1e-5 <= value < 9007199254740992.0 or -9007199254740992.0 < value <= -1e-5
            ) and not value.is_integer():
                continue
            obj[key] = json_number(value)
        elif kind is int and not -9007199254740992 <= value <= 9007199254740992:
            obj[key] = json_number(value)
    return obj


def _is_array_index(key: str) -> bool:
    return (
        key.isascii()
        and key.isdigit()
        and (key == "0" or key[0] != "0")
        and int(key) <= _ARRAY_INDEX_MAX
    )


def object_keys(obj: Mapping[str, Any]) -> Iterable[str]:
    """Keys in the order JavaScript's ``Object.keys`` gives them."""
    keys = list(obj)
    if not any(_is_array_index(k) for k in keys):
        return keys
    ints = sorted((k for k in keys if _is_array_index(k)), key=int)
    return ints + [k for k in keys if not _is_array_index(k)]


def stringify(value: Any) -> str:
    """``JSON.stringify(value)``, compact, for a value parsed from JSON."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _encode_str(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return "null"
        return number_to_string(value)
    if isinstance(value, Mapping):
        return (
            "{"
            + ",".join(_encode_str(k) + ":" + stringify(value[k]) for k in object_keys(value))
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(stringify(v) for v in value) + "]"
    return _encode_str(str(value))


def to_js_string(value: Any) -> str:
    """``String(value)`` for a JSON scalar; objects/arrays as ``JSON.stringify`` would not be
    used by ``String`` but callers that need that use :func:`stringify`."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return number_to_string(value)
    return stringify(value)
