"""One convention for every codec in protocols/ (docs/architecture.md, "Codec errors and
NEED_DATA"): each error class derives from ``ProtocolError`` and says who broke the
protocol, and every ``next_*`` method says "need more bytes" with one sentinel."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import struct

import pytest
from ferrymq.protocols import errors, sentinels
from ferrymq.protocols.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ferrymq.protocols.http import h1
from ferrymq.protocols.kafka import connection as kafka_connection
from ferrymq.protocols.mqtt import codec as mqtt_codec
from ferrymq.protocols.mqtt.connection import ServerConnection as MqttConnection
from ferrymq.protocols.mqtt.packets import Connect
from ferrymq.protocols.remoting import FrameDecoder, encode, request
from ferrymq.protocols.sentinels import NEED_DATA

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _codec_modules() -> list[str]:
    out = []
    for path in sorted((ROOT / "protocols").rglob("*.py")):
        rel = path.relative_to(ROOT / "protocols").with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out.append(".".join(["ferrymq.protocols", *parts]))
    return out


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in _codec_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, BaseException) and obj.__module__ == name
                    and obj is not ProtocolError):  # the base alone has no side
                found.append(obj)
    return found


def test_the_codecs_define_error_classes() -> None:
    names = {cls.__name__ for cls in _exception_classes()}
    # the ones the issue names, so that an empty scan cannot pass the next test
    assert {"RemotingProtocolError", "HeaderError", "BodyError", "FrameError", "DecodeError",
            "RecordsError", "BatchHeaderError", "MalformedPacket", "ProtocolViolation",
            "HttpProtocolError", "RecordError", "LocalProtocolError"} <= names


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_codec_error_derives_from_the_base_and_says_its_side(cls: type) -> None:
    assert issubclass(cls, ProtocolError)
    assert cls.side in ("remote", "local")
    assert issubclass(cls, RemoteProtocolError) == (cls.side == "remote")
    assert issubclass(cls, LocalProtocolError) == (cls.side == "local")


def test_the_two_sides_are_exclusive() -> None:
    assert RemoteProtocolError.side == "remote" and LocalProtocolError.side == "local"
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert errors.ProtocolError is ProtocolError


def test_errors_that_were_value_errors_still_are() -> None:
    """Callers catch ValueError around these; the new base must not take that away."""
    from ferrymq.protocols import boundedjson, record
    from ferrymq.protocols.kafka import batch_header, records, schema
    from ferrymq.protocols.remoting import bodies, headers, pop
    for cls in (record.RecordError, record.RecordEncodeError, boundedjson.JsonLimitError,
                headers.HeaderError, pop.ExtraInfoError, bodies.BodyError,
                records.RecordsError, records.CorruptRecords, kafka_connection.FrameError,
                schema.DecodeError, batch_header.BatchHeaderError):
        assert issubclass(cls, ValueError), cls


def test_encoding_what_the_layout_cannot_hold_is_a_local_error() -> None:
    from ferrymq.protocols import record
    with pytest.raises(LocalProtocolError):
        record.encode_member(0, b"body", b"x" * (record.MAX_LONG_PROPERTIES_BYTES + 1), long=True)


def test_every_codec_uses_the_one_need_data_sentinel() -> None:
    assert h1.NEED_DATA is NEED_DATA
    assert kafka_connection.NEED_DATA is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA" and type(NEED_DATA) is sentinels.NeedData


def test_each_codec_says_need_data_until_its_unit_is_whole() -> None:
    # remoting
    frame = encode(request(10, 7, {"topic": "t"}))
    d = FrameDecoder()
    assert d.next_command() is NEED_DATA
    d.receive_data(frame[:5])
    assert d.next_command() is NEED_DATA
    d.receive_data(frame[5:])
    cmd = d.next_command()
    assert cmd is not NEED_DATA and cmd.opaque == 7
    assert d.next_command() is NEED_DATA
    # MQTT
    data = mqtt_codec.encode(Connect(client_id="c", version=4, keep_alive=30), 4)
    m = MqttConnection()
    assert m.next_event() is NEED_DATA
    m.receive_data(data[:-1])
    assert m.next_event() is NEED_DATA
    m.receive_data(data[-1:])
    assert isinstance(m.next_event(), Connect)
    assert m.next_event() is NEED_DATA
    # Kafka
    k = kafka_connection.ServerConnection({18: (0, 3)})
    assert k.next_event() is NEED_DATA
    k.receive_data(struct.pack(">i", 100))
    assert k.next_event() is NEED_DATA
    # HTTP/1.1
    p = h1.ServerConnection()
    p.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert p.next_event() is NEED_DATA
