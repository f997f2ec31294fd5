"""Fixtures of the MQTT compat tests: a broker with the MQTT door (and a free WebSocket
port), and the command-line clients, which must be installed (scripts/test does)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mqtt_broker(start_broker: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    """``mqtt_broker()`` starts a broker; ``b.port("mqtt")``, ``b.ws_port``, ``b.restart()``."""

    def start(**options: Any) -> Any:
        options.setdefault("ws_port", _free_port())
        options.setdefault("sys_interval", 1.0)
        conf = tmp_path / "mqtt.toml"
        conf.write_text("[mqtt]\n" + "".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}\n".replace("'", '"')
            for k, v in options.items()))
        # 8 MiB CommitLog segments instead of the preallocated 1 GiB default.
        b = start_broker("mqtt", extra_args=("--config", str(conf), "--segment-size",
                                             str(8 << 20)))
        b.ws_port = options["ws_port"]
        return b

    return start


@pytest.fixture
def broker(mqtt_broker: Callable[..., Any]) -> Any:
    return mqtt_broker()
