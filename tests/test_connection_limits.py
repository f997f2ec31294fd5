"""Connection limits are options of each door's table: the peers' defaults, checked at load,
taken out of the table before the door parses the rest, and given to the door's supervisor."""

from __future__ import annotations

import pytest
from ferrymq.gateways.config import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    DOOR_LIMITS,
    ConfigError,
    ServerConfig,
    load_config,
)
from ferrymq.gateways.server import DoorContext


def config(tmp_path, text: str, env: dict[str, str] | None = None) -> ServerConfig:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(str(path), env=env or {})


def test_the_defaults_are_the_peers() -> None:
    assert DOOR_LIMITS["remoting"].idle_timeout_s == 120  # RocketMQ's channel idle close
    assert DOOR_LIMITS["kafka"].idle_timeout_s == 600  # connections.max.idle.ms
    assert DOOR_LIMITS["kafka"].pre_auth_max_bytes == 512 << 10  # sasl.server.max.receive.size
    assert DOOR_LIMITS["mqtt"].idle_timeout_s == 0  # MQTT keeps its keep-alive rule
    cfg = load_config(None, env={})
    assert cfg.connection_limits("namesrv") == DOOR_LIMITS["namesrv"]
    assert cfg.max_inflight_bytes == DEFAULT_MAX_INFLIGHT_BYTES


def test_a_doors_limits_come_out_of_its_table(tmp_path) -> None:
    cfg = config(tmp_path, "max_inflight_bytes = 33554432\n"
                           "[kafka]\nidle_timeout_s = 5\nmax_connections_per_address = 3\n"
                           "max_frame_size = 1000\n"
                           "[mqtt]\nmax_connections = 7\nconnect_timeout = 2.0\n")
    kafka = cfg.connection_limits("kafka")
    assert kafka.idle_timeout_s == 5.0 and kafka.max_connections_per_address == 3
    assert kafka.frame_timeout_s == DOOR_LIMITS["kafka"].frame_timeout_s
    assert dict(cfg.options("kafka")) == {"max_frame_size": 1000}  # the door's own
    assert cfg.connection_limits("mqtt").max_connections == 7
    assert dict(cfg.options("mqtt")) == {"connect_timeout": 2.0}  # MQTT's own time rules
    assert cfg.max_inflight_bytes == 32 << 20


@pytest.mark.parametrize(("text", "match"), [
    ("[remoting]\nidle_timeout_s = -1\n", "must not be negative"),
    ("[kafka]\nmax_connections = \"many\"\n", "max_connections"),
    ("[kafka]\nframe_timeout_s = true\n", "a number"),
    ("max_inflight_bytes = 1000\n", "max_inflight_bytes"),
])
def test_bad_limits_stop_the_configuration(tmp_path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config(tmp_path, text)


def test_a_limit_a_door_does_not_have_stays_an_unknown_option_of_that_door(tmp_path) -> None:
    """MQTT's time rules are its own: idle_timeout_s is not one of its options, so it is
    left in the table for the MQTT door to refuse."""
    cfg = config(tmp_path, "[mqtt]\nidle_timeout_s = 5\n")
    assert dict(cfg.options("mqtt")) == {"idle_timeout_s": 5}
    assert cfg.connection_limits("mqtt") == DOOR_LIMITS["mqtt"]


def test_the_budget_comes_from_the_environment_too() -> None:
    cfg = load_config(None, env={"FERRYMQ_MAX_INFLIGHT_BYTES": str(64 << 20)})
    assert cfg.max_inflight_bytes == 64 << 20


def test_a_door_started_in_process_takes_limits_from_its_options() -> None:
    ctx = DoorContext(None, "127.0.0.1", 0, {"idle_timeout_s": 3.0}, ServerConfig())  # type: ignore[arg-type]
    sup = ctx.supervisor("remoting")
    assert sup.limits.idle_timeout_s == 3.0
    assert sup.limits.max_connections == DOOR_LIMITS["remoting"].max_connections
    assert ctx.budget is not None and sup.budget is ctx.budget
    assert ctx.supervisor("kafka").budget is ctx.budget  # one budget for all doors
