"""Fixtures of the MQTT door's tests: brokers started with an [mqtt] table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rawclient import free_port

# A broker preallocates its CommitLog segment: 1 GiB by default, 8 MiB here (the
# 4 MiB maximum message plus room), so the suite does not need a disk per broker.
SMALL_SEGMENTS = ("--segment-size", str(8 << 20))


@pytest.fixture
def mqtt_broker(start_broker: Callable[..., Any], tmp_path: Path
                ) -> Callable[..., Any]:
    """``mqtt_broker(max_inflight=4)`` starts a broker whose [mqtt] table holds those
    settings (plus a free WebSocket port); ``.port("mqtt")``, ``.ws_port``."""
    count = [0]

    def start(name: str | None = None, doors: tuple[str, ...] = ("mqtt",),
              **options: Any) -> Any:
        count[0] += 1
        name = name or f"mqtt{count[0]}"
        options.setdefault("ws_port", free_port())
        options.setdefault("sys_interval", 0.2)
        conf = tmp_path / f"{name}.toml"
        lines = ["[mqtt]"]
        for k, v in options.items():
            lines.append(f"{k} = {v!r}" if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
        conf.write_text("\n".join(lines).replace("'", '"') + "\n")
        b = start_broker(*doors, extra_args=("--config", str(conf), *SMALL_SEGMENTS), name=name)
        b.ws_port = options["ws_port"]  # type: ignore[attr-defined]
        return b

    return start

