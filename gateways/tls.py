"""TLS for every door: the standard library's ssl under trio, once, in the supervision layer.

A door never sees TLS: the connection supervisor (gateways/supervision.py)
accepts a connection, and when the door offers TLS on that listener it runs the
handshake (under a handshake timeout) before the door's handler gets the
stream. The handler gets a ``TlsStream``, which reads and writes like the
``trio.SocketStream`` it wraps (``receive_some``, ``send_all``, ``aclose``,
``setsockopt``, and a ``socket`` that answers ``getpeername``/``getsockname``
and ``recv_into`` with decrypted bytes), so door code that reads a stream does
not care whether it is TLS. What TLS established is on ``stream.tls`` and on
the connection's ``Watch`` (``watch.tls``): version, cipher and the verified
client certificate's subject (``TlsSession.peer_subject``), for a door that
maps a certificate to a principal.

Modes on a door's own port (RocketMQ's ``tls.server.mode``):

- ``disabled``: plaintext only;
- ``permissive``: TLS and plaintext on the same port. The first byte tells them
  apart, read with MSG_PEEK (nothing consumed): a TLS connection starts with a
  handshake record, content type 22 (0x16). No plaintext protocol of ours can
  start with that byte: a RocketMQ or Kafka frame starting 0x16 would announce
  more than 369 MB (frames are capped far below), an MQTT fixed header 0x16 is
  a CONNECT with reserved flags set (malformed), and an HTTP request starts
  with a letter of its method. RocketMQ's TlsModeHandler tells them apart the
  same way;
- ``enforcing``: TLS only; a door's separate TLS port is always enforcing.

Certificates are re-read when their files change (checked at most once a
second, on accept) or on SIGHUP (``reload_all``); a file caught mid-write is
logged and the previous certificate kept.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import weakref
from dataclasses import dataclass
from typing import Any

import trio

from .config import TlsConfig

log = logging.getLogger("ferrymq.tls")

TLS_HANDSHAKE = 0x16  # the content type of a TLS handshake record: a ClientHello's first byte
RELOAD_CHECK_S = 1.0

_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_LIVE: weakref.WeakSet[TlsServer] = weakref.WeakSet()

# RFC 4514 short names for the attributes ssl's getpeercert() spells out.
_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
          "domainComponent": "DC", "userId": "UID", "emailAddress": "emailAddress"}


@dataclass(frozen=True, slots=True)
class TlsSession:
    """What the handshake established, for the door (and its logs)."""

    version: str
    cipher: str
    peer_cert: dict[str, Any] | None  # the verified client certificate; None: none given

    @property
    def peer_subject(self) -> str | None:
        """The client certificate's subject as RFC 4514 writes it (``CN=alice,O=Acme``,
        most specific first); None without a verified client certificate."""
        if not self.peer_cert:
            return None
        rdns = self.peer_cert.get("subject", ())
        parts = ["+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn)
                 for rdn in reversed(rdns)]
        return ",".join(parts)

    @property
    def peer_common_name(self) -> str | None:
        if not self.peer_cert:
            return None
        for rdn in self.peer_cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


class _TlsSocket:
    """What door code asks of ``stream.socket``, for a TLS stream: the peer's and
    our addresses, ``recv_into`` (a large frame read straight into its buffer)
    with the decrypted bytes, and ``shutdown``/``close`` (a door ending a
    connection from outside its reader: the TLS reader then sees the end of the
    stream, or a closed resource). No ``fileno``: nothing may write around TLS."""

    __slots__ = ("_raw", "_tls")

    def __init__(self, raw: Any, tls: trio.SSLStream[Any]) -> None:
        self._raw = raw
        self._tls = tls

    def getpeername(self) -> Any:
        return self._raw.getpeername()

    def getsockname(self) -> Any:
        return self._raw.getsockname()

    def shutdown(self, how: int) -> None:
        self._raw.shutdown(how)

    def close(self) -> None:
        self._raw.close()

    async def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        want = nbytes or len(view)
        data = await self._tls.receive_some(want)
        view[:len(data)] = data
        return len(data)


class TlsStream(trio.abc.Stream):
    """A TLS connection that looks like the ``trio.SocketStream`` under it."""

    def __init__(self, tls: trio.SSLStream[Any], transport: trio.SocketStream) -> None:
        self._ssl = tls
        self.transport_stream = transport
        self.socket = _TlsSocket(transport.socket, tls)
        cipher = tls.cipher()
        self.tls = TlsSession(version=str(tls.version()), cipher=cipher[0] if cipher else "",
                              peer_cert=tls.getpeercert() or None)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._ssl.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._ssl.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._ssl.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._ssl.aclose()

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.transport_stream.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        return self.transport_stream.getsockopt(level, option, buffersize)


class HandshakeFailed(Exception):
    """The peer did not complete a TLS handshake (garbage, a cut, a certificate the
    CA does not vouch for)."""


class TlsServer:
    """One door's TLS: its ``ssl.SSLContext`` (kept current with the files) and how a
    connection is taken on (``accept``)."""

    def __init__(self, door: str, config: TlsConfig) -> None:
        self.door = door
        self.config = config
        self.context = self._build()
        self._stamp = self._files_stamp()
        self._checked = trio.current_time() if _in_trio() else 0.0
        _LIVE.add(self)

    def _build(self) -> ssl.SSLContext:
        cfg = self.config
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _VERSIONS[cfg.min_version]
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None, cfg.key_password or None)
        ctx.verify_mode = _VERIFY[cfg.client_auth]
        if cfg.ca_file:
            ctx.load_verify_locations(cafile=cfg.ca_file)
        return ctx

    def _files_stamp(self) -> tuple[float, ...]:
        cfg = self.config
        stamp = []
        for path in (cfg.cert_file, cfg.key_file, cfg.ca_file):
            if path:
                try:
                    stamp.append(os.stat(path).st_mtime)
                except OSError:
                    stamp.append(-1.0)
        return tuple(stamp)

    def reload(self) -> bool:
        """Re-read the certificate, key and CA files; new connections use them. On an
        error (a file half written) the previous ones stay; returns whether it took."""
        self._stamp = self._files_stamp()
        try:
            self.context = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("%s door: TLS files not reloaded (%s); the previous ones stay",
                        self.door, exc, extra={"door": self.door})
            return False
        log.info("%s door: TLS certificate reloaded", self.door, extra={"door": self.door})
        return True

    def maybe_reload(self) -> None:
        now = trio.current_time()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        if self._files_stamp() != self._stamp:
            self.reload()

    async def accept(self, stream: trio.SocketStream, enforcing: bool) -> Any:
        """The stream the door gets: ``stream`` itself for a plaintext connection on
        a permissive port, else a ``TlsStream`` after the handshake; None when the
        peer closed before its first byte. Raises HandshakeFailed."""
        self.maybe_reload()
        if not enforcing:
            try:
                first = await stream.socket.recv(1, socket.MSG_PEEK)
            except OSError:
                return None
            if not first:
                return None
            if first[0] != TLS_HANDSHAKE:
                return stream
        tls = trio.SSLStream(stream, self.context, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            raise HandshakeFailed(str(cause) or type(cause).__name__) from None
        return TlsStream(tls, stream)


def reload_all() -> int:
    """Reload every live door's TLS files (SIGHUP); returns how many took."""
    return sum(1 for server in list(_LIVE) if server.reload())


def _in_trio() -> bool:
    try:
        trio.current_time()
    except RuntimeError:
        return False
    return True


def client_context(ca_file: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client's context (the native client, the CLI, the broker's own connections
    to a NameServer): trusts ``ca_file`` (else the system's CAs), presents
    ``cert_file``/``key_file`` when given; ``verify=False`` checks nothing (tests
    and self-signed set-ups only)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx
