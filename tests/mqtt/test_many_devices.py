"""5,000 MQTT devices, each publishing to its own first-level topic (`dev<N>/temp`, one
broker topic each), through a broker under `ulimit -n 1024`: about 450 such devices used
to wedge it (every queue's files held descriptors for good; then accept, checkpoints and
publishes failed with EMFILE)."""

from __future__ import annotations

import os

import httpx
from ferrymq.protocols.mqtt.packets import Puback
from rawclient import RawClient

NOFILE = (1024, 1024)
DEVICES = 5000
WAVE = 250
"""Devices connected at once: their sockets and the store's files share the 1,024."""


def test_5000_devices_on_their_own_topics_under_ulimit_1024(start_broker, tmp_path) -> None:
    conf = tmp_path / "b.toml"
    conf.write_text("cq_entries_per_file = 1000\nindex_slots = 1000\nindex_entries = 4000\n"
                    "[mqtt]\nws_port = 0\nsys_interval = 0.0\n")
    b = start_broker("mqtt", "http", nofile=NOFILE, extra_args=("--config", str(conf)))
    port = b.port("mqtt")
    watcher = RawClient(port, 4, timeout=30)
    watcher.connect("watcher")
    watcher.subscribe("+/temp", qos=1)
    got: dict[str, bytes] = {}
    most = 0
    for first in range(0, DEVICES, WAVE):
        wave = []
        for n in range(first, first + WAVE):
            c = RawClient(port, 4, timeout=30)
            assert c.connect(f"dev{n}").reason == 0
            ack = c.publish(f"dev{n}/temp", b"%d" % n, 1)
            assert isinstance(ack, Puback), (n, ack)
            wave.append(c)
        most = max(most, len(os.listdir(f"/proc/{b.proc.pid}/fd")))
        got.update((p.topic, p.payload) for p in watcher.messages(WAVE, timeout=60))
        for c in wave:
            c.close()
    watcher.close()
    assert got == {f"dev{n}/temp": b"%d" % n for n in range(DEVICES)}
    assert most < NOFILE[0], "sockets and store files within the limit"
    late = RawClient(port, 4)  # still accepting, still storing
    assert late.connect("late").reason == 0
    assert isinstance(late.publish("late/temp", b"x", 1), Puback)
    late.close()
    metrics = httpx.get(f"http://{b.address('http')}/metrics", timeout=30).text
    assert 'ferrymq_store_file_evictions_total{kind="consumequeue"}' in metrics
    assert "Too many open files" not in b.log() and "level=error" not in b.log()
