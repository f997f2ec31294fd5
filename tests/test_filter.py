"""Tag expressions and RocketMQ's SQL92 selectors."""

from __future__ import annotations

import pytest
from ferrymq.core.errors import InvalidFilter
from ferrymq.core.filter import TAG_HASH_MIXED, SqlFilter, TagFilter, parse_filter, tag_hash


def test_tag_hash_is_javas_string_hashcode() -> None:
    assert tag_hash("TagA") == 2598919  # "TagA".hashCode() in Java
    assert tag_hash("") == tag_hash(None) == 0
    assert tag_hash("\u00e9t\u00e9") == ((0xE9 * 31) + 0x74) * 31 + 0xE9  # UTF-16 code units
    long = "x" * 40
    h = 0
    for ch in long:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    assert tag_hash(long) == (h - (1 << 32) if h & 0x80000000 else h)


def test_tag_filter_matches_listed_tags() -> None:
    f = parse_filter("TagA || TagB ")
    assert isinstance(f, TagFilter)
    assert f.tags == {"TagA", "TagB"}
    assert f.may_match_tag_hash(tag_hash("TagA"))
    assert not f.may_match_tag_hash(tag_hash("TagC"))
    assert f.may_match_tag_hash(TAG_HASH_MIXED), "a batch of mixed tags must be read"
    assert parse_filter("*") is None and parse_filter("") is None and parse_filter(None) is None


PROPS = {"a": "5", "b": "hello", "price": "10.5", "TAGS": "TagA", "flag": "true"}


@pytest.mark.parametrize("expr, expected", [
    ("a > 3", True), ("a >= 5", True), ("a < 5", False), ("a <= 4", False),
    ("a = 5", True), ("a <> 5", False), ("b = 'hello'", True), ("b <> 'hello'", False),
    ("a BETWEEN 1 AND 5", True), ("a NOT BETWEEN 1 AND 5", False),
    ("b IN ('x', 'hello')", True), ("b NOT IN ('x', 'hello')", False),
    ("missing IS NULL", True), ("a IS NOT NULL", True), ("missing IS NOT NULL", False),
    ("missing > 1", False), ("NOT (missing > 1)", False), ("missing = 'x' OR a = 5", True),
    ("a > 1 AND b = 'hello'", True), ("a > 1 AND (b = 'x' OR price > 10)", True),
    ("b CONTAINS 'ell'", True), ("b NOT CONTAINS 'ell'", False),
    ("b STARTSWITH 'he'", True), ("b ENDSWITH 'lo'", True), ("b NOT ENDSWITH 'lo'", False),
    ("TAGS = 'TagA'", True), ("flag = TRUE", True), ("TRUE", True), ("FALSE OR a = 5", True),
    ("-a < 0", True), ("price > 10.25", True), ("a = 5.0", True), ("b > 1", False),
    ("a = 5 -- trailing comment\n", True), ("b = 'it''s'", False),
])
def test_sql92_selectors(expr, expected) -> None:
    assert SqlFilter(expr).matches_properties(PROPS) is expected


@pytest.mark.parametrize("expr", ["a >", "a = = 1", "(a > 1", "a IN 'x'", "a BETWEEN 1",
                                  "a ~ 1", "'unterminated", "a IS 5", "x" * 5000])
def test_bad_sql92_is_an_invalid_filter(expr) -> None:
    with pytest.raises(InvalidFilter):
        parse_filter(expr, "SQL92")


def test_unknown_filter_type() -> None:
    with pytest.raises(InvalidFilter):
        parse_filter("a", "REGEX")
