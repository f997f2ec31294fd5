"""MQTT over TLS (the 8883 listener) and WebSocket over TLS (WSS) with real clients:
paho-mqtt (3.1.1 and 5.0), mosquitto_pub and mosquitto_sub with ``--cafile``. What goes in
over TLS comes out over plaintext TCP and the other way round: one broker, one hub.
Certificates are made at test time (trustme)."""

from __future__ import annotations

import queue
import shutil
import subprocess
import uuid

import paho.mqtt.client as mqtt
import pytest

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5


@pytest.fixture(scope="module")
def tls_broker(start_module_broker, tls_files, tmp_path_factory):
    conf = tmp_path_factory.mktemp("mqtt-tls") / "mqtt-tls.toml"
    return tls_files.start_tls_broker(start_module_broker, conf, "mqtt", name="mqtt-tls")[1]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian mosquitto-clients; scripts/test installs it)"
    return path


class Client:
    """A connected paho client (TLS when ``ca`` is given); messages land in a queue,
    SUBACKs and PUBACKs are waited for."""

    def __init__(self, port: int, version: int, ca: str | None = None, transport: str = "tcp",
                 cert: tuple[str, str] | None = None) -> None:
        self.got: queue.Queue = queue.Queue()
        self.acks: queue.Queue = queue.Queue()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"tls-{uuid.uuid4().hex[:8]}", protocol=version,
                             transport=transport)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if ca:
            self.c.tls_set(ca_certs=ca, certfile=cert[0] if cert else None,
                           keyfile=cert[1] if cert else None)
        connack: queue.Queue = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props=None: connack.put(rc)
        self.c.on_message = lambda c, u, m: self.got.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, props=None: self.acks.put(mid)
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        rc = connack.get(timeout=10)
        assert not rc.is_failure, rc

    def sub(self, topic: str, qos: int = 1) -> Client:
        result, mid = self.c.subscribe(topic, qos)
        assert result == 0 and self.acks.get(timeout=10) == mid
        return self

    def pub(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos, retain).wait_for_publish(10)

    def take(self, n: int) -> list[bytes]:
        return sorted(self.got.get(timeout=10).payload for _ in range(n))

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("version", [V311, V5])
def test_paho_over_tls_8883(tls_broker, tls_files, version) -> None:
    ca = str(tls_files.ca)
    sub = Client(tls_broker["mqtt-tls"], version, ca).sub("tls/#")
    plain = Client(tls_broker["mqtt"], version)
    Client(tls_broker["mqtt-tls"], version, ca).pub("tls/a", b"over tls")
    plain.pub("tls/b", b"over tcp")
    assert sub.take(2) == [b"over tcp", b"over tls"]
    sub.stop()
    plain.stop()


@pytest.mark.parametrize("version", [V311, V5])
def test_paho_over_wss(tls_broker, tls_files, version) -> None:
    ca = str(tls_files.ca)
    sub = Client(tls_broker["mqtt-wss"], version, ca, transport="websockets").sub("wss/#")
    Client(tls_broker["mqtt-wss"], version, ca, transport="websockets").pub("wss/a", b"over wss")
    Client(tls_broker["mqtt-ws"], version, transport="websockets").pub("wss/b", b"over ws")
    assert sub.take(2) == [b"over ws", b"over wss"]
    sub.stop()


def test_paho_with_a_client_certificate(tls_broker, tls_files) -> None:
    c = Client(tls_broker["mqtt-tls"], V5, str(tls_files.ca),
               cert=(str(tls_files.client_cert), str(tls_files.client_key))).sub("mtls/#")
    c.pub("mtls/x", b"mutual")
    assert c.take(1) == [b"mutual"]
    c.stop()


def test_paho_refuses_a_broker_its_ca_does_not_vouch_for(tls_broker, tls_files) -> None:
    with pytest.raises(OSError):  # ssl.SSLCertVerificationError is an OSError
        Client(tls_broker["mqtt-tls"], V311, str(tls_files.rogue_cert))


def test_mosquitto_pub_and_sub_with_cafile(tls_broker, tls_files) -> None:
    tls = ["-h", "127.0.0.1", "-p", str(tls_broker["mqtt-tls"]), "--cafile", str(tls_files.ca)]
    # Retained: the subscriber started after the publisher still gets it (no race).
    subprocess.run([tool("mosquitto_pub"), *tls, "-t", "mosq/tls", "-m", "hello tls", "-r",
                    "-q", "1"], check=True, timeout=20)
    out = subprocess.run([tool("mosquitto_sub"), *tls, "-t", "mosq/#", "-C", "1", "-v",
                          "-W", "10"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["mosq/tls hello tls"]
    # Without the CA, the broker's certificate is not trusted: nothing is sent.
    bad = subprocess.run([tool("mosquitto_pub"), "-h", "127.0.0.1", "-p",
                          str(tls_broker["mqtt-tls"]), "--cafile", str(tls_files.rogue_cert),
                          "-t", "mosq/tls", "-m", "x"], capture_output=True, timeout=20)
    assert bad.returncode != 0
