"""JSON from peers is decoded within limits: too large, too nested or too many containers is
a ValueError, never a RecursionError, and nothing deep survives to be printed later."""

from __future__ import annotations

import contextlib
import json

import pytest
from ferrymq.protocols import boundedjson as bj
from hypothesis import given, settings
from hypothesis import strategies as st

NESTED_10K = b"[" * 5000 + b"]" * 5000  # the remoting crash frame's header


def test_stdlib_json_raises_recursion_error_on_the_crash_text() -> None:
    """Why this module exists: json.loads lets a RecursionError out, which no
    ``except ValueError`` catches."""
    with pytest.raises(RecursionError):
        json.loads(NESTED_10K)


def test_deep_nesting_is_a_value_error() -> None:
    with pytest.raises(bj.JsonLimitError, match="nested deeper"):
        bj.loads(NESTED_10K)
    with pytest.raises(ValueError):
        bj.loads(b'{"a":' * 5000 + b"1" + b"}" * 5000)


def _repr_from_deeper(doc: object, frames: int) -> str:
    return repr(doc) if frames == 0 else _repr_from_deeper(doc, frames - 1)


def test_nesting_below_the_interpreter_limit_but_past_ours_is_refused() -> None:
    """800 deep parses with the stdlib, and a repr() of it from a deeper point of the
    stack (a log line in a handler) fails there, far from the input."""
    text = b"[" * 800 + b"]" * 800
    doc = json.loads(text)
    with pytest.raises(RecursionError):
        _repr_from_deeper(doc, 300)
    with pytest.raises(bj.JsonLimitError):
        bj.loads(text)
    assert bj.loads(b"[" * 64 + b"]" * 64) is not None  # at the limit: fine


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"text": "[" * 1000}).encode()
    assert bj.loads(text) == {"text": "[" * 1000}


def test_size_and_container_limits() -> None:
    limits = bj.JsonLimits(max_bytes=100, max_depth=8, max_containers=10)
    with pytest.raises(bj.JsonLimitError, match="bytes"):
        bj.loads(b" " * 101, limits)
    with pytest.raises(bj.JsonLimitError, match="arrays and objects"):
        bj.loads(b"[" + b",".join([b"[]"] * 11) + b"]", limits)
    assert bj.loads(b"[" + b",".join([b"[]"] * 9) + b"]", limits) == [[]] * 9


def test_malformed_text_stays_a_json_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        bj.loads(b"{not json")
    with pytest.raises(ValueError):
        bj.loads(b"\xff\xfe")
    assert bj.loads("[1, 2]") == [1, 2]
    assert bj.loads(memoryview(b'{"a": [1]}')) == {"a": [1]}


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=30)


@settings(max_examples=200, derandomize=True, database=None)
@given(_json)
def test_within_the_limits_it_is_json_loads(doc: object) -> None:
    text = json.dumps(doc).encode()
    assert bj.loads(text) == json.loads(text)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.binary(max_size=300) | st.text(alphabet="[]{}\":,0 a", max_size=300))
def test_any_input_gives_a_document_or_a_value_error(data: bytes | str) -> None:
    with contextlib.suppress(ValueError):
        bj.loads(data, bj.JsonLimits(max_depth=4))
