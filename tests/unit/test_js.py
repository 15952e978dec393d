"""JavaScript value semantics (``transform._js``) against values JavaScript itself prints,
and the fast ``JSON.stringify`` of ``transform._properties`` against the exact one."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heaprelay.transform._js import number_to_string, object_keys, stringify, to_js_string
from heaprelay.transform._properties import js_json, js_truthy, truncate, utf16_len

# (value, what Node.js prints for String(value))
NUMBERS = [
    (0, "0"),
    (-0.0, "0"),
    (1.0, "1"),
    (1.5, "1.5"),
    (0.1 + 0.2, "0.30000000000000004"),
    (1e21, "1e+21"),
    (1e20, "100000000000000000000"),
    (123456789012345680000.0, "123456789012345680000"),
    (1e-6, "0.000001"),
    (1e-7, "1e-7"),
    (2**53, "9007199254740992"),
    (2**53 + 1, "9007199254740992"),  # a double cannot hold it
    (5e-324, "5e-324"),
    (-1.25e-10, "-1.25e-10"),
    (float("nan"), "NaN"),
    (float("inf"), "Infinity"),
]


@pytest.mark.parametrize(("value", "text"), NUMBERS)
def test_number_to_string_matches_node(value: float, text: str) -> None:
    assert number_to_string(value) == text


def test_object_keys_puts_array_indexes_first() -> None:
    assert list(object_keys({"b": 1, "10": 2, "a": 3, "2": 4, "01": 5, "-1": 6})) == [
        "2",
        "10",
        "b",
        "a",
        "01",
        "-1",
    ]
    assert list(object_keys({"4294967295": 1, "4294967294": 2})) == ["4294967294", "4294967295"]
    assert list(object_keys({"¹": 1, "0": 2})) == ["0", "¹"]


def test_stringify_is_compact_json_stringify() -> None:
    value = {"b": [1.0, None, True, "x\u2028\x1f"], "1": {"z": -0.0}, "a": 1e21}
    assert stringify(value) == '{"1":{"z":0},"b":[1,null,true,"x\u2028\\u001f"],"a":1e+21}'
    assert stringify([float("nan")]) == "[null]"
    assert to_js_string(None) == "null"
    assert to_js_string(False) == "false"
    assert to_js_string(3.0) == "3"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.from_regex(r"\A[0-9]{1,3}\Z"), inner, max_size=4)
    ),
    max_leaves=16,
)


@given(JSON)
def test_fast_stringify_equals_the_exact_one(value: Any) -> None:
    assert js_json(value) == stringify(value)


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (None, False),
        (False, False),
        ("", False),
        (0, False),
        (0.0, False),
        (float("nan"), False),
        ("0", True),
        ("false", True),
        ({}, True),
        ([], True),
        (1, True),
        (True, True),
    ],
)
def test_js_truthy(value: Any, truthy: bool) -> None:
    assert js_truthy(value) is truthy


@given(st.text(max_size=40), st.integers(min_value=0, max_value=30))
def test_truncate_counts_utf16_units_and_keeps_pairs_whole(text: str, limit: int) -> None:
    cut = truncate(text, limit)
    assert text.startswith(cut)
    assert utf16_len(cut) <= limit
    # as long as possible: one more code point would not fit
    if cut != text:
        assert utf16_len(text[: len(cut) + 1]) > limit


def test_truncate_examples() -> None:
    assert truncate("abc", 2) == "ab"
    assert truncate("a😀b", 2) == "a"  # the emoji is two UTF-16 units: not split
    assert truncate("a😀b", 3) == "a😀"
    assert utf16_len("😀") == 2
