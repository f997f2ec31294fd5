"""Message filters: RocketMQ tag expressions (``TagA || TagB``) and SQL92 property selectors.

A ``Filter`` answers two questions. ``may_match_tag_hash`` is asked of a
ConsumeQueue entry before its record is read (False = skip it unread); it is
exact-or-optimistic, never wrong in the "skip" direction. ``matches`` is asked
of a decoded message and is the final word.

The SQL92 dialect is RocketMQ's (itself the JMS selector subset): comparisons
``= <> > >= < <=``, ``BETWEEN``, ``IN``, ``IS [NOT] NULL``, ``[NOT] CONTAINS |
STARTSWITH | ENDSWITH``, ``AND OR NOT``, ``TRUE FALSE``, numbers and
single-quoted strings. Properties are strings; a numeric comparison parses the
property as a number. As in SQL, anything compared with a missing property is
unknown, and unknown is not a match. The tag is the property ``TAGS``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

from .errors import InvalidFilter
from .message import ConsumedMessage, Filter

__all__ = ["TAG_HASH_MIXED", "TAG_HASH_NONE", "Filter", "SqlFilter", "TagFilter", "parse_filter",
           "tag_hash"]

TAG_HASH_NONE = 0  # a record without tags (Java "".hashCode() == 0)
TAG_HASH_MIXED = 1 << 40  # a batch whose members carry different tags: read it to know


@functools.lru_cache(maxsize=4096)
def tag_hash(tag: str | None) -> int:
    """Java's String.hashCode of the tag, RocketMQ's ConsumeQueue tag code."""
    if not tag:
        return TAG_HASH_NONE
    data = tag.encode("utf-16-be")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


class TagFilter:
    """``TagA || TagB``: a message matches if its tag is one of the listed tags."""

    __slots__ = ("expression", "hashes", "tags")

    def __init__(self, expression: str) -> None:
        tags = frozenset(t.strip() for t in expression.split("||") if t.strip())
        if not tags or "*" in tags:
            raise InvalidFilter("'*' matches everything: use no filter")
        self.expression = expression
        self.tags = tags
        self.hashes = frozenset(tag_hash(t) for t in tags)

    def may_match_tag_hash(self, h: int) -> bool:
        return h in self.hashes or h == TAG_HASH_MIXED

    def matches(self, message: ConsumedMessage) -> bool:
        return message.properties.get("TAGS") in self.tags

    def __repr__(self) -> str:
        return f"TagFilter({self.expression!r})"


def parse_filter(expression: str | None, kind: str = "TAG") -> Filter | None:
    """The filter for a subscription expression; None when it matches everything.
    ``kind`` is ``TAG`` or ``SQL92`` (RocketMQ's ExpressionType). Raises InvalidFilter."""
    if kind.upper() == "TAG":
        if expression is None or expression.strip() in ("", "*"):
            return None
        return TagFilter(expression)
    if kind.upper() == "SQL92":
        if expression is None or not expression.strip():
            raise InvalidFilter("empty SQL92 expression")
        return SqlFilter(expression)
    raise InvalidFilter(f"unknown filter type {kind!r}")


# --------------------------------------------------------------------- SQL92

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[lL]?)
    | (?P<str>'(?:[^']|'')*')
    | (?P<op><>|>=|<=|=|>|<|\(|\)|,|\+|-)
    | (?P<id>[A-Za-z_$][A-Za-z0-9_$.]*)
    )""", re.VERBOSE)

_KEYWORDS = {"NOT", "AND", "OR", "BETWEEN", "IN", "TRUE", "FALSE", "NULL", "IS", "CONTAINS",
             "STARTSWITH", "ENDSWITH"}

Props = Mapping[str, str]
Expr = Callable[[Props], object]  # returns a value, or None for SQL's unknown/null
_MAX_EXPRESSION = 4096


def _tokenize(text: str) -> list[tuple[str, str]]:
    if len(text) > _MAX_EXPRESSION:
        raise InvalidFilter("SQL92 expression too long")
    text = re.sub(r"--[^\n]*", " ", text)
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InvalidFilter(f"unexpected character at {pos}: {text[pos:pos + 10]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "id" and value.upper() in _KEYWORDS:
            out.append(("kw", value.upper()))
        else:
            out.append((kind, value))
    return out


def _number(v: object) -> float | int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return None
    return None


class _Parser:
    """Recursive descent over RocketMQ's SelectorParser grammar; builds closures."""

    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take_kw(self, *words: str) -> str | None:
        t = self.peek()
        if t and t[0] == "kw" and t[1] in words:
            self.i += 1
            return t[1]
        return None

    def take_op(self, *ops: str) -> str | None:
        t = self.peek()
        if t and t[0] == "op" and t[1] in ops:
            self.i += 1
            return t[1]
        return None

    def expect_op(self, op: str) -> None:
        if not self.take_op(op):
            raise InvalidFilter(f"expected {op!r} at token {self.i}")

    def parse(self) -> Expr:
        e = self.or_expr()
        if self.peek() is not None:
            raise InvalidFilter(f"unexpected token {self.peek()[1]!r}")  # type: ignore[index]
        return e

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.take_kw("OR"):
            right = self.and_expr()
            left = _or(left, right)
        return left

    def and_expr(self) -> Expr:
        left = self.equality()
        while self.take_kw("AND"):
            right = self.equality()
            left = _and(left, right)
        return left

    def equality(self) -> Expr:
        left = self.comparison()
        while True:
            if self.take_op("="):
                left = _cmp(left, self.comparison(), "=")
            elif self.take_op("<>"):
                left = _cmp(left, self.comparison(), "<>")
            elif self.peek() == ("kw", "IS"):
                self.i += 1
                negate = bool(self.take_kw("NOT"))
                if not self.take_kw("NULL"):
                    raise InvalidFilter("expected NULL after IS")
                left = _is_null(left, negate)
            else:
                return left

    def comparison(self) -> Expr:
        left = self.unary()
        while True:
            op = self.take_op(">", ">=", "<", "<=")
            if op:
                left = _cmp(left, self.unary(), op)
                continue
            negate = False
            after = self.peek(1)
            if self.peek() == ("kw", "NOT") and after and after[0] == "kw" \
                    and after[1] in ("CONTAINS", "STARTSWITH", "ENDSWITH", "BETWEEN", "IN"):
                self.i += 1
                negate = True
            kw = self.take_kw("CONTAINS", "STARTSWITH", "ENDSWITH", "BETWEEN", "IN")
            if kw is None:
                return left
            if kw in ("CONTAINS", "STARTSWITH", "ENDSWITH"):
                left = _string_test(left, self.string_literal(), kw, negate)
            elif kw == "BETWEEN":
                low = self.unary()
                if not self.take_kw("AND"):
                    raise InvalidFilter("expected AND in BETWEEN")
                left = _between(left, low, self.unary(), negate)
            else:
                self.expect_op("(")
                items = [self.string_literal()]
                while self.take_op(","):
                    items.append(self.string_literal())
                self.expect_op(")")
                left = _in(left, frozenset(items), negate)

    def string_literal(self) -> str:
        t = self.peek()
        if not t or t[0] != "str":
            raise InvalidFilter("expected a string literal")
        self.i += 1
        return t[1][1:-1].replace("''", "'")

    def unary(self) -> Expr:
        if self.take_op("+"):
            return self.unary()
        if self.take_op("-"):
            inner = self.unary()
            return lambda p: (-n if (n := _number(inner(p))) is not None else None)
        if self.take_kw("NOT"):
            inner = self.unary()
            return lambda p: (None if (v := inner(p)) is None else not v)
        return self.primary()

    def primary(self) -> Expr:
        t = self.peek()
        if t is None:
            raise InvalidFilter("unexpected end of expression")
        kind, value = t
        self.i += 1
        if kind == "num":
            v = value.rstrip("lL")
            num: float | int = float(v) if any(ch in v for ch in ".eE") else int(v)
            return lambda p: num
        if kind == "str":
            s = value[1:-1].replace("''", "'")
            return lambda p: s
        if kind == "kw" and value in ("TRUE", "FALSE"):
            b = value == "TRUE"
            return lambda p: b
        if kind == "kw" and value == "NULL":
            return lambda p: None
        if kind == "id":
            name = value
            return lambda p: p.get(name)
        if kind == "op" and value == "(":
            e = self.or_expr()
            self.expect_op(")")
            return e
        raise InvalidFilter(f"unexpected token {value!r}")


def _truth(v: object) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.lower()
        if low in ("true", "false"):
            return low == "true"
    return None


def _or(a: Expr, b: Expr) -> Expr:
    def f(p: Props) -> object:
        x, y = _truth(a(p)), _truth(b(p))
        if x or y:
            return True
        return None if x is None or y is None else False
    return f


def _and(a: Expr, b: Expr) -> Expr:
    def f(p: Props) -> object:
        x = _truth(a(p))
        if x is False:
            return False
        y = _truth(b(p))
        if y is False:
            return False
        return None if x is None or y is None else True
    return f


def _compare(x: object, y: object, op: str) -> bool | None:
    if x is None or y is None:
        return None
    nx, ny = _number(x), _number(y)
    if op in ("=", "<>"):
        if isinstance(x, str) and isinstance(y, str):
            eq = x == y
        elif isinstance(x, bool) or isinstance(y, bool):
            eq = _truth(x) == _truth(y)
        elif nx is not None and ny is not None:
            eq = nx == ny
        else:
            return None
        return eq if op == "=" else not eq
    if nx is None or ny is None:
        return None
    return {">": nx > ny, ">=": nx >= ny, "<": nx < ny, "<=": nx <= ny}[op]


def _cmp(a: Expr, b: Expr, op: str) -> Expr:
    return lambda p: _compare(a(p), b(p), op)


def _is_null(a: Expr, negate: bool) -> Expr:
    return lambda p: (a(p) is None) != negate


def _string_test(a: Expr, s: str, kw: str, negate: bool) -> Expr:
    def f(p: Props) -> object:
        v = a(p)
        if not isinstance(v, str):
            return None
        r = s in v if kw == "CONTAINS" else v.startswith(s) if kw == "STARTSWITH" else v.endswith(s)
        return r != negate
    return f


def _between(a: Expr, low: Expr, high: Expr, negate: bool) -> Expr:
    def f(p: Props) -> object:
        v, lo, hi = _number(a(p)), _number(low(p)), _number(high(p))
        if v is None or lo is None or hi is None:
            return None
        return (lo <= v <= hi) != negate
    return f


def _in(a: Expr, items: frozenset[str], negate: bool) -> Expr:
    def f(p: Props) -> object:
        v = a(p)
        if v is None:
            return None
        return (str(v) in items) != negate
    return f


class SqlFilter:
    """A compiled SQL92 selector over message properties (``TAGS`` included)."""

    __slots__ = ("_expr", "expression")

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._expr = _Parser(expression).parse()

    def may_match_tag_hash(self, h: int) -> bool:
        return True

    def matches_properties(self, properties: Props) -> bool:
        try:
            return _truth(self._expr(properties)) is True
        except (TypeError, ValueError, OverflowError):
            return False

    def matches(self, message: ConsumedMessage) -> bool:
        return self.matches_properties(message.properties)

    def __repr__(self) -> str:
        return f"SqlFilter({self.expression!r})"
