"""The cross-door matrix (issue 13): every door x {anonymous, wrong password, a user without
a grant, a user with a grant} x {produce, consume, admin} gives the outcome the ACLs say,
the same on every door, each in its own protocol's words.

One broker with ``[auth] enabled`` and every door; its users, keys and rules made before
it starts on its data directory (the offline bootstrap ``ferrymq user``/``acl`` use):

- ``alice`` (granted): READ+WRITE on topic ``orders``, READ on group ``g-alice``, CREATE
  on topics prefixed ``adm-``;
- ``bob``: a valid user with no grant;
- ``admin``: a super user (the NameServer column: the cluster secret instead).

Outcomes: the granted user succeeds at all three; everyone else is refused. Refusals are
Kafka TOPIC/GROUP_AUTHORIZATION_FAILED and SASL_AUTHENTICATION_FAILED, MQTT 0x87 /
0x86 (CONNACK), HTTP 401 (anonymous, bad credentials) and 403 (a known user), RocketMQ
remoting NO_PERMISSION (16) and, for a bad signature, SYSTEM_ERROR with RocketMQ's
"check signature failed"."""

from __future__ import annotations

import base64
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from brokerproc import TEST_SEGMENT_SIZE, BrokerProcess
from ferrymq.clients.remoting import RemotingClient
from ferrymq.core import Broker, BrokerConfig
from ferrymq.core.access import CREATE, GROUP, LITERAL, PREFIXED, READ, SYSTEM, TOPIC, WRITE, Rule
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.kafka import records as kr
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import parse_response, request_bytes
from ferrymq.protocols.mqtt.constants import Reason
from ferrymq.protocols.mqtt.packets import Puback, Publish
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import bodies as B
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.scram import ScramClient

pytestmark = pytest.mark.timeout(240)

IDENTITIES = ("anonymous", "wrong_password", "no_grant", "granted")
OPS = ("produce", "consume", "admin")
CLUSTER_SECRET = "matrix-cluster-secret"


def _rule(who: str, kind, pattern, name: str, op) -> Rule:  # type: ignore[no-untyped-def]
    return Rule(f"User:{who}", kind, pattern, name, op, True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("matrix")
    data = root / "broker"
    conf = root / "auth.toml"
    conf.write_text(f'[auth]\nenabled = true\ncluster_secret = "{CLUSTER_SECRET}"\n'
                    "[mqtt]\nws_port = 0\nsys_interval = 0.0\n")
    keys: dict[str, Any] = {}

    async def bootstrap() -> None:
        cfg = BrokerConfig(data_dir=str(data), segment_size=TEST_SEGMENT_SIZE)
        async with Broker.open(cfg) as b:
            await b.put_user("admin", password="admin-pw", super_user=True, principal=SYSTEM)
            for u in ("alice", "bob"):
                await b.put_user(u, password=f"{u}-pw", principal=SYSTEM)
                keys[u] = {"key": await b.create_access_key(u, principal=SYSTEM),
                           "token": await b.create_token(u, principal=SYSTEM)}
            await b.create_topic("orders", 1, principal=SYSTEM)
            await b.add_acls([_rule("alice", TOPIC, LITERAL, "orders", READ),
                              _rule("alice", TOPIC, LITERAL, "orders", WRITE),
                              _rule("alice", GROUP, LITERAL, "g-alice", READ),
                              _rule("alice", TOPIC, PREFIXED, "adm-", CREATE)], principal=SYSTEM)

    trio.run(bootstrap)
    b = BrokerProcess(data, ("namesrv", "remoting", "kafka", "mqtt", "http"),
                      ("--config", str(conf)))
    b.start()
    try:
        yield {"broker": b, "keys": keys}
    finally:
        b.stop()


# ---------------------------------------------------------------- Kafka

class Kafka:
    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.corr = 0

    def call(self, api: int, version: int, body: Any) -> Any:
        self.corr += 1
        self.sock.sendall(request_bytes(api, version, self.corr, body, "matrix"))
        head = self._exact(4)
        if head is None:
            return None
        frame = self._exact(struct.unpack(">i", head)[0])
        return None if frame is None else parse_response(api, version, frame)[1]

    def _exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def login(self, mechanism: str, user: str, password: str) -> int:
        H_ = schema.request_class(17)
        assert self.call(17, 1, H_(mechanism=mechanism)).error_code == 0
        A = schema.request_class(36)
        if mechanism == "PLAIN":
            r = self.call(36, 1, A(auth_bytes=f"\0{user}\0{password}".encode()))
            return r.error_code
        c = ScramClient(mechanism, user, password)
        first = self.call(36, 1, A(auth_bytes=c.first()))
        if first.error_code:
            return first.error_code
        final = self.call(36, 1, A(auth_bytes=c.final(bytes(first.auth_bytes))))
        if final.error_code == 0:
            assert c.verify(bytes(final.auth_bytes)), "the server proved it knows the verifier"
        return final.error_code

    def close(self) -> None:
        self.sock.close()


def kafka_cell(b: BrokerProcess, ident: str, op: str) -> str:
    k = Kafka(b.address("kafka"))
    try:
        if ident == "wrong_password":
            return "auth_failed" if k.login("PLAIN", "alice", "nope") == \
                ke.SASL_AUTHENTICATION_FAILED else "?"
        if ident == "no_grant":
            assert k.login("SCRAM-SHA-512", "bob", "bob-pw") == 0
        elif ident == "granted":
            assert k.login("SCRAM-SHA-256", "alice", "alice-pw") == 0
        if op == "produce":
            R = schema.request_class(0)
            batch = kr.encode_batch(0, [(1, b"k", b"from-kafka", [])])
            resp = k.call(0, 8, R(acks=-1, timeout_ms=5000, topic_data=(R.TopicProduceData(
                name="orders", partition_data=(R.PartitionProduceData(index=0, records=batch),)),)))
            code = resp.responses[0].partition_responses[0].error_code
            return _kafka_outcome(code)
        if op == "consume":
            C = schema.request_class(8)  # OffsetCommit: the group and the topic
            resp = k.call(8, 2, C(group_id="g-alice", generation_id_or_member_epoch=-1,
                                  member_id="",
                                  retention_time_ms=-1, topics=(C.OffsetCommitRequestTopic(
                                      name="orders", partitions=(C.OffsetCommitRequestPartition(
                                          partition_index=0, committed_offset=0,
                                          committed_metadata=""),)),)))
            code = resp.topics[0].partitions[0].error_code
            if code:
                return _kafka_outcome(code)
            F = schema.request_class(1)
            part = F.FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20)
            resp = k.call(1, 11, F(replica_id=-1, max_wait_ms=0, min_bytes=1, max_bytes=1 << 20,
                                   topics=(F.FetchTopic(topic="orders", partitions=(part,)),)))
            return _kafka_outcome(resp.responses[0].partitions[0].error_code)
        T = schema.request_class(19)
        resp = k.call(19, 4, T(topics=(T.CreatableTopic(name=f"adm-kafka-{ident}",
                                                         num_partitions=1, replication_factor=1),),
                               timeout_ms=5000))
        return _kafka_outcome(resp.topics[0].error_code)
    finally:
        k.close()


def _kafka_outcome(code: int) -> str:
    return {ke.NONE: "ok", ke.TOPIC_AUTHORIZATION_FAILED: "denied",
            ke.GROUP_AUTHORIZATION_FAILED: "denied",
            ke.CLUSTER_AUTHORIZATION_FAILED: "denied"}.get(code, f"kafka:{code}")


# ---------------------------------------------------------------- MQTT

def mqtt_cell(b: BrokerProcess, ident: str, op: str) -> str | None:
    from rawclient import RawClient

    if op == "admin":
        return None  # MQTT has no admin requests
    c = RawClient(b.port("mqtt"), 5, timeout=20)
    try:
        creds: dict[str, Any] = {
            "anonymous": {}, "wrong_password": {"username": "alice", "password": b"nope"},
            "no_grant": {"username": "bob", "password": b"bob-pw"},
            "granted": {"username": "alice", "password": b"alice-pw"}}[ident]
        ack = c.connect(f"m-{ident}-{op}", **creds)
        if ack.reason == Reason.BAD_USERNAME_OR_PASSWORD:
            return "auth_failed"
        assert ack.reason == 0, ack
        if op == "produce":
            got = c.publish("orders/mqtt", b"from-mqtt", 1)
            assert isinstance(got, Puback)
            return "ok" if got.reason == 0 else (
                "denied" if got.reason == Reason.NOT_AUTHORIZED else f"mqtt:{got.reason}")
        sub = c.subscribe("orders/#", qos=1)
        if sub.reasons != (1,):
            return "denied" if sub.reasons == (Reason.NOT_AUTHORIZED,) else f"mqtt:{sub.reasons}"
        # Granted: a message published now arrives.
        pub = RawClient(b.port("mqtt"), 5, timeout=20)
        pub.connect(f"p-{ident}", username="alice", password=b"alice-pw")
        assert pub.publish("orders/mqtt", b"live", 1) == Puback(1)
        pub.close()
        msgs = c.messages(1, timeout=20)
        return "ok" if isinstance(msgs[0], Publish) else "?"
    finally:
        c.close()


# ---------------------------------------------------------------- HTTP

def http_cell(b: BrokerProcess, ident: str, op: str, keys: dict[str, Any]) -> str:
    headers: dict[str, str] = {}
    if ident == "wrong_password":
        headers["Authorization"] = "Basic " + base64.b64encode(b"alice:nope").decode()
    elif ident == "no_grant":
        headers["Authorization"] = "Bearer " + keys["bob"]["token"]
    elif ident == "granted":
        if op == "consume":
            headers["Authorization"] = "Bearer " + keys["alice"]["token"]
        else:
            headers["Authorization"] = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
    with httpx.Client(base_url=f"http://{b.address('http')}", headers=headers,
                      timeout=20) as h:
        if op == "produce":
            r = h.post("/v1/topics/orders/messages", json={"body": "from-http"})
        elif op == "consume":
            r = h.get("/v1/topics/orders/messages", params={"group": "g-alice", "wait": 0})
        else:
            r = h.post("/v1/topics", json={"name": f"adm-http-{ident.replace('_', '-')}"})
    if r.status_code in (200, 201):
        return "ok"
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    if r.status_code == 401:
        assert "Bearer" in r.headers.get("www-authenticate", "")
        return "auth_failed" if ident == "wrong_password" else "denied"
    return "denied" if r.status_code == 403 else f"http:{r.status_code}"


# ---------------------------------------------------------------- RocketMQ remoting

def remoting_cell(b: BrokerProcess, ident: str, op: str, keys: dict[str, Any]) -> str:
    creds = None
    if ident == "wrong_password":
        creds = (keys["alice"]["key"][0], "not-the-secret")
    elif ident in ("no_grant", "granted"):
        creds = keys["bob" if ident == "no_grant" else "alice"]["key"]
    if op == "produce":
        cmd = request(RequestCode.SEND_MESSAGE_V2, 0, H.SendMessageRequestHeader(
            "pg", "orders", queueId=0, bornTimestamp=1).to_ext_v2(), b"from-remoting")
    elif op == "consume":
        cmd = request(RequestCode.PULL_MESSAGE, 0, H.PullMessageRequestHeader(
            "g-alice", "orders", 0, 0, 32, 0, 0, 0, None, 0, "TAG").to_ext())
    else:
        cmd = request(RequestCode.UPDATE_AND_CREATE_TOPIC, 0, H.CreateTopicRequestHeader(
            f"adm-remoting-{ident.replace('_', '-')}", "TBW102", 1, 1, 6).to_ext())

    async def go() -> Any:
        async with RemotingClient(credentials=creds) as rc:
            return await rc.invoke(b.address("remoting"), cmd, 20)

    resp = trio.run(go)
    if resp.code in (ResponseCode.SUCCESS, ResponseCode.PULL_NOT_FOUND,
                     ResponseCode.PULL_OFFSET_MOVED, ResponseCode.PULL_RETRY_IMMEDIATELY):
        return "ok"
    if resp.code == ResponseCode.NO_PERMISSION:
        return "denied"
    if resp.code == ResponseCode.SYSTEM_ERROR and "signature" in (resp.remark or ""):
        return "auth_failed"
    return f"remoting:{resp.code}:{resp.remark}"


# ---------------------------------------------------------------- the matrix

EXPECTED = {"anonymous": "denied", "wrong_password": "auth_failed", "no_grant": "denied",
            "granted": "ok"}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("ident", IDENTITIES)
def test_every_door_gives_the_outcome_the_acls_say(world, ident: str, op: str) -> None:
    b, keys = world["broker"], world["keys"]
    got = {"kafka": kafka_cell(b, ident, op), "mqtt": mqtt_cell(b, ident, op),
           "http": http_cell(b, ident, op, keys), "remoting": remoting_cell(b, ident, op, keys)}
    want = {door: EXPECTED[ident] for door, v in got.items() if v is not None}
    assert {d: v for d, v in got.items() if v is not None} == want


def test_the_nameserver_takes_route_changes_only_from_the_cluster(world) -> None:
    b = world["broker"]
    hdr = H.RegisterBrokerRequestHeader("intruder", "10.0.0.1:10911", "DefaultCluster",
                                        haServerAddr="", brokerId=0).to_ext()
    body = B.RegisterBrokerBody((), 1).encode()

    async def register(creds: tuple[str, str] | None) -> int:
        async with RemotingClient(credentials=creds) as rc:
            r = await rc.invoke(b.address("namesrv"), request(RequestCode.REGISTER_BROKER, 0,
                                                              hdr, body), 20)
            return r.code

    assert trio.run(register, None) == ResponseCode.NO_PERMISSION
    assert trio.run(register, ("ferrymq-cluster", "guess")) == ResponseCode.NO_PERMISSION
    assert trio.run(register, ("ferrymq-cluster", CLUSTER_SECRET)) == ResponseCode.SUCCESS
    # The broker itself registered with the secret: the routes know it.
    async def route() -> Any:
        async with RemotingClient() as rc:
            return await rc.invoke(b.address("namesrv"), request(
                RequestCode.GET_ROUTEINFO_BY_TOPIC, 0, {"topic": "orders"}), 20)
    assert trio.run(route).code == ResponseCode.SUCCESS


def test_the_finding_anonymous_produce_through_the_nameserver_is_refused(world) -> None:
    """Issue 13: `ferrymq produce secret x` through the NameServer succeeded with every auth
    option on, and a raw PULL_MESSAGE read it back. Now both are refused; with a user's
    access key (FERRYMQ_ACCESS_KEY) the same command works where the ACLs allow it."""
    import os
    import subprocess
    import sys

    b, keys = world["broker"], world["keys"]
    base = [sys.executable, "-m", "ferrymq.gateways", "produce", "-n", b.address("namesrv")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMQ_")}
    anon = subprocess.run([*base, "orders", "x"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert anon.returncode != 0, anon.stdout
    ak, sk = keys["alice"]["key"]
    ok = subprocess.run([*base, "orders", "x"], capture_output=True, text=True, timeout=60,
                        env={**env, "FERRYMQ_ACCESS_KEY": ak, "FERRYMQ_SECRET_KEY": sk})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["topic"] == "orders"
    assert remoting_cell(b, "anonymous", "consume", keys) == "denied"


# ---------------------------------------------------------------- garbage at the new entry points

@pytest.mark.parametrize("token", [b"", b"\xff\xfe", b"n,,n=alice", b"p=x,,n=a,r=b", b"x" * 5000])
def test_garbage_scram_tokens_fail_authentication_and_close(world, token: bytes) -> None:
    b = world["broker"]
    k = Kafka(b.address("kafka"))
    try:
        H_ = schema.request_class(17)
        assert k.call(17, 1, H_(mechanism="SCRAM-SHA-512")).error_code == 0
        A = schema.request_class(36)
        r = k.call(36, 1, A(auth_bytes=token))
        assert r.error_code == ke.SASL_AUTHENTICATION_FAILED
        assert k.call(18, 0, schema.request_class(18)()) is None, "closed after the failure"
    finally:
        k.close()
    assert kafka_cell(b, "granted", "produce") == "ok"  # the door still serves others


def test_garbage_raw_sasl_v0_token_closes_the_connection(world) -> None:
    b = world["broker"]
    k = Kafka(b.address("kafka"))
    try:
        assert k.call(17, 0, schema.request_class(17)(mechanism="SCRAM-SHA-256")).error_code == 0
        k.sock.sendall(struct.pack(">i", 5) + b"\x00\x01garbage"[:5])
        assert k._exact(4) is None
    finally:
        k.close()


@pytest.mark.parametrize("auth", ["Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                                  "Bearer", "Bearer nope", "Digest x=y", "Basic"])
def test_garbage_http_credentials_are_401_problems(world, auth: str) -> None:
    b = world["broker"]
    r = httpx.get(f"http://{b.address('http')}/v1/topics", headers={"Authorization": auth},
                  timeout=20)
    assert r.status_code == 401 and r.headers["content-type"].startswith(
        "application/problem+json")


@pytest.mark.parametrize("method,path,body", [
    ("PUT", "/v1/users/x", b"[1]"), ("PUT", "/v1/users/x", b'{"password": 5}'),
    ("PUT", "/v1/users/x", b'{"nope": true}'), ("POST", "/v1/acls", b'{"rules": []}'),
    ("POST", "/v1/acls", b'{"rules": [{"principal": "alice"}]}'),
    ("POST", "/v1/acls", b'{"rules": [{"principal": "User:a", "resource_type": "topic", '
                         b'"pattern_type": "mqtt", "resource": "a/#/b", "operation": "read"}]}'),
    ("POST", "/v1/acls/delete", b"not json"), ("POST", "/v1/users/x/tokens", b'{"label": 1}'),
])
def test_garbage_admin_bodies_are_400_problems(world, method: str, path: str,
                                               body: bytes) -> None:
    b = world["broker"]
    r = httpx.request(method, f"http://{b.address('http')}{path}", content=body, timeout=20,
                      headers={"Content-Type": "application/json", "Authorization": "Basic "
                               + base64.b64encode(b"admin:admin-pw").decode()})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("fields", [
    {"AccessKey": "nobody", "Signature": "x"}, {"Signature": "x"}, {"AccessKey": ""},
    {"AccessKey": "k", "Signature": ""},
])
def test_garbage_remoting_signatures_are_the_signature_error(world, fields: dict) -> None:
    b = world["broker"]

    async def go() -> Any:
        async with RemotingClient() as rc:
            return await rc.invoke(b.address("remoting"), request(
                RequestCode.GET_BROKER_RUNTIME_INFO, 0, fields), 20)

    resp = trio.run(go)
    assert resp.code == ResponseCode.SYSTEM_ERROR and "signature" in (resp.remark or "")
