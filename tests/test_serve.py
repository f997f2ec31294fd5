"""`ferrymq serve` as an operator runs it: config sources, clean shutdown on signals."""

from __future__ import annotations

import os
import signal

import pytest
from ferrymq.gateways.config import ConfigError, load_config


def test_sigterm_shuts_down_cleanly(start_broker) -> None:
    b = start_broker()
    abort = b.data_dir / "store" / "abort"
    assert abort.exists(), "a running broker marks its store as in use"
    assert b.stop() == 0
    assert not abort.exists(), "a clean shutdown removes the abort marker"
    assert (b.data_dir / "store" / "checkpoint").exists()


def test_sigint_shuts_down_cleanly(start_broker) -> None:
    b = start_broker()
    b.proc.send_signal(signal.SIGINT)
    assert b.proc.wait(30) == 0
    assert not (b.data_dir / "store" / "abort").exists()


def test_second_broker_on_the_same_directory_is_refused(start_broker, tmp_path) -> None:
    start_broker(name="one")
    with pytest.raises(RuntimeError, match="another broker is using"):
        start_broker(name="two", data_dir=tmp_path / "one")


def test_flags_override_environment_override_file(tmp_path) -> None:
    conf = tmp_path / "ferrymq.toml"
    conf.write_text('data_dir = "from-file"\nflush = "sync"\nretention_hours = 5\n'
                    "[ports]\nkafka = 19092\nmqtt = 0\n[kafka]\nadvertised_listener = 'x:1'\n")
    cfg = load_config(str(conf), env={"FERRYMQ_DATA_DIR": "from-env", "FERRYMQ_HTTP_PORT": "18080"},
                      overrides={"data_dir": "from-flag", "segment_size": None})
    assert cfg.broker.data_dir == "from-flag"
    assert cfg.broker.flush == "sync"
    assert cfg.broker.retention_hours == 5.0
    assert cfg.port("kafka") == 19092
    assert cfg.port("mqtt") is None, "port 0 switches a door off"
    assert cfg.port("http") == 18080
    assert cfg.options("kafka") == {"advertised_listener": "x:1"}
    env_only = load_config(str(conf), env={"FERRYMQ_DATA_DIR": "from-env"})
    assert env_only.broker.data_dir == "from-env"


@pytest.mark.parametrize("text, message", [
    ("flush = 'sometimes'\n", "flush must be"),
    ("no_such_setting = 1\n", "unknown setting"),
    ("segment_size = 'big'\n", "segment_size"),
    ("[ports]\nkafka = 70000\n", "not a TCP port"),
    ("this is not toml", "config file"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, text, message) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(conf), env={})


def test_serve_reports_a_bad_config_without_a_traceback(tmp_path) -> None:
    import subprocess
    import sys
    conf = tmp_path / "bad.toml"
    conf.write_text("flush = 'sometimes'\n")
    out = subprocess.run([sys.executable, "-m", "ferrymq.gateways", "serve", "--config", str(conf)],
                         capture_output=True, text=True, timeout=30, env={**os.environ})
    assert out.returncode == 2
    assert "flush must be" in out.stderr and "Traceback" not in out.stderr
