"""The [mqtt] settings (gateways/mqtt/options.py)."""

from __future__ import annotations

import pytest
from ferrymq.gateways.mqtt.options import MqttOptions


def test_the_default_websocket_port_is_not_explicit() -> None:
    # Taken by another broker on the host, the default port only costs a warning;
    # a configured one must bind (docs/mqtt.md, "Configuration").
    assert not MqttOptions().ws_port_explicit
    assert not MqttOptions.from_table({}).ws_port_explicit
    assert MqttOptions.from_table({"ws_port": 9001}).ws_port_explicit


@pytest.mark.parametrize("table", [
    {"nope": 1}, {"max_inflight": 0}, {"overflow": "explode"}, {"ws_path": "mqtt"},
    {"max_queued": "many"},
])
def test_bad_settings_name_the_key(table) -> None:
    with pytest.raises(ValueError, match=r"\[mqtt\]"):
        MqttOptions.from_table(table)
