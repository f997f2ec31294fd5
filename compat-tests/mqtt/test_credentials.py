"""paho-mqtt and mosquitto_pub/sub with a user name and password against FerryMQ's access
model (docs/security.md): a granted user publishes and subscribes; a wrong password is
refused at CONNECT (0x86 / 3.1.1 return code 4); a user without a grant gets 0x87."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_tools import tool


def _ferrymq(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "ferrymq.gateways", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def port(start_broker, tmp_path: Path) -> int:
    conf = tmp_path / "b.toml"
    ws = __import__("socket").socket()
    ws.bind(("127.0.0.1", 0))
    ws_port = ws.getsockname()[1]
    ws.close()
    conf.write_text(f"segment_size = 8388608\n[auth]\nenabled = true\n[mqtt]\nws_port = {ws_port}\n"
                    "sys_interval = 0.0\n")
    data = tmp_path / "broker"
    where = ("--config", str(conf), "--data-dir", str(data))
    _ferrymq("user", "add", "dev", "--new-password", "dev-pw", *where)
    _ferrymq("user", "add", "guest", "--new-password", "guest-pw", *where)
    _ferrymq("acl", "add", "--principal", "dev", "--topic", "home/dev/#", "--pattern", "mqtt",
             "--operation", "read", "--operation", "write", *where)
    b = start_broker("mqtt", extra_args=("--config", str(conf)), data_dir=data)
    return b.port("mqtt")


def _mosquitto(name: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(name), "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_clients_with_user_and_password(port: int, version: str) -> None:
    creds = ("-V", version, "-u", "dev", "-P", "dev-pw")
    assert _mosquitto("mosquitto_pub", port, *creds, "-t", "home/dev/t", "-m", "22", "-r",
                      "-q", "1").returncode == 0
    got = _mosquitto("mosquitto_sub", port, *creds, "-t", "home/dev/#", "-C", "1", "-W", "10")
    assert got.returncode == 0 and got.stdout.split() == ["22"], got.stderr
    wrong = _mosquitto("mosquitto_pub", port, "-V", version, "-u", "dev", "-P", "nope",
                       "-t", "home/dev/t", "-m", "x", "-q", "1")
    assert wrong.returncode != 0 and "assword" in wrong.stderr  # "Bad user name or password"
    guest = _mosquitto("mosquitto_sub", port, "-V", version, "-u", "guest", "-P", "guest-pw",
                       "-t", "home/dev/#", "-C", "1", "-W", "5")
    assert guest.returncode != 0 or not guest.stdout.strip(), "the guest reads nothing"


def test_paho_granted_and_refused(port: int) -> None:
    got: list[bytes] = []
    subscribed = threading.Event()
    arrived = threading.Event()
    granted: list[object] = []

    def on_subscribe(c, userdata, mid, reasons, props):  # type: ignore[no-untyped-def]
        granted.extend(reasons)
        subscribed.set()

    def on_message(c, userdata, msg):  # type: ignore[no-untyped-def]
        got.append(msg.payload)
        arrived.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-dev",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set("dev", "dev-pw")
    c.on_subscribe, c.on_message = on_subscribe, on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.subscribe([("home/dev/#", 1), ("home/other/#", 1)])
        assert subscribed.wait(10)
        assert [int(r.value) for r in granted] == [1, 0x87]
        c.publish("home/dev/x", b"hello", qos=1).wait_for_publish(10)
        assert arrived.wait(10) and got == [b"hello"]
    finally:
        c.loop_stop()
        c.disconnect()

    refused = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-bad",
                          protocol=mqtt.MQTTv5)
    refused.username_pw_set("dev", "wrong")
    done = threading.Event()
    codes: list[int] = []

    def on_connect(c, userdata, flags, reason, props):  # type: ignore[no-untyped-def]
        codes.append(int(reason.value))
        done.set()

    refused.on_connect = on_connect
    refused.connect("127.0.0.1", port)
    refused.loop_start()
    try:
        assert done.wait(10) and codes == [0x86]
    finally:
        refused.loop_stop()
