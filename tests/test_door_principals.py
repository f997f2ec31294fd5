"""Each door carries its connection's principal into every Broker call, and answers a
refusal of the one access check with its own protocol's error.

- Kafka: anonymous with the client's address until SASL PLAIN names a user; then that
  user (TOPIC_AUTHORIZATION_FAILED when refused).
- HTTP: the bearer token's name when tokens are configured, else anonymous at the
  client's address (403 permission_denied when refused).
- Remoting: anonymous at the connection's peer address (NO_PERMISSION when refused).

In-process: each door's handlers driven directly, the broker's access check recorded
(access_helpers.py). The MQTT door joins when its rewrite lands."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio
from access_helpers import record
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core.access import (
    MECHANISM_BEARER,
    MECHANISM_SASL_PLAIN,
    READ,
    SYSTEM,
    TOPIC,
    WRITE,
    Principal,
    anonymous,
)
from ferrymq.gateways import http as http_door
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.kafka.groups import Coordinator
from ferrymq.gateways.kafka.handlers import (
    METADATA,
    PRODUCE,
    SASL_AUTHENTICATE,
    SASL_HANDSHAKE,
    DoorOptions,
    KafkaDoor,
    Session,
)
from ferrymq.gateways.kafka.producers import ProducerStates
from ferrymq.gateways.remoting.client_table import ClientTable
from ferrymq.gateways.remoting.processor import Processor
from ferrymq.gateways.server import DoorContext
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.kafka import records as kr
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import Header
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import headers as H


def _header(api: int, version: int) -> Header:
    return Header(api, version, 1, "test")


def _batch() -> bytes:
    return kr.encode_batch(0, [(1, b"k", b"v", [])])


async def _produce(door: KafkaDoor, s: Session, topic: str) -> int:
    R = schema.request_class(PRODUCE)
    resp = await door.produce(_header(PRODUCE, 8), R(acks=-1, timeout_ms=1000, topic_data=(
        R.TopicProduceData(name=topic, partition_data=(
            R.PartitionProduceData(index=0, records=_batch()),)),)), s)
    return resp.responses[0].partition_responses[0].error_code


def _config(tmp_path) -> BrokerConfig:  # type: ignore[no-untyped-def]
    return BrokerConfig(data_dir=str(tmp_path / "data"), segment_size=8 << 20,
                        cq_entries_per_file=1000, index_slots=1000, index_entries=4000)


@pytest.fixture
async def broker(tmp_path):  # type: ignore[no-untyped-def]
    async with Broker.open(_config(tmp_path)) as b:
        await b.create_topic("t", 1)
        yield b


# ---------------------------------------------------------------- Kafka

@pytest.fixture
def door(broker, tmp_path):  # type: ignore[no-untyped-def]
    return KafkaDoor(broker, DoorOptions(sasl_plain_users={"alice": "secret"}), 9092,
                     Coordinator(), ProducerStates(str(tmp_path / "kafka")))


async def test_an_anonymous_connection_calls_as_anonymous_at_its_address(door) -> None:
    rec = record(door.broker)
    s = Session(client_host="10.1.2.3", local_host="127.0.0.1")
    assert await _produce(door, s, "t") == ke.NONE
    assert rec.principals() == {anonymous("10.1.2.3")}
    assert (anonymous("10.1.2.3"), TOPIC, "t", WRITE) in rec.calls


async def test_a_sasl_user_is_the_principal_of_every_later_call(door) -> None:
    rec = record(door.broker)
    s = Session(client_host="10.1.2.3", local_host="127.0.0.1", authenticated=False)
    H = schema.request_class(SASL_HANDSHAKE)
    await door.sasl_handshake(_header(SASL_HANDSHAKE, 1), H(mechanism="PLAIN"), s)
    A = schema.request_class(SASL_AUTHENTICATE)
    resp = await door.sasl_authenticate(_header(SASL_AUTHENTICATE, 1),
                                        A(auth_bytes=b"\x00alice\x00secret"), s)
    assert resp.error_code == ke.NONE
    assert await _produce(door, s, "t") == ke.NONE
    M = schema.request_class(METADATA)
    await door.metadata(_header(METADATA, 8), M(topics=None, allow_auto_topic_creation=False,
                                                include_cluster_authorized_operations=False,
                                                include_topic_authorized_operations=False), s)
    alice = Principal("alice", MECHANISM_SASL_PLAIN, "10.1.2.3")
    assert rec.principals() == {alice}
    assert s.principal == alice


async def test_a_bad_password_leaves_the_connection_anonymous(door) -> None:
    s = Session(client_host="10.1.2.3", local_host="127.0.0.1", authenticated=False)
    assert not door.login_plain(s, b"\x00alice\x00wrong")
    assert s.principal == anonymous("10.1.2.3") and not s.authenticated


async def test_a_refused_produce_is_topic_authorization_failed(door) -> None:
    record(door.broker, lambda p, kind, name, op: op is WRITE)
    s = Session(client_host="10.1.2.3", local_host="127.0.0.1")
    assert await _produce(door, s, "t") == ke.TOPIC_AUTHORIZATION_FAILED
    assert door.broker.queue_bounds("t", 0) == (0, 0)


# ---------------------------------------------------------------- HTTP

async def _http(broker: Broker, options: dict, nursery: trio.Nursery) -> httpx.AsyncClient:
    ctx = DoorContext(broker, "127.0.0.1", 0, options, ServerConfig())
    port = await nursery.start(http_door.serve, ctx)
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)


async def test_http_calls_carry_the_bearer_tokens_name(broker) -> None:
    rec = record(broker)
    async with trio.open_nursery() as nursery:
        async with await _http(broker, {"auth_tokens": ["s3cret"]}, nursery) as client:
            r = await client.post("/v1/topics/t/messages", json={"body": "x"},
                                  headers={"authorization": "Bearer s3cret"})
            assert r.status_code == 201
            assert (await client.get("/healthz")).status_code == 200  # public: no principal
        nursery.cancel_scope.cancel()
    (p,) = rec.principals() - {SYSTEM}  # the console's history sampling is the door's own
    assert (p.name, p.mechanism) == ("token:" + hashlib.sha256(b"s3cret").hexdigest()[:12],
                                     MECHANISM_BEARER)
    assert p.peer is not None and p.peer.startswith("127.0.0.1:")
    assert "s3cret" not in repr(p)


async def test_http_without_tokens_calls_as_anonymous_at_the_clients_address(broker) -> None:
    rec = record(broker)
    async with trio.open_nursery() as nursery:
        async with await _http(broker, {}, nursery) as client:
            assert (await client.get("/v1/topics/t")).status_code == 200
        nursery.cancel_scope.cancel()
    (p,) = rec.principals() - {SYSTEM}  # the console's history sampling is the door's own
    assert p.anonymous and p.peer is not None and p.peer.startswith("127.0.0.1:")


async def test_http_answers_a_refusal_with_403(broker) -> None:
    record(broker, lambda p, kind, name, op: op is READ)
    await broker.put(Message("t", b"x"))
    async with trio.open_nursery() as nursery:
        async with await _http(broker, {}, nursery) as client:
            r = await client.get("/v1/topics/t/queues/0/messages", params={"offset": 0})
        nursery.cancel_scope.cancel()
    assert r.status_code == 403
    assert r.json()["code"] == "permission_denied"


# ---------------------------------------------------------------- remoting

class _Conn:
    """What the processor uses of a connection, for a request that needs no more."""

    peer = "10.9.8.7:4242"
    peer_bytes = b"\x0a\x09\x08\x07\x00\x00\x10\x92"
    suspended = trio.Semaphore(1)


def _send(topic: str) -> object:
    return request(RequestCode.SEND_MESSAGE_V2, 1, H.SendMessageRequestHeader(
        "pg", topic, queueId=0).to_ext_v2(), b"body")


async def test_remoting_calls_carry_the_connections_address(broker) -> None:
    rec = record(broker)
    p = Processor(broker, broker_addr="127.0.0.1:10911", client_table=ClientTable())
    conn = _Conn()
    await p.handle(conn, _send("t"))  # type: ignore[arg-type]
    assert rec.principals() == {anonymous("10.9.8.7:4242")}
    assert broker.queue_bounds("t", 0) == (0, 1)
    p.connection_closed(conn)  # type: ignore[arg-type]
    assert not p.ctx._principals


async def test_remoting_answers_a_refusal_with_no_permission(broker) -> None:
    record(broker, lambda p, kind, name, op: op is WRITE)
    p = Processor(broker, broker_addr="127.0.0.1:10911", client_table=ClientTable())
    resp = await p.handle(_Conn(), _send("t"))  # type: ignore[arg-type]
    assert resp.code == ResponseCode.NO_PERMISSION  # type: ignore[union-attr]
    assert broker.queue_bounds("t", 0) == (0, 0)
