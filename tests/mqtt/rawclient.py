"""A raw MQTT client on a blocking socket for the door's tests: the bytes are ours (our
codec), so a test can send anything, including what no real client would."""

from __future__ import annotations

import socket
import time
from typing import Any

from ferrymq.protocols.mqtt import codec
from ferrymq.protocols.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    """A blocking MQTT client that speaks through our codec, one packet at a time."""

    def __init__(self, port: int, version: int = 4, timeout: float = 5.0) -> None:
        self.version = version
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, packet: Packet) -> None:
        self.sock.sendall(codec.encode(packet, self.version))

    def recv(self, timeout: float | None = None) -> Packet:
        if timeout is not None:
            self.sock.settimeout(timeout)
        while True:
            frame = codec.split_frame(self.buf)
            if frame is not None and frame[2] <= len(self.buf):
                first, start, end = frame
                body = bytes(self.buf[start:end])
                del self.buf[:end]
                return codec.decode(first, body, self.version)
            data = self.sock.recv(65536)
            if not data:
                raise Closed()
            self.buf += data

    def recv_until_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Every packet until the server closes; fails if it does not within ``timeout``."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not close; got {out}")
            try:
                out.append(self.recv(left))
            except (Closed, ConnectionResetError):
                return out
            except TimeoutError:
                continue

    def connect(self, client_id: str = "", clean: bool = True, keep_alive: int = 60,
                properties: dict[int, Any] | None = None, will: Will | None = None,
                username: str | None = None, password: bytes | None = None) -> Connack:
        self.send(Connect(self.version, client_id, clean, keep_alive, properties or {}, will,
                          username, password))
        ack = self.recv()
        assert isinstance(ack, Connack), ack
        return ack

    def subscribe(self, *filters: str, qos: int = 0, pid: int = 1,
                  properties: dict[int, Any] | None = None, **opts: Any) -> Suback:
        self.send(Subscribe(pid, tuple(Subscription(f, qos, **opts) for f in filters),
                            properties or {}))
        ack = self.recv()
        assert isinstance(ack, Suback), ack
        return ack

    def unsubscribe(self, *filters: str, pid: int = 1) -> Unsuback:
        self.send(Unsubscribe(pid, tuple(filters)))
        ack = self.recv()
        assert isinstance(ack, Unsuback), ack
        return ack

    def publish(self, topic: str, payload: bytes, qos: int = 0, pid: int | None = None,
                retain: bool = False, properties: dict[int, Any] | None = None) -> Packet | None:
        """Publish and complete the QoS flow; returns the PUBACK / PUBCOMP."""
        pid = pid or (1 if qos else None)
        self.send(Publish(topic, payload, qos, retain, False, pid, properties or {}))
        if qos == 1:
            return self.recv()
        if qos == 2:
            rec = self.recv()
            assert isinstance(rec, Pubrec), rec
            if rec.reason >= 0x80:
                return rec
            self.send(Pubrel(pid))  # type: ignore[arg-type]
            return self.recv()
        return None

    def messages(self, n: int, timeout: float = 5.0, ack: bool = True) -> list[Publish]:
        """The next ``n`` PUBLISHes (acknowledging QoS 1/2 unless told not to)."""
        got: list[Publish] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(got)} of {n} messages: {got}")
            try:
                p = self.recv(left)
            except TimeoutError:
                continue
            if isinstance(p, Publish):
                got.append(p)
                if ack and p.qos == 1:
                    self.send(Puback(p.packet_id))  # type: ignore[arg-type]
                elif ack and p.qos == 2:
                    self.send(Pubrec(p.packet_id))  # type: ignore[arg-type]
            elif isinstance(p, Pubrel):
                self.send(Pubcomp(p.packet_id))
        return got

    def nothing(self, wait: float = 0.3) -> None:
        """Assert that no packet but the end of a QoS 2 flow (PUBREL) arrives within ``wait``."""
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                p = self.recv(left)
            except TimeoutError:
                return
            if not isinstance(p, Pubrel):
                raise AssertionError(f"unexpected {p}")
            self.send(Pubcomp(p.packet_id))

    def disconnect(self, reason: int = 0) -> None:
        self.send(Disconnect(reason))
        self.close()



__all__ = ["Closed", "RawClient", "free_port"]
