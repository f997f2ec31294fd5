"""mosquitto_pub and mosquitto_sub (Debian mosquitto-clients) against FerryMQ."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from mqtt_tools import tool

# -d makes mosquitto_sub print its protocol trace on stdout: what a test waits on
# (SUBACK, CONNACK) instead of sleeping, and what output() leaves out.
_TRACE = re.compile(r"^(Client \S+ (sending|received) |Subscribed \(mid)")


def wait_for_trace(p: subprocess.Popen, *events: str) -> None:
    """Read ``p``'s trace until it has received one of ``events`` (e.g. "SUBACK"). Byte
    by byte from the pipe: a buffered read would take lines that communicate() must see."""
    assert p.stdout is not None
    fd, line = p.stdout.fileno(), b""
    while chunk := os.read(fd, 1):
        line += chunk
        if chunk == b"\n":
            if any(f"received {event}".encode() in line for event in events):
                return
            line = b""
    raise AssertionError(f"mosquitto_sub ended before {events}: {p.communicate()[1]}")


def sub_process(port: int, *args: str) -> subprocess.Popen:
    # stdbuf -oL: line-buffered, so each trace line arrives as it is printed
    p = subprocess.Popen([tool("stdbuf"), "-oL", tool("mosquitto_sub"), "-h", "127.0.0.1",
                          "-p", str(port), "-d", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # subscribed; a resumed session may deliver what it kept before the SUBACK
    wait_for_trace(p, "SUBACK", "PUBLISH")
    return p


def pub(port: int, *args: str) -> None:
    subprocess.run([tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), *args],
                   check=True, timeout=10)


def output(p: subprocess.Popen) -> list[str]:
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    return [line for line in out.splitlines() if not _TRACE.match(line)]


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_pub_sub_round_trip(broker, version, qos) -> None:
    port = broker.port("mqtt")
    s = sub_process(port, "-V", version, "-t", "m/#", "-q", qos, "-C", "2", "-v", "-W", "8")
    pub(port, "-V", version, "-t", "m/a", "-q", qos, "-m", f"hello {qos}")
    pub(port, "-V", version, "-t", "m/b/c", "-q", qos, "-m", "second")
    # Two topics (two queues) from two publisher processes: no order between them.
    assert sorted(output(s)) == [f"m/a hello {qos}", "m/b/c second"]


def test_retained_message(broker) -> None:
    port = broker.port("mqtt")
    pub(port, "-t", "cfg/rate", "-r", "-q", "1", "-m", "10Hz")
    s = sub_process(port, "-t", "cfg/#", "-C", "1", "-F", "%t %p %r", "-W", "5")
    assert output(s) == ["cfg/rate 10Hz 1"]
    pub(port, "-t", "cfg/rate", "-r", "-q", "1", "-n")  # empty retained: delete
    s = sub_process(port, "-t", "cfg/#", "-C", "1", "-W", "1")
    s.communicate(timeout=10)
    assert s.returncode == 27  # mosquitto_sub's "timed out": nothing retained any more


def test_will_message(broker) -> None:
    port = broker.port("mqtt")
    s = sub_process(port, "-t", "wills/#", "-C", "1", "-v", "-W", "8")
    dev = sub_process(port, "-t", "x", "--will-topic", "wills/dev", "--will-payload", "gone",
                      "--will-qos", "1", "-i", "will-dev")  # its will is stored by now
    dev.kill()  # SIGKILL: no DISCONNECT
    dev.wait()
    assert output(s) == ["wills/dev gone"]


def test_mqtt5_user_properties_and_content_type(broker) -> None:
    port = broker.port("mqtt")
    s = sub_process(port, "-V", "mqttv5", "-t", "p/#", "-C", "1", "-F", "%t %p %C %P", "-W", "8")
    pub(port, "-V", "mqttv5", "-t", "p/x", "-m", "body", "-D", "publish", "content-type",
        "text/plain", "-D", "publish", "user-property", "site", "north")
    assert output(s) == ["p/x body text/plain site:north"]


def test_persistent_session_with_clean_session_off(broker) -> None:
    port = broker.port("mqtt")
    s = sub_process(port, "-t", "q/#", "-q", "1", "-c", "-i", "mosq-persist", "-C", "1",
                    "-W", "2")
    s.kill()
    s.wait()
    pub(port, "-t", "q/1", "-q", "1", "-m", "offline message")
    s = sub_process(port, "-t", "q/#", "-q", "1", "-c", "-i", "mosq-persist", "-C", "1",
                    "-W", "8")
    assert output(s) == ["offline message"]
