"""Server configuration: defaults, then a TOML file, then FERRYMQ_* environment variables, then flags.

The TOML file mirrors the flags (``data_dir``, ``host``, ``flush``,
``segment_size``, ``retention_hours``, ...), a ``[ports]`` table with one entry
per door (0 switches a door off), and one table per door for its own options
(``[kafka]``, ``[mqtt]``, ``[http]``, ``[remoting]``, ``[namesrv]``). Every
top-level key can also come from ``FERRYMQ_<KEY>`` (``FERRYMQ_DATA_DIR``,
``FERRYMQ_KAFKA_PORT``...). A ``[cluster]`` table makes the broker a member of a
broker group coordinated by etcd (``ClusterConfig``; docs/cluster.md). See
docs/operations.md.

A door's table also holds its connection limits (``ConnectionLimits``: caps on
connections, timeouts, the pre-authentication request size), which the
connection supervisor (gateways/supervision.py) enforces the same way for
every door; ``load_config`` takes them out of the table, checks them, and
leaves the door the rest. ``max_inflight_bytes`` (top level) is the broker-wide
budget of request bytes being received. Defaults and reasons: ``DOOR_LIMITS``
and docs/operations.md, "Connection limits".

TLS (docs/security.md, "TLS"): a top-level ``[tls]`` table holds the defaults
every door shares (certificate, key, CA, client-certificate verification) and
a door's ``[<door>.tls]`` table overrides them and says how that door offers
TLS: ``mode`` on its own port (disabled, permissive, enforcing) and/or a
separate TLS-only ``port``. ``load_config`` resolves one ``TlsConfig`` per door
(``ServerConfig.tls``), checks it, and takes the tables out of the doors' own
options; gateways/tls.py turns it into an ``ssl.SSLContext``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..core.broker import BrokerConfig

DEFAULT_PORTS: dict[str, int] = {
    "namesrv": 9876,
    "remoting": 10911,
    "kafka": 9092,
    "mqtt": 1883,
    "http": 8080,
}

_BROKER_KEYS = {f.name for f in fields(BrokerConfig)} - {"extra"}
_SERVER_KEYS = {"host", "log_level", "log_format", "ready_file", "namesrv_addr",
                "max_inflight_bytes"}

# Kafka's queued.max.request.bytes is unbounded by default; a Python broker should not
# be: 256 MiB of requests being received at once is far above what a busy broker
# holds (a Kafka producer's request is 1 MiB by default, a RocketMQ batch 4 MiB) and
# well below what a small server can give (docs/operations.md, "Connection limits").
DEFAULT_MAX_INFLIGHT_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The limits the connection supervisor enforces on one door's connections (0 = off).

    - ``max_connections``, ``max_connections_per_address``: refused at accept past them;
    - ``handshake_timeout_s``: the first request (and, where the door authenticates,
      the authentication) must be complete this long after the accept;
    - ``idle_timeout_s``: a connection with nothing read or written this long closes;
    - ``frame_timeout_s``: a request begun must be complete within this (slowloris);
    - ``send_timeout_s``: a response the peer does not take within this closes it
      (a client that never reads);
    - ``pre_auth_max_bytes``: the largest request before authentication, where the
      door authenticates (Kafka SASL: a frame; HTTP bearer tokens: a body).
    """

    max_connections: int = 10_000
    max_connections_per_address: int = 0
    handshake_timeout_s: float = 0.0
    idle_timeout_s: float = 0.0
    frame_timeout_s: float = 0.0
    send_timeout_s: float = 0.0
    pre_auth_max_bytes: int = 0


# Defaults, by door, as a user of the peer expects them (docs/operations.md):
# RocketMQ closes a channel idle for 120 s (serverChannelMaxIdleTimeSeconds), Kafka
# after connections.max.idle.ms (10 min) and allows 512 KiB before SASL completes
# (sasl.server.max.receive.size). MQTT keeps its own rules (connect_timeout, 1.5 x
# the keep alive) and HTTP its own phases (header, body, keep-alive and send
# timeouts in [http]): for those two the supervisor enforces the caps.
DOOR_LIMITS: dict[str, ConnectionLimits] = {
    "namesrv": ConnectionLimits(10_000, 1_000, 10.0, 120.0, 30.0, 30.0, 0),
    "remoting": ConnectionLimits(10_000, 1_000, 10.0, 120.0, 30.0, 30.0, 0),
    "kafka": ConnectionLimits(10_000, 1_000, 10.0, 600.0, 30.0, 30.0, 512 << 10),
    "mqtt": ConnectionLimits(100_000, 0, 0.0, 0.0, 0.0, 0.0, 64 << 10),
    "http": ConnectionLimits(4_096, 0, 0.0, 0.0, 0.0, 0.0, 64 << 10),
}
_ALL_LIMITS = frozenset(f.name for f in fields(ConnectionLimits))
# Which limits a door's table may set (the others are that door's own options).
LIMIT_KEYS: dict[str, frozenset[str]] = {
    "namesrv": _ALL_LIMITS - {"pre_auth_max_bytes"},  # no authentication there
    "remoting": _ALL_LIMITS - {"pre_auth_max_bytes"},
    "kafka": _ALL_LIMITS,
    "mqtt": frozenset({"max_connections", "max_connections_per_address", "pre_auth_max_bytes"}),
    "http": frozenset({"max_connections", "max_connections_per_address", "pre_auth_max_bytes"}),
}


def connection_limits(door: str, table: Mapping[str, Any],
                      base: ConnectionLimits | None = None) -> ConnectionLimits:
    """The door's limits: ``base`` (its defaults) overridden by the limit keys of its
    table. Raises ConfigError for a value of the wrong type or below zero."""
    if base is None:
        base = DOOR_LIMITS.get(door, ConnectionLimits())
    changes: dict[str, Any] = {}
    for key in LIMIT_KEYS.get(door, _ALL_LIMITS) & table.keys():
        like = getattr(base, key)
        value = table[key]
        if isinstance(value, bool):
            raise ConfigError(f"[{door}] {key}: a number, not {value!r}")
        value = _coerce(f"[{door}] {key}", value, like)
        if value < 0:
            raise ConfigError(f"[{door}] {key}: must not be negative")
        changes[key] = value
    return replace(base, **changes)


AUTH_KEYS = frozenset({"enabled", "super_users", "cluster_secret"})


# [cluster] settings the core reads (they live in BrokerConfig).
_CLUSTER_BROKER_KEYS = {"replication_mode", "min_insync_replicas", "replica_lag_max_ms",
                        "replication_timeout_ms", "slave_read_enable", "broker_name"}


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: this broker is a member of a broker group (docs/cluster.md)."""

    etcd: tuple[str, ...]
    node_id: str
    replication_listen: str = "127.0.0.1:10912"
    lease_ttl_s: int = 6
    fence_margin_ms: int = 1500
    unclean_election: bool = False
    etcd_prefix: str = ""  # default /ferrymq/<cluster_name>
    etcd_timeout_ms: int = 1000
    max_frame_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        if not self.etcd:
            raise ConfigError("cluster.etcd: at least one etcd endpoint (http://host:port)")
        if not self.node_id or "/" in self.node_id:
            raise ConfigError("cluster.node_id: a non-empty name without '/'")
        if self.lease_ttl_s < 2:
            raise ConfigError("cluster.lease_ttl_s: at least 2 (etcd's smallest lease)")
        if not 0 < self.fence_margin_ms < self.lease_ttl_s * 500:
            raise ConfigError("cluster.fence_margin_ms: positive and under half the lease TTL")
        host, _, port = self.replication_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError("cluster.replication_listen: host:port")
        if self.max_frame_bytes < 1 << 20:
            raise ConfigError("cluster.max_frame_bytes: at least 1 MiB")

    @property
    def replication_address(self) -> tuple[str, int]:
        host, _, port = self.replication_listen.rpartition(":")
        return host, int(port)


def _cluster_config(table: Mapping[str, Any]) -> tuple[ClusterConfig, dict[str, Any]]:
    """The [cluster] table: (its own settings, the core's settings it carries)."""
    own: dict[str, Any] = {}
    core: dict[str, Any] = {}
    known = {f.name: f.default for f in fields(ClusterConfig)}
    for key, value in table.items():
        if key in _CLUSTER_BROKER_KEYS:
            core[key] = value
        elif key == "etcd":
            items = value if isinstance(value, list) else str(value).split(",")
            own["etcd"] = tuple(str(v).strip() for v in items if str(v).strip())
        elif key in known:
            default = known[key]
            own[key] = _coerce(f"cluster.{key}", value, default if default is not None else "")
        else:
            raise ConfigError(f"cluster.{key}: unknown setting")
    if "etcd" not in own or "node_id" not in own:
        raise ConfigError("[cluster] needs etcd and node_id")
    return ClusterConfig(**own), core


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


TLS_MODES = ("disabled", "permissive", "enforcing")
CLIENT_AUTH = ("none", "optional", "required")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """How one door offers TLS (docs/security.md, "TLS").

    - ``mode``: TLS on the door's own port, as RocketMQ's ``tls.server.mode``:
      ``disabled`` (plaintext only), ``permissive`` (TLS and plaintext on the same
      port, told apart by the first byte), ``enforcing`` (TLS only);
    - ``port``: a second, TLS-only listener (Kafka's SSL listener, MQTT's 8883,
      HTTPS); None: none, 0: any free port (reported in the ready file);
    - ``ws_port``: MQTT only, WebSocket over TLS (WSS) on its own port;
    - ``cert_file``/``key_file``: the server's certificate chain (PEM) and its key
      (in ``cert_file`` when no ``key_file``), ``key_password`` if the key is encrypted;
    - ``ca_file``: the CAs a client certificate must chain to;
    - ``client_auth``: ``none`` (not asked), ``optional`` (checked when given),
      ``required`` (no certificate, no connection);
    - ``handshake_timeout_s``: the TLS handshake (and, in permissive mode, the first
      byte) must be done this long after the accept, when the door has no shorter
      handshake timeout of its own;
    - ``min_version``: the oldest TLS version accepted.
    """

    mode: str = "disabled"
    port: int | None = None
    ws_port: int | None = None
    cert_file: str = ""
    key_file: str = ""
    key_password: str = ""
    ca_file: str = ""
    client_auth: str = "none"
    handshake_timeout_s: float = 10.0
    min_version: str = "TLSv1.2"

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled" or self.port is not None or self.ws_port is not None


_TLS_SHARED = frozenset(("mode", "cert_file", "key_file", "key_password", "ca_file",
                         "client_auth", "handshake_timeout_s", "min_version"))
_TLS_KEYS = frozenset(f.name for f in fields(TlsConfig))


def tls_config(door: str, table: Mapping[str, Any] | None,
               shared: Mapping[str, Any] | None = None) -> TlsConfig | None:
    """The door's TLS settings: ``shared`` (the ``[tls]`` table) overridden by
    ``table`` (the door's ``[<door>.tls]``); None when the door offers no TLS.
    Raises ConfigError naming the setting that is wrong."""
    where = f"[{door}.tls]"
    kw: dict[str, Any] = {}
    for name, source, allowed in (("[tls]", shared, _TLS_SHARED), (where, table, _TLS_KEYS)):
        if source is None:
            continue
        if not isinstance(source, Mapping):
            raise ConfigError(f"{name}: a table, not {source!r}")
        unknown = set(source) - allowed
        if unknown:
            raise ConfigError(f"{name}: unknown setting(s) {', '.join(sorted(unknown))}")
        kw.update(source)
    base = TlsConfig()
    for key, value in list(kw.items()):
        if key in ("port", "ws_port"):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"{where} {key}: a TCP port (0: any free one), not {value!r}")
        else:
            kw[key] = _coerce(f"{where} {key}", value, getattr(base, key))
    cfg = replace(base, **kw)
    if cfg.mode not in TLS_MODES:
        raise ConfigError(f"{where} mode: one of {', '.join(TLS_MODES)}, not {cfg.mode!r}")
    if cfg.client_auth not in CLIENT_AUTH:
        raise ConfigError(f"{where} client_auth: one of {', '.join(CLIENT_AUTH)}, "
                          f"not {cfg.client_auth!r}")
    if cfg.min_version not in TLS_VERSIONS:
        raise ConfigError(f"{where} min_version: one of {', '.join(TLS_VERSIONS)}")
    if cfg.ws_port is not None and door != "mqtt":
        raise ConfigError(f"{where} ws_port: only the MQTT door speaks WebSocket")
    if cfg.handshake_timeout_s <= 0:
        raise ConfigError(f"{where} handshake_timeout_s: must be positive")
    if not cfg.enabled:
        return None
    if not cfg.cert_file:
        raise ConfigError(f"{where}: TLS needs cert_file (and key_file unless the key is in it)")
    if cfg.client_auth != "none" and not cfg.ca_file:
        raise ConfigError(f"{where} client_auth = {cfg.client_auth!r} needs ca_file")
    for key in ("cert_file", "key_file", "ca_file"):
        path = getattr(cfg, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{where} {key}: no such file {path!r}")
    return cfg


@dataclass(frozen=True)
class ServerConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    host: str = "0.0.0.0"
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    doors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    log_level: str = "WARNING"
    log_format: str = "text"
    ready_file: str | None = None
    namesrv_addr: str | None = None  # NameServers the broker registers with (HOST:PORT;...)
    limits: Mapping[str, ConnectionLimits] = field(default_factory=dict)  # door -> its limits
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    tls: Mapping[str, TlsConfig] = field(default_factory=dict)  # door -> its TLS, if any
    cluster: ClusterConfig | None = None  # None: a standalone broker

    def port(self, door: str) -> int | None:
        """The configured port of a door; None when it is switched off (port 0)."""
        return self.ports.get(door, DEFAULT_PORTS.get(door)) or None

    def options(self, door: str) -> Mapping[str, Any]:
        """The door's own options (its table without the connection limits)."""
        return self.doors.get(door, {})

    def connection_limits(self, door: str) -> ConnectionLimits:
        found = self.limits.get(door)
        return found if found is not None else DOOR_LIMITS.get(door, ConnectionLimits())


def _coerce(name: str, value: Any, like: Any) -> Any:
    try:
        if isinstance(like, bool):
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r}") from None


def load_config(path: str | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> ServerConfig:
    """Build the configuration from a TOML file, the environment and flag overrides
    (flat keys as the flags name them: ``data_dir``, ``kafka_port``...; None = unset)."""
    env = os.environ if env is None else env
    flat: dict[str, Any] = {}
    ports = dict(DEFAULT_PORTS)
    doors: dict[str, dict[str, Any]] = {}
    cluster: ClusterConfig | None = None
    if path:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in doc.items():
            if key == "ports" and isinstance(value, dict):
                for door, port in value.items():
                    ports[door] = _coerce(f"ports.{door}", port, 0)
            elif key == "cluster" and isinstance(value, dict):
                cluster, core_keys = _cluster_config(value)
                flat.update(core_keys)
            elif isinstance(value, dict):
                doors[key] = dict(value)
            else:
                flat[key] = value
    for key, value in env.items():
        if key.startswith("FERRYMQ_"):
            name = key[len("FERRYMQ_"):].lower()
            if name.endswith("_port") and name[:-5] in DEFAULT_PORTS:
                ports[name[:-5]] = _coerce(key, value, 0)
            elif name in _BROKER_KEYS or name in _SERVER_KEYS - {"ready_file"}:
                flat[name] = value
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.endswith("_port") and key[:-5] in DEFAULT_PORTS:
            ports[key[:-5]] = _coerce(key, value, 0)
        else:
            flat[key] = value
    unknown = set(flat) - _BROKER_KEYS - _SERVER_KEYS
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    defaults = BrokerConfig()
    broker_kw = {k: _coerce(k, v, getattr(defaults, k)) for k, v in flat.items()
                 if k in _BROKER_KEYS}
    if "store_port" not in broker_kw and ports.get("remoting"):
        broker_kw["store_port"] = ports["remoting"]
    for door, port in ports.items():
        if not 0 <= port <= 65535:
            raise ConfigError(f"ports.{door}: {port} is not a TCP port")
    auth = doors.pop("auth", {})  # [auth]: the broker's one access model (docs/security.md)
    for key, value in env.items():
        if key == "FERRYMQ_AUTH_ENABLED":
            auth["enabled"] = value
    if auth:
        unknown_auth = set(auth) - AUTH_KEYS
        if unknown_auth:
            raise ConfigError(f"[auth]: unknown setting(s): {', '.join(sorted(unknown_auth))}")
        auth["enabled"] = _coerce("[auth] enabled", auth.get("enabled", False), True)
        supers = auth.get("super_users", [])
        if not isinstance(supers, list) or not all(isinstance(u, str) and u for u in supers):
            raise ConfigError("[auth] super_users: a list of user names")
        broker_kw["extra"] = {**defaults.extra, "auth": auth}
    try:
        broker = replace(defaults, **broker_kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    limits = {door: connection_limits(door, doors.get(door, {})) for door in DEFAULT_PORTS}
    shared_tls = doors.pop("tls", None)
    tls: dict[str, TlsConfig] = {}
    for door in DEFAULT_PORTS:
        found = tls_config(door, doors.get(door, {}).pop("tls", None), shared_tls)
        if found is not None:
            tls[door] = found
    for door, table in doors.items():
        for key in LIMIT_KEYS.get(door, frozenset()):
            table.pop(key, None)
    inflight = _coerce("max_inflight_bytes", flat.get("max_inflight_bytes",
                                                      DEFAULT_MAX_INFLIGHT_BYTES), 0)
    if inflight < 1 << 20:
        raise ConfigError("max_inflight_bytes: at least 1048576 (one MiB)")
    cfg = ServerConfig(
        broker=broker, host=str(flat.get("host", "0.0.0.0")), ports=ports, doors=doors,
        log_level=str(flat.get("log_level", "WARNING")).upper(),
        log_format=str(flat.get("log_format", "text")),
        ready_file=flat.get("ready_file"),
        namesrv_addr=str(flat["namesrv_addr"]) if flat.get("namesrv_addr") else None,
        limits=limits, max_inflight_bytes=inflight, cluster=cluster, tls=tls)
    if cfg.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    return cfg
