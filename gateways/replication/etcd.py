"""A small etcd v3 client over etcd's JSON gateway, on the broker's own trio loop.

etcd 3.4 serves its gRPC API as JSON at ``/v3/...`` beside gRPC (keys and
values base64, 64-bit integers as strings). The broker needs a dozen calls —
range, put, a compare-and-swap transaction, lease grant/keep-alive/revoke, and
a watch — so this is HTTP/1.1 through h11 (sans-I/O) over trio streams, one
connection per call (loopback or a LAN: a connection costs far less than the
lease period it serves). The PyPI clients do not fit: ``etcd3gw`` is synchronous
(requests), ``aetcd`` asyncio over gRPC; either would put a thread or a second
event loop beside trio (docs/cluster.md, "etcd").

Endpoints are tried in turn; a call that reaches none raises EtcdUnavailable.
An answer etcd gives (an error document, a non-200 status) raises EtcdError.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

log = logging.getLogger("ferrymq.cluster.etcd")

MAX_RESPONSE_BYTES = 16 << 20  # a range over a group's keys is a few KiB


class EtcdError(Exception):
    """etcd answered with an error."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time."""


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """etcd's range_end for every key starting with ``prefix``, base64."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return b64(bytes(raw))
        raw.pop()
    return b64(b"\0")


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(unb64(kv.get("key")).decode(), unb64(kv.get("value")),
                   int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                   int(kv.get("version", 0)), int(kv.get("lease", 0)))

    def json(self) -> Any:
        return json.loads(self.value)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "PUT" or "DELETE"
    kv: KeyValue


class EtcdClient:
    """See the module docstring. ``endpoints``: ``http://host:port`` URLs."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self.endpoints: list[tuple[str, int]] = []
        for url in endpoints:
            u = urlsplit(url if "://" in url else f"http://{url}")
            if u.scheme != "http" or not u.hostname or not u.port:
                raise ValueError(f"etcd endpoint {url!r}: http://host:port")
            self.endpoints.append((u.hostname, u.port))
        self.timeout = timeout
        self._next = 0

    # ---------------------------------------------------------------- transport

    async def _open(self, path: str, body: dict[str, Any]
                    ) -> tuple[trio.abc.Stream, h11.Connection, h11.Response, str]:
        """Send one POST to the first endpoint that takes it: (stream, connection,
        response head, host)."""
        data = json.dumps(body).encode()
        last: Exception | None = None
        for i in range(len(self.endpoints)):
            host, port = self.endpoints[(self._next + i) % len(self.endpoints)]
            stream: trio.abc.Stream | None = None
            try:
                with trio.fail_after(self.timeout):
                    stream = await trio.open_tcp_stream(host, port)
                    conn = h11.Connection(h11.CLIENT)
                    await stream.send_all(
                        conn.send(h11.Request(method="POST", target=path, headers=[
                            ("Host", f"{host}:{port}"), ("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), ("Connection", "close")]))
                        + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
                    while True:
                        event = conn.next_event()
                        if event is h11.NEED_DATA:
                            chunk = await stream.receive_some(65536)
                            conn.receive_data(chunk)
                            continue
                        if isinstance(event, h11.Response):
                            self._next = (self._next + i) % len(self.endpoints)
                            return stream, conn, event, host
                        raise EtcdError(f"unexpected {type(event).__name__} from etcd")
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                last = exc
                if stream is not None:
                    await stream.aclose()
        raise EtcdUnavailable(f"no etcd endpoint answered {path}: {last}")

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path``; the JSON answer. Raises EtcdError, EtcdUnavailable."""
        stream, conn, head, _ = await self._open(path, body)
        chunks: list[bytes] = []
        size = 0
        try:
            with trio.fail_after(self.timeout):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                    elif isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                        size += len(event.data)
                        if size > MAX_RESPONSE_BYTES:
                            raise EtcdError("etcd's answer is too large")
                    elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                        break
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            raise EtcdUnavailable(f"etcd {path}: {exc}") from None
        finally:
            await stream.aclose()
        return _answer(head.status_code, b"".join(chunks), path)

    # ---------------------------------------------------------------- kv

    async def range(self, key: str, *, prefix: bool = False) -> tuple[list[KeyValue], int]:
        """The key (or every key under the prefix) and the store's revision."""
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        doc = await self.call("/v3/kv/range", body)
        return ([KeyValue.from_json(kv) for kv in doc.get("kvs", ())],
                int(doc.get("header", {}).get("revision", 0)))

    async def get(self, key: str) -> KeyValue | None:
        kvs, _ = await self.range(key)
        return kvs[0] if kvs else None

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        await self.call("/v3/kv/put", body)

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": b64(key)})

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] | None = None) -> tuple[bool, dict[str, Any]]:
        """A transaction: (whether every comparison held, the whole answer)."""
        doc = await self.call("/v3/kv/txn", {"compare": compare, "success": success,
                                             "failure": failure or []})
        return bool(doc.get("succeeded", False)), doc

    # ---------------------------------------------------------------- leases

    async def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: (id, granted TTL in seconds)."""
        doc = await self.call("/v3/lease/grant", {"TTL": str(ttl_s)})
        return int(doc["ID"]), int(doc.get("TTL", ttl_s))

    async def keepalive(self, lease: int) -> int:
        """Renew the lease; the TTL it has again, 0 when etcd no longer knows it."""
        doc = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = doc.get("result", doc)
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    # ---------------------------------------------------------------- watch

    async def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0
                    ) -> AsyncIterator[WatchEvent]:
        """Events on the key (or prefix) from ``start_revision`` on, until the caller
        stops iterating or the stream breaks (EtcdUnavailable)."""
        req: dict[str, Any] = {"key": b64(key)}
        if prefix:
            req["range_end"] = prefix_end(key)
        if start_revision:
            req["start_revision"] = str(start_revision)
        stream, conn, head, _ = await self._open("/v3/watch", {"create_request": req})
        try:
            if head.status_code != 200:
                raise EtcdError(f"etcd watch answered {head.status_code}")
            buf = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except (OSError, trio.BrokenResourceError) as exc:
                        raise EtcdUnavailable(f"etcd watch: {exc}") from None
                    conn.receive_data(bytes(data))
                    continue
                if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    raise EtcdUnavailable("etcd closed the watch")
                if not isinstance(event, h11.Data):
                    continue
                buf += bytes(event.data)
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise EtcdError("a watch message is too large")
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    doc = _answer(200, line, "/v3/watch")
                    result = doc.get("result", {})
                    if result.get("canceled"):
                        raise EtcdError(f"etcd cancelled the watch: {result}")
                    for ev in result.get("events", ()):
                        yield WatchEvent(ev.get("type", "PUT"), KeyValue.from_json(ev.get("kv", {})))
        except h11.ProtocolError as exc:
            raise EtcdUnavailable(f"etcd watch: {exc}") from None
        finally:
            await stream.aclose()


def _answer(status: int, raw: bytes, path: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        raise EtcdError(f"etcd {path}: not JSON ({raw[:100]!r})") from None
    if not isinstance(doc, dict):
        raise EtcdError(f"etcd {path}: not a JSON object")
    if status != 200 or "error" in doc:
        err = doc.get("error") or doc.get("message") or doc
        raise EtcdError(f"etcd {path} answered {status}: {err}")
    return doc
