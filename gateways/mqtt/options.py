"""The MQTT door's settings: the ``[mqtt]`` table of the configuration, defaults and checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

OVERFLOW_POLICIES = ("drop_oldest", "refuse")
DEFAULT_WS_PORT = 8083


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """See docs/mqtt.md, "Configuration", for each setting's reasoning."""

    ws_port: int = DEFAULT_WS_PORT  # MQTT over WebSocket; 0 switches it off
    ws_path: str = "/mqtt"
    max_packet_size: int = 1 << 20  # announced in CONNACK (5.0), enforced on all versions
    receive_maximum: int = 64  # inbound QoS 1/2 PUBLISHes a client may leave unacknowledged
    max_inflight: int = 32  # outbound QoS 1/2 window per session (capped by the client's)
    max_queued: int = 1000  # per session: queued messages, and how far behind a queue it may fall
    overflow: str = "drop_oldest"  # or "refuse": what happens past max_queued
    max_outbuf: int = 1 << 20  # bytes buffered for a slow socket before QoS 0 is dropped
    topic_alias_maximum: int = 16
    server_keep_alive: int = 0  # 0: accept the client's keep alive; else impose this one (5.0)
    max_keep_alive: int = 0  # 0: no cap; else keep alives above are lowered (5.0) to it
    max_session_expiry: int = 0xFFFFFFFF
    connect_timeout: float = 10.0  # seconds to send CONNECT after the TCP connect
    packet_timeout: float = 60.0  # seconds a packet begun may take to arrive whole; 0: off
    send_timeout: float = 30.0  # seconds a send may wait on a client that does not read; 0: off
    allow_anonymous: bool = True
    password_file: str = ""
    acl_file: str = ""
    sys_interval: float = 10.0  # seconds between $SYS updates; 0 switches them off
    retain_available: bool = True
    max_subscriptions: int = 10_000  # per session
    state_dir: str = ""  # default <data_dir>/mqtt
    save_interval: float = 1.0  # seconds between state saves when dirty
    max_connections: int = 100_000

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> MqttOptions:
        """Build from a TOML table; raises ValueError naming the bad key."""
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ValueError(f"[mqtt] unknown setting {key!r}")
            default = getattr(cls(), key)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value)
            else:
                ok = isinstance(value, str)
            if not ok:
                raise ValueError(f"[mqtt] {key} must be of type {type(default).__name__}")
            kw[key] = value
        opts = cls(**kw)
        if opts.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"[mqtt] overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        if not 1 <= opts.receive_maximum <= 65535 or not 1 <= opts.max_inflight <= 65535:
            raise ValueError("[mqtt] receive_maximum and max_inflight must be 1..65535")
        if not 0 <= opts.topic_alias_maximum <= 65535:
            raise ValueError("[mqtt] topic_alias_maximum must be 0..65535")
        if opts.max_packet_size < 64 or opts.max_queued < 1:
            raise ValueError("[mqtt] max_packet_size must be >= 64 and max_queued >= 1")
        if not opts.ws_path.startswith("/"):
            raise ValueError("[mqtt] ws_path must start with /")
        return opts

    @property
    def ws_port_explicit(self) -> bool:
        """Whether ws_port was configured (it must bind) rather than left at the
        default (taken by another broker: TCP only, with a warning). Not
        ``MqttOptions.ws_port``: with slots, that is the field's descriptor."""
        return self.ws_port != DEFAULT_WS_PORT
