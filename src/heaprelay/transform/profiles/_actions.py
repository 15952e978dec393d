"""What Segment's actions framework does to an event before a Heap action sees it, and the
helpers both of its Heap destinations share (``segment-actions``, ``segment-heap-cloud``).

See ``reference/segment-actions.md`` §1–§3. Reproduced here:

- empty-value cleaning and ajv's ``coerceTypes: 'array'`` for a mapped field (:func:`str_field`,
  :func:`obj_field`);
- ``isDefined`` of ``heapUtils``;
- ``flat`` (dotted keys, arrays by index, JavaScript key order, JavaScript number strings);
- the ``date-like`` format check and ``dayjs.utc(ts).toISOString()``.

Dates: dayjs parses a string without a trailing ``Z`` that matches its own pattern as local
time, and hands every other string to ``new Date(string)`` (V8's parser). Segment runs in UTC,
so local time is taken as UTC here. V8's parser is reproduced for the ISO forms (with ``±hh:mm``
or ``±hhmm`` offsets, any fraction up to 9 digits) and for the legacy forms its fallback reads
(month names, ``GMT``/``UTC``/US zone names, AM/PM, ``+hhmm``), after V8's ``dateparser``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType, MemberDescriptorType
from typing import Any, Final

import orjson

from heaprelay.heap.models import US_BASE_URL, Endpoint, HeapRequest
from heaprelay.transform._js import json_number, number_to_string, object_keys, stringify

#: Headers every request of the actions framework carries (transport headers left out).
ACTIONS_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {"Content-Type": "application/json", "User-Agent": "Segment (Actions)"}
)
SEGMENT_LIBRARY: Final = "cloud-mode-destination"
#: Segment's settings schema for ``region``: ``choices`` become an exact (case-sensitive) enum.
REGION_CHOICES: Final = ("US", "EU")


def _request_factory() -> Callable[[str, Endpoint, dict[str, Any]], HeapRequest]:
    """``actions_request(base_url, endpoint, body)``: the ``HeapRequest`` of an actions
    destination (``POST``, :data:`ACTIONS_HEADERS`).

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``: about
    0.5 µs, a tenth of a whole transform. While ``HeapRequest`` is exactly the slots dataclass
    of these five fields with nothing run at construction (no ``__post_init__``, no
    ``__new__``), its slots are set directly instead (half the cost); the object is the same
    (equal, same fields). Any change to that class falls back to calling it."""
    names = ("base_url", "endpoint", "body", "method", "headers")

    def plain(base_url: str, endpoint: Endpoint, body: dict[str, Any]) -> HeapRequest:
        return HeapRequest(base_url, endpoint, body, "POST", ACTIONS_HEADERS)

    slots = [HeapRequest.__dict__.get(name) for name in names]
    if (
        tuple(f.name for f in dataclasses.fields(HeapRequest)) != names
        or getattr(HeapRequest, "__slots__", None) != names
        or "__post_init__" in dir(HeapRequest)
        or HeapRequest.__new__ is not object.__new__
        or not all(isinstance(slot, MemberDescriptorType) for slot in slots)
    ):
        return plain
    new = object.__new__
    set_base_url, set_endpoint, set_body, set_method, set_headers = (
        slot.__set__  # type: ignore[union-attr]
        for slot in slots
    )

    def direct(base_url: str, endpoint: Endpoint, body: dict[str, Any]) -> HeapRequest:
        request = new(HeapRequest)
        set_base_url(request, base_url)
        set_endpoint(request, endpoint)
        set_body(request, body)
        set_method(request, "POST")
        set_headers(request, ACTIONS_HEADERS)
        return request

    body = {"app_id": "probe"}
    same = direct(US_BASE_URL, "integrations/track", body) == plain(
        US_BASE_URL, "integrations/track", body
    )
    return direct if same else plain


actions_request: Final = _request_factory()


class InvalidField(ValueError):
    """A mapped value that fails payload validation (a JSON type ajv cannot coerce)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} has a JSON type the destination refuses")
        self.field = field


# --- fields: cleaning + ajv coercion ------------------------------------------------------


def str_field(value: Any, field: str) -> str | None:
    """A ``type: 'string'`` field after cleaning and ajv coercion; ``None`` when absent
    (``undefined``, ``""``, ``null``: the actions treat a kept ``null`` like absence too).
    Raises :class:`InvalidField` for an object or a longer array."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return number_to_string(value)
    if isinstance(value, list) and len(value) == 1:
        # coerceTypes 'array': a one-item array becomes its item, then scalar coercion.
        item = value[0]
        if item is None or item == "":
            return ""
        if isinstance(item, str | int | float):
            return str_field(item, field)
    raise InvalidField(field)


def obj_field(value: Any, field: str) -> Mapping[str, Any] | None:
    """A ``type: 'object'`` field after cleaning and coercion; ``None`` when absent."""
    if type(value) is dict:
        return value
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping):
        return value[0]
    raise InvalidField(field)


def is_defined(value: Any) -> bool:
    """``isDefined`` of ``heap/heapUtils.ts``."""
    if type(value) is str:
        return value != "" and value != "0"
    if value is None:
        return False
    if isinstance(value, Mapping):
        return len(value) > 0
    return not (value is None or value == "" or value == "0" or (value == 0 and value is not False))


# --- flat --------------------------------------------------------------------------------


_DIGITS: Final = frozenset("0123456789")
_MAX_SAFE: Final = 2**53


def _items(obj: Any) -> Any:
    """``(key, value)`` pairs in JavaScript's ``for … in`` order (array indexes as strings)."""
    if isinstance(obj, list):
        return [(str(i), v) for i, v in enumerate(obj)]
    return [(k, obj[k]) for k in object_keys(obj)]


def _pairs(obj: Any) -> Any:
    """:func:`_items`, without building a list in the usual case (no integer-like key)."""
    if type(obj) is dict:
        # min() (in C) first: no key below ":" means no key starts with a digit.
        if obj and min(obj) < ":":
            for key in obj:
                if key[:1] in _DIGITS:
                    return _items(obj)
        return obj.items()
    return _items(obj)


def leaf_string(value: Any) -> str:
    """A JSON scalar as ``flat.ts`` stringifies it (``String(value)``; ``null`` → "null")."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return str(value) if -_MAX_SAFE <= value <= _MAX_SAFE else number_to_string(value)
    if kind is float and 1e-4 <= abs(value) < 1e16:
        # In this range Python's repr and Number#toString both write the shortest round-trip
        # digits in fixed notation; only the trailing ".0" differs.
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return number_to_string(value)


def flat_into(out: dict[str, Any], obj: Any, prefix: str = "") -> None:
    """``flat(obj)`` merged into ``out`` (later keys win, keeping the first position, exactly
    like the object spreads of ``flat.ts``); every leaf becomes a string. ``prefix``: the
    dotted path of ``obj`` (empty at the top)."""
    flat_under(out, obj, prefix + "." if prefix else "")


def flat_under(out: dict[str, Any], obj: Any, base: str) -> None:
    """:func:`flat_into` with ``base`` = the dotted path of ``obj`` and its trailing dot
    (``""`` at the top): the form the profiles call, one call less per flattening.

    The hot path of both profiles. An object's short arrays are walked in place (no call, no
    (key, value) list, no keyword argument to ``zip``); the usual leaves (strings, safe
    integers, floats written in fixed notation, null) are written inline with constant
    bounds, the rest by :func:`leaf_string`. A nested path that is empty (key ``""`` at the
    top) starts at the top again, as ``flat.ts`` does."""
    if type(obj) is dict:
        pairs: Any = obj.items()
        # min() (in C) first: no key below ":" means no key starts with a digit.
        if obj and min(obj) < ":":
            for key in obj:
                if key[:1] in _DIGITS:
                    pairs = _items(obj)
                    break
    else:
        pairs = _items(obj)
    for key, value in pairs:
        kind = type(value)
        if kind is str:
            out[base + key] = value
        elif kind is list and len(value) <= 64:
            path = base + key
            prefix = path + "." if path else ""
            index = _INDEX
            for i, item in enumerate(value):
                kind = type(item)
                if kind is str:
                    out[prefix + index[i]] = item
                elif kind is dict or kind is list:
                    flat_under(out, item, prefix + index[i] + ".")
                elif kind is int and -(2**53) <= item <= 2**53:
                    out[prefix + index[i]] = str(item)
                elif kind is float and (1e-4 <= item < 1e16 or -1e16 < item <= -1e-4):
                    text = repr(item)
                    out[prefix + index[i]] = text[:-2] if text[-1] == "0" else text
                elif item is None:
                    out[prefix + index[i]] = "null"
                elif isinstance(item, dict | list):
                    flat_under(out, item, prefix + index[i] + ".")
                else:
                    out[prefix + index[i]] = leaf_string(item)
        elif kind is dict or kind is list:
            path = base + key
            flat_under(out, value, path + "." if path else "")
        elif kind is int and -(2**53) <= value <= 2**53:
            out[base + key] = str(value)
        elif kind is float and (1e-4 <= value < 1e16 or -1e16 < value <= -1e-4):
            # Python's repr and Number#toString both write the shortest round-trip digits
            # in fixed notation here; only the ".0" of integral values differs (and no
            # other repr in this range ends with "0").
            text = repr(value)
            out[base + key] = text[:-2] if text[-1] == "0" else text
        elif value is None:
            out[base + key] = "null"
        elif isinstance(value, dict | list):
            path = base + key
            flat_under(out, value, path + "." if path else "")
        else:
            out[base + key] = leaf_string(value)


#: Array indexes as strings, for the usual short arrays.
_INDEX: Final = tuple(str(i) for i in range(64))


def flat_json_into(out: dict[str, Any], obj: Any, prefix: str = "") -> None:
    """Heap Cloud's profile flattening in ``flatten`` mode: dotted keys like :func:`flat_into`,
    leaves kept as JSON values (strings, numbers, booleans, null)."""
    flat_json_under(out, obj, prefix + "." if prefix else "")


def flat_json_under(out: dict[str, Any], obj: Any, base: str) -> None:
    """:func:`flat_json_into` with ``base`` = the dotted path of ``obj`` and its trailing dot,
    written like :func:`flat_under`."""
    if type(obj) is dict:
        pairs: Any = obj.items()
        if obj and min(obj) < ":":
            for key in obj:
                if key[:1] in _DIGITS:
                    pairs = _items(obj)
                    break
    else:
        pairs = _items(obj)
    for key, value in pairs:
        kind = type(value)
        if kind is str:
            out[base + key] = value
        elif kind is dict or kind is list or isinstance(value, dict | list):
            path = base + key
            flat_json_under(out, value, path + "." if path else "")
        elif kind is float or kind is int:
            out[base + key] = json_number(value)
        else:
            out[base + key] = value


def flat_mode_into(
    out: dict[str, Any], obj: Any, mode: str, as_json_types: bool, prefix: str = ""
) -> None:
    """Heap Cloud's flattening with ``nested_properties_mode`` (flatten / stringify / drop).

    ``as_json_types``: profile properties keep strings, numbers, booleans and null as JSON
    values; event properties turn every leaf into a string.
    """
    if mode == "flatten":
        (flat_json_into if as_json_types else flat_into)(out, obj, prefix)
        return
    base = prefix + "." if prefix else ""
    stringify_nested = mode == "stringify"  # else "drop": objects and arrays are left out
    for key, value in _pairs(obj):
        kind = type(value)
        if kind is str:
            out[base + key] = value
        elif kind is dict or kind is list or isinstance(value, dict | list):
            if stringify_nested:
                out[base + key] = json_stringify(value)
        elif as_json_types:
            out[base + key] = json_number(value) if kind is float or kind is int else value
        else:
            out[base + key] = leaf_string(value)


# orjson writes JSON.stringify's text except for exponents (``1e+16``, ``1e-7``: JavaScript's
# thresholds differ), integral floats (``1.0``, ``-0.0``) and objects with integer-like keys
# (JavaScript puts them first); it raises for integers beyond 2^53 (OPT_STRICT_INTEGER) and
# lone surrogates. Those cases take the exact path. The output is first mapped to a few byte
# classes (0 -> 0, 1-9 -> 1, "+" and "-" -> +, the other bytes the checks name kept, the
# rest -> _) so that regular expressions with a literal start find them, each in one quick
# pass (a character class at the start, or bytes "in" tests, are several times slower). A
# match inside a string only costs speed, never exactness.
def _byte_class(byte: int) -> int:
    if byte in b'0e+".:':
        return byte
    if 0x31 <= byte <= 0x39:  # 1-9
        return 0x31
    return 0x2B if byte == 0x2D else 0x5F  # "-" -> "+", the rest -> "_"


_STRINGIFY_CLASSES: Final = bytes(map(_byte_class, range(256)))
_STRINGIFY_CHECKS: Final = tuple(
    re.compile(pattern).search for pattern in (rb"e\+", rb'0":', rb'1":', rb"\.0(?![01])")
)
_STRICT: Final = orjson.OPT_STRICT_INTEGER


def json_stringify(value: Any) -> str:
    """``JSON.stringify(value)`` (compact) of a JSON value, fast in the usual case."""
    try:
        out = orjson.dumps(value, option=_STRICT)
    except (TypeError, orjson.JSONEncodeError):
        return stringify(value)
    classes = out.translate(_STRINGIFY_CLASSES)
    exponent, zero_key, digit_key, integral_float = _STRINGIFY_CHECKS
    if exponent(classes) or zero_key(classes) or digit_key(classes) or integral_float(classes):
        return stringify(value)
    return out.decode()


# --- dates -------------------------------------------------------------------------------

_MS_PER_DAY = 86_400_000
_MAX_TIME = 8_640_000_000_000_000
# dayjs's C.REGEX_PARSE; JavaScript's \d is ASCII and its \s is Unicode white space.
_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_DAYJS_PARSE = re.compile(
    r"(\d{4})[-/]?(\d{1,2})?[-/]?(\d{0,2})[Tt" + _JS_SPACE + r"]*(\d{1,2})?:?(\d{1,2})?:?"
    r"(\d{1,2})?[.:]?(\d+)?",
    re.ASCII,
)
_ES5_ISO = re.compile(
    r"([+-]\d{6}|\d{4})(?:-(\d\d)(?:-(\d\d))?)?"
    r"(?:[Tt](\d\d):(\d\d)(?::(\d\d)(?:\.(\d+))?)?)?"
    r"([Zz]|[+-]\d\d:?\d\d)?",
    re.ASCII,
)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (month 1..12)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def _make_time(y: int, month0: int, day: int, h: int, mi: int, s: int, ms: int) -> int | None:
    """ECMAScript MakeDate(MakeDay(y, month0, day), MakeTime(...)) + TimeClip, in ms."""
    if abs(y) > 400_000 or abs(month0) > 10_000_000 or abs(day) > 1_000_000_000:
        return None
    y += month0 // 12
    t = (_days_from_civil(y, month0 % 12 + 1, 1) + day - 1) * _MS_PER_DAY
    t += h * 3_600_000 + mi * 60_000 + s * 1000 + ms
    return t if abs(t) <= _MAX_TIME else None


def iso_string(t: int) -> str:
    """``Date.prototype.toISOString`` of a valid time value (ms since the epoch)."""
    days, ms = divmod(t, _MS_PER_DAY)
    y, m, d = _civil_from_days(days)
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{'-' if y < 0 else '+'}{abs(y):06d}"
    s, ms = divmod(ms, 1000)
    mi, s = divmod(s, 60)
    h, mi = divmod(mi, 60)
    return f"{year}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{ms:03d}Z"


def _ms3(digits: str) -> int:
    return int((digits + "00")[:3])


def _v8_parse(text: str) -> int | None:
    """``new Date(text).getTime()`` of V8 (None for an invalid date), local time = UTC."""
    m = _ES5_ISO.fullmatch(text)
    if m is not None:
        year_s, mon, day, hh, mm, ss, frac, tz = m.groups()
        if year_s == "-000000":
            return None
        month, dom = int(mon or 1), int(day or 1)
        h, mi, s = int(hh or 0), int(mm or 0), int(ss or 0)
        ms = _ms3(frac[:9]) if frac else 0
        if not (1 <= month <= 12 and 1 <= dom <= 31 and mi <= 59 and s <= 59):
            return None
        if h > 23 and not (h == 24 and mi == 0 and s == 0 and ms == 0):
            return None
        t = _make_time(int(year_s), month - 1, dom, h, mi, s, ms)
        if t is None or not tz or tz in "Zz":
            return t
        sign = -1 if tz[0] == "-" else 1
        off_h, off_m = int(tz[1:3]), int(tz[-2:])
        if off_h > 23 or off_m > 59:
            return None
        t -= sign * (off_h * 60 + off_m) * 60_000
        return t if abs(t) <= _MAX_TIME else None
    return _v8_legacy(text)


_TOKEN = re.compile(r"(\d+)|([^\W\d_]+)|(\s+)|(.)", re.DOTALL)
_MONTHS = {
    name: i + 1
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_ZONES = {"ut": 0, "utc": 0, "z": 0, "gmt": 0, "cdt": -5, "cst": -6, "edt": -4, "est": -5}
_ZONES |= {"mdt": -6, "mst": -7, "pdt": -7, "pst": -8}


def _v8_legacy(text: str) -> int | None:
    """V8's legacy date parser (``DateParser::Parse`` after the ES5 attempt), simplified:
    unknown words before the first number are ignored, after it they make the date invalid."""
    text = re.sub(r"\([^()]*\)", " ", text)
    toks: list[tuple[str, str]] = []
    for num, word, space, sym in _TOKEN.findall(text):
        if num:
            toks.append(("n", num))
        elif word:
            toks.append(("w", word.lower()))
        elif space:
            toks.append((" ", " "))
        else:
            toks.append(("s", sym))
    day: list[int] = []
    named_month = 0
    time: list[int] = []
    hour_offset: int | None = None
    tz_sign: int | None = None
    tz_h: int | None = None
    tz_m: int | None = None
    has_num = False
    i, n = 0, len(toks)

    def peek(k: int = 0) -> tuple[str, str]:
        return toks[i + k] if i + k < n else ("e", "")

    def time_expecting(v: int) -> bool:
        k = len(time)
        return (k == 1 and v <= 59) or (k == 2 and v <= 59) or (k == 3 and v <= 999)

    while i < n:
        kind, val = toks[i]
        i += 1
        if kind == "n":
            has_num = True
            v = int(val)
            if peek() == ("s", ":"):
                i += 1
                if peek() == ("s", ":"):
                    i += 1
                    if time:
                        return None
                    time += [v, 0]
                else:
                    if len(time) >= 4:
                        return None
                    time.append(v)
                    if peek() == ("s", "."):
                        i += 1
            elif peek() == ("s", ".") and time_expecting(v):
                i += 1
                time.append(v)
                if peek()[0] != "n":
                    return None
                time.append(_ms3(peek()[1][:9]))
                i += 1
                time += [0] * (4 - len(time))
            elif tz_h is not None and tz_m is None and v <= 59:
                tz_m = v
            elif time_expecting(v):
                time.append(v)
                time += [0] * (4 - len(time))
                nxt = peek()
                if nxt[0] not in ("e", " ") and nxt[1] not in ("z", "+", "-"):
                    return None
            else:
                if len(day) >= 3:
                    return None
                day.append(v)
                if peek() == ("s", "-"):
                    i += 1
        elif kind == "w":
            key = val[:3]
            if val in ("am", "pm") and time:
                hour_offset = 0 if val == "am" else 12
            elif key in _MONTHS and len(val) >= 3:
                named_month = _MONTHS[key]
                if peek() == ("s", "-"):
                    i += 1
            elif val in _ZONES and has_num:
                off = _ZONES[val]
                tz_sign, tz_h, tz_m = (-1 if off < 0 else 1), abs(off), 0
            else:
                if has_num or peek()[0] == "n":
                    return None
        elif kind == "s" and val in "+-" and ((tz_h == 0 and tz_m == 0) or time):
            tz_sign = -1 if val == "-" else 1
            length, num = 0, 0
            if peek()[0] == "n":
                length, num = len(peek()[1]), int(peek()[1])
                i += 1
            has_num = True
            if peek() == ("s", ":"):
                tz_h, tz_m = num, None
            elif length in (1, 2):
                tz_h, tz_m = num, 0
            else:
                tz_h, tz_m = num // 100, num % 100
        elif kind == "s" and val in "+-)" and has_num:
            return None
    if not day:
        return None
    day += [1] * (3 - len(day))
    if named_month == 0:
        if not 1 <= day[0] <= 31:
            year, month, dom = day
        else:
            month, dom, year = day
    else:
        month = named_month
        if not 1 <= day[0] <= 31:
            year, dom = day[0], day[1]
        else:
            dom, year = day[0], day[1]
    if 0 <= year <= 49:
        year += 2000
    elif 50 <= year <= 99:
        year += 1900
    if not (1 <= month <= 12 and 1 <= dom <= 31):
        return None
    time += [0] * (4 - len(time))
    h, mi, s, ms = time[:4]
    if hour_offset is not None:
        if h > 12:
            return None
        h = h % 12 + hour_offset
    if not (h <= 23 and mi <= 59 and s <= 59 and ms <= 999) and not (
        h == 24 and mi == 0 and s == 0 and ms == 0
    ):
        return None
    t = _make_time(year, month - 1, dom, h, mi, s, ms)
    if t is None:
        return None
    if tz_sign is not None:
        t -= tz_sign * ((tz_h or 0) * 60 + (tz_m or 0)) * 60_000
    return t if abs(t) <= _MAX_TIME else None


def dayjs_utc(text: str) -> int | None:
    """``dayjs.utc(text).valueOf()``; None when dayjs calls the date invalid."""
    if not (text.endswith("Z") or text.endswith("z")):
        m = _DAYJS_PARSE.fullmatch(text)
        if m is not None:
            y, mon, d, h, mi, s, frac = m.groups()
            year = int(y)
            if year <= 99:
                year += 1900  # Date.UTC maps years 0..99 to 1900..1999
            return _make_time(
                year,
                int(mon) - 1 if mon else 0,
                int(d) if d else 1,
                int(h or 0),
                int(mi or 0),
                int(s or 0),
                int(frac[:3]) if frac else 0,
            )
    return _v8_parse(text)


_CANONICAL = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z",
    re.ASCII,
)
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def canonical_iso(text: str) -> bool:
    """Already what ``toISOString`` writes (the usual Segment timestamp): a fast path."""
    if _CANONICAL.fullmatch(text) is None:
        return False
    if text[8:10] < "29":
        return True
    y, mo, d = int(text[:4]), int(text[5:7]), int(text[8:10])
    if d > _MONTH_DAYS[mo]:
        return False
    return not (mo == 2 and d == 29 and (y % 4 != 0 or (y % 100 == 0 and y % 400 != 0)))


def checked_utc_iso(text: str) -> tuple[bool, str | None]:
    """(passes the ``date-like`` check, ``dayjs.utc(text).toISOString()`` or None)."""
    if canonical_iso(text):
        return True, text
    return is_date_like(text), utc_iso(text)


def utc_iso(text: str) -> str | None:
    """``dayjs.utc(text).toISOString()``; None when that date is invalid (it would throw)."""
    if canonical_iso(text):
        return text
    t = dayjs_utc(text)
    return None if t is None else iso_string(t)


def is_date_like(text: str) -> bool:
    """actions-core's ``date-like`` format: dayjs can parse it, or it is a unix time."""
    if canonical_iso(text):
        return True
    if number_string(text):
        try:
            t = float(text) * 1000
        except (ValueError, OverflowError):
            return False
        return abs(t) <= _MAX_TIME
    return dayjs_utc(text) is not None


_NUMBER_STRING = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:e[+-]\d+)?", re.ASCII)


def number_string(text: str) -> bool:
    """``String(Number(text)) === text``."""
    if _NUMBER_STRING.fullmatch(text) is None:
        return False
    try:
        return number_to_string(float(text)) == text
    except (ValueError, OverflowError):
        return False
