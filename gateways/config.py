"""Server configuration: defaults, then a TOML file, then FERRYMQ_* environment variables, then flags.

The TOML file mirrors the flags (``data_dir``, ``host``, ``flush``,
``segment_size``, ``retention_hours``, ...), a ``[ports]`` table with one entry
per door (0 switches a door off), and one table per door for its own options
(``[kafka]``, ``[mqtt]``, ``[http]``, ``[remoting]``, ``[namesrv]``). Every
top-level key can also come from ``FERRYMQ_<KEY>`` (``FERRYMQ_DATA_DIR``,
``FERRYMQ_KAFKA_PORT``...). See docs/operations.md.
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


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


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

    def port(self, door: str) -> int | None:
        """The configured port of a door; None when it is switched off (port 0)."""
        return self.ports.get(door, DEFAULT_PORTS.get(door)) or None

    def options(self, door: str) -> Mapping[str, Any]:
        return self.doors.get(door, {})


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
            elif isinstance(value, dict):
                doors[key] = dict(value)
            else:
                flat[key] = value
    for key, value in env.items():
        if key.startswith("FERRYMQ_"):
            name = key[len("FERRYMQ_"):].lower()
            if name.endswith("_port") and name[:-5] in DEFAULT_PORTS:
                ports[name[:-5]] = _coerce(key, value, 0)
            elif name in _BROKER_KEYS or name in ("host", "log_level", "log_format",
                                                   "namesrv_addr"):
                flat[name] = value
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.endswith("_port") and key[:-5] in DEFAULT_PORTS:
            ports[key[:-5]] = _coerce(key, value, 0)
        else:
            flat[key] = value
    unknown = set(flat) - _BROKER_KEYS - {"host", "log_level", "log_format", "ready_file",
                                          "namesrv_addr"}
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
    try:
        broker = replace(defaults, **broker_kw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg = ServerConfig(
        broker=broker, host=str(flat.get("host", "0.0.0.0")), ports=ports, doors=doors,
        log_level=str(flat.get("log_level", "WARNING")).upper(),
        log_format=str(flat.get("log_format", "text")),
        ready_file=flat.get("ready_file"),
        namesrv_addr=str(flat["namesrv_addr"]) if flat.get("namesrv_addr") else None)
    if cfg.log_format not in ("text", "json"):
        raise ConfigError("log_format must be 'text' or 'json'")
    return cfg
