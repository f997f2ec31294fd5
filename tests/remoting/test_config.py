"""Which NameServers a broker registers with: flag, environment, TOML, else the embedded one."""

from __future__ import annotations

from ferrymq.gateways.config import load_config
from ferrymq.gateways.remoting import namesrv_addresses
from ferrymq.gateways.server import DoorContext


def ctx_for(cfg, bound):  # type: ignore[no-untyped-def]
    return DoorContext(None, cfg.host, 0, cfg.options("remoting"), cfg, bound)  # type: ignore[arg-type]


def test_namesrv_addresses_from_every_source(tmp_path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('namesrv_addr = "10.0.0.1:9876;10.0.0.2:9876"\n')
    from_file = load_config(str(conf), env={})
    assert namesrv_addresses(ctx_for(from_file, {})) == ["10.0.0.1:9876", "10.0.0.2:9876"]
    from_env = load_config(None, env={"FERRYMQ_NAMESRV_ADDR": "h:1"})
    assert namesrv_addresses(ctx_for(from_env, {"namesrv": 9876})) == ["h:1"]
    from_flag = load_config(str(conf), env={}, overrides={"namesrv_addr": "f:2"})
    assert namesrv_addresses(ctx_for(from_flag, {})) == ["f:2"]
    embedded = load_config(None, env={}, overrides={"host": "127.0.0.1"})
    assert namesrv_addresses(ctx_for(embedded, {"namesrv": 19876})) == ["127.0.0.1:19876"]
    assert namesrv_addresses(ctx_for(embedded, {})) == []
