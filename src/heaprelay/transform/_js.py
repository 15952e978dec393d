"""JavaScript value semantics the peers' transforms rely on (they run on Node.js).

Reproducing a peer byte for byte means formatting numbers as ``Number#toString`` does,
serialising as ``JSON.stringify`` does (compact) and walking object keys in JavaScript's
order (integer-like keys first, ascending, then insertion order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

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
