"""HTTP/1.1 server side, sans-I/O: bytes in, request events out; responses framed to bytes.

Parsing is llhttp's (Node.js's parser, through ``httptools``): it is strict
where smuggling hides (two Content-Lengths, Content-Length beside
Transfer-Encoding, obs-fold, bare LF, bad chunk sizes) and costs a few
microseconds a request where a pure-Python parser costs tens (docs/http.md,
"Stack"). This module adds what a server needs around it:

- ``receive_data`` feeds bytes; ``next_event`` returns a ``RequestHead``, then
  body ``bytes`` pieces, then ``END``, or ``NEED_DATA``. Pipelined requests
  queue up in order.
- the head is bounded: a request line plus headers above ``max_head_bytes``
  raises ``HeadTooLarge`` (431), counted while it arrives, so a head that never
  ends cannot grow without limit;
- every parse error is a ``HttpProtocolError`` with the status to answer (400, or
  505 for an HTTP version other than 1.x); after one the connection must close;
- ``response_head`` / ``chunk`` / ``LAST_CHUNK`` frame what goes back
  (Content-Length, or chunked when the length is unknown; ``connection:
  close`` when this response ends the connection).

Header names are lower-cased and values stripped of surrounding whitespace;
when a header repeats, the last value wins (FerryMQ reads none that may repeat).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import httptools

from ..errors import RemoteProtocolError
from ..sentinels import NEED_DATA

END = object()  # the current request's body is complete

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_FORBIDDEN_IN_HEADERS = frozenset("\r\n\0")


class HttpProtocolError(RemoteProtocolError):
    """The peer broke HTTP/1.1: answer ``status`` (if a response can still go) and close."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class HeadTooLarge(HttpProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request head passed {limit} bytes", 431)


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str  # as sent: path and query, undecoded
    version: str  # "1.1" or "1.0"
    headers: dict[bytes, bytes]  # lower-case name -> stripped value
    keep_alive: bool  # the client allows another request on this connection
    expect_continue: bool  # it waits for "100 Continue" before sending its body


class ServerConnection:
    """One connection's parser state. Not thread-safe; no I/O."""

    __slots__ = ("_begun_bytes", "_events", "_head_size", "_headers", "_in_head", "_parser",
                 "_url", "closed", "max_head_bytes", "must_close")

    def __init__(self, max_head_bytes: int = 16 << 10) -> None:
        self.max_head_bytes = max_head_bytes
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[object] = deque()
        self._headers: dict[bytes, bytes] = {}
        self._url = b""
        self._in_head = False
        self._head_size = 0
        self._begun_bytes = 0  # bytes fed while a head was incomplete
        self.closed = False  # the peer sent its last byte (receive_data(b""))
        self.must_close = False  # no request may follow the current one (an upgrade came)

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._headers = {}
        self._url = b""
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value.strip()
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._begun_bytes = 0
        if self._head_size > self.max_head_bytes:
            raise HeadTooLarge(self.max_head_bytes)
        p = self._parser
        version = p.get_http_version()
        headers = self._headers
        expect = headers.get(b"expect")
        self._events.append(RequestHead(
            p.get_method().decode("ascii"), self._url.decode("latin-1"), version, headers,
            p.should_keep_alive(),
            expect is not None and version == "1.1" and expect.lower() == b"100-continue"))

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(END)

    # ------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Parse ``data`` (``b""``: the peer closed). Raises HttpProtocolError."""
        if not data:
            self.closed = True
            return
        counted = self._in_head  # a head already under way: every byte of this piece counts
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: FerryMQ switches to nothing. The request itself was
            # parsed and is answered as usual; what follows is not HTTP, so the
            # connection ends after the answer.
            for ev in reversed(self._events):
                if type(ev) is RequestHead:
                    ev.keep_alive = False
                    break
            else:
                self.must_close = True
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HttpProtocolError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpProtocolError):
                raise cause from None
            message = str(exc) or type(exc).__name__
            raise HttpProtocolError(message, 505 if "HTTP version" in message else 400) from None
        if self._in_head:
            if counted:
                self._begun_bytes += len(data)
            if self._begun_bytes + self._head_size > self.max_head_bytes:
                raise HeadTooLarge(self.max_head_bytes)

    def next_event(self) -> object:
        """A RequestHead, a body piece (bytes), END, or NEED_DATA."""
        return self._events.popleft() if self._events else NEED_DATA


# ------------------------------------------------------------ output


def response_head(status: int, headers: list[tuple[str, str]], length: int | None,
                  version: str = "1.1", close: bool = False) -> bytes:
    """The status line and headers of a response. ``length`` None: the body is
    chunked (HTTP/1.1) or runs to the close (HTTP/1.0, which then must close)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    for name, value in headers:
        if _FORBIDDEN_IN_HEADERS.intersection(name) or _FORBIDDEN_IN_HEADERS.intersection(value):
            raise ValueError(f"header {name!r} holds a line break or NUL")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if length is not None:
        lines.append(b"content-length: %d\r\n" % length)
    elif version == "1.1":
        lines.append(b"transfer-encoding: chunked\r\n")
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def chunk(data: bytes) -> bytes:
    """One piece of a chunked body (never empty: that would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
