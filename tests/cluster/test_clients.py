"""Clients follow the master (docs/cluster.md, "Clients follow the master"): NameServer routes
and Kafka Metadata name each group's current master; the native client and confluent-kafka
move on after a failover without losing an acknowledged message.

Real etcd, a NameServer process and broker processes on ephemeral ports (harness.py);
waits are on conditions."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import trio
from ferrymq.clients.consumer import PushConsumer
from ferrymq.clients.message import Message
from ferrymq.clients.producer import Producer
from ferrymq.clients.remoting import ClientError, RemotingClient
from ferrymq.gateways.namesrv.routes import RouteTable
from ferrymq.gateways.replication.view import ClusterView, group_node_id, member_node_id, slave_broker_id
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import bodies as B
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting.messages import decode_messages
from harness import BrokerProcess, Group, pull_request, read_queue
from history import History

DOORS = ("remoting", "kafka")


def topic_data(name: str) -> B.TopicConfigData:
    return B.TopicConfigData(name, 4, 4, 6, 0, False)


def test_an_ended_life_unregistering_late_leaves_the_new_registration() -> None:
    """b, a slave (id 7), is elected: its master life registers as brokerId 0 at the
    same address, and the slave life's unregistration, sent on its way out, may arrive
    after that — it removes nothing it does not name."""
    table = RouteTable()
    table.register("c", "g1", 7, "b:1", (topic_data("T"),), now=0)
    table.register("c", "g1", 0, "b:1", (topic_data("T"),), now=1, epoch=2)
    assert not table.unregister("b:1", "g1", 7)
    assert table.route("T").brokerDatas[0].brokerAddrs == {0: "b:1"}  # type: ignore
    assert table.unregister("b:1", "g1", 0)
    assert table.route("T") is None


def test_a_new_master_displaces_the_old_one_in_the_nameserver_routes() -> None:
    table = RouteTable()
    table.register("c", "g1", 0, "a:1", (topic_data("T"),), now=0)
    table.register("c", "g1", 7, "b:1", (topic_data("T"),), now=0)
    route = table.route("T")
    assert route is not None and len(route.queueDatas) == 1  # only the master's queues
    assert route.brokerDatas[0].brokerAddrs == {0: "a:1", 7: "b:1"}
    # a dies without unregistering; b, elected, registers as brokerId 0.
    table.register("c", "g1", 0, "b:1", (topic_data("T"),), now=1)
    route = table.route("T")
    assert route is not None and len(route.queueDatas) == 1
    assert route.brokerDatas[0].brokerAddrs == {0: "b:1"}
    # a restarts as a slave of b.
    table.register("c", "g1", 3, "a:1", (topic_data("T"),), now=2)
    assert table.route("T").brokerDatas[0].brokerAddrs == {0: "b:1", 3: "a:1"}  # type: ignore
    # A master of an older epoch (cut off, re-registering before its demotion) does not
    # take the route back from the later epoch's master; a single broker (epoch 0) would.
    table.register("c", "g1", 0, "b:1", (topic_data("T"),), now=3, epoch=5)
    assert not table.register("c", "g1", 0, "a:1", (topic_data("T"),), now=3, epoch=4)
    assert table.route("T").brokerDatas[0].brokerAddrs == {0: "b:1", 3: "a:1"}  # type: ignore
    assert table.register("c", "g1", 0, "a:1", (topic_data("T"),), now=3, epoch=6)
    assert table.route("T").brokerDatas[0].brokerAddrs == {0: "a:1"}  # type: ignore
    # Another group's master is not displaced.
    table.register("c", "g2", 0, "x:1", (topic_data("T"),), now=2)
    assert len(table.route("T").queueDatas) == 2  # type: ignore[union-attr]


def test_broker_ids_of_groups_and_slaves_are_stable_and_never_the_masters() -> None:
    assert slave_broker_id("2") == 2
    assert slave_broker_id("0") != 0 and slave_broker_id("b") != 0
    assert slave_broker_id("b") == slave_broker_id("b") != slave_broker_id("c")
    assert group_node_id("g1") == group_node_id("g1") > 0
    assert member_node_id("g1", "a") == member_node_id("g1", "a") > 0
    assert len({member_node_id("g1", "a"), member_node_id("g1", "b"),
                member_node_id("g2", "a")}) == 3
    view = ClusterView("/p", "g1")
    view.load([("/p/groups/g1/state", b'{"epoch": 3, "master": "a", "isr": ["a", "b"]}'),
               ("/p/groups/g1/leader", b'{"node": "a", "epoch": 3}'),
               ("/p/groups/g1/members/a", b'{"host": "h", "ports": {"kafka": 9}, "role": "master"}'),
               ("/p/groups/g1/members/b", b"not json"),
               ("/p/groups/g2/state", b'{"epoch": 1, "master": "x", "isr": ["x"]}')])
    own = view.own()
    assert (own.epoch, own.master, own.isr) == (3, "a", ("a", "b"))
    assert own.master_member() is not None and own.master_member().ports == {"kafka": 9}
    assert [g.name for g, _ in view.masters()] == ["g1"]  # g2's master has no member key


async def nameserver(tmp: Path) -> BrokerProcess:
    ns = BrokerProcess(tmp / "ns", ("namesrv",))
    await trio.to_thread.run_sync(ns.start)
    return ns


async def route_addrs(rc: RemotingClient, ns: str, topic: str) -> dict[int, str]:
    r = await rc.invoke(ns, request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 0, {"topic": topic}))
    if r.code != ResponseCode.SUCCESS:
        return {}
    return dict(B.TopicRouteData.decode(r.body).brokerDatas[0].brokerAddrs)


async def wait_route(rc: RemotingClient, ns: str, topic: str, want: dict[int, str]) -> None:
    with trio.fail_after(45):
        while await route_addrs(rc, ns, topic) != want:
            await trio.sleep(0.05)


def kafka_metadata(bootstrap: str, topic: str) -> dict[str, object]:
    """Partition 0's leader and replicas, and every broker's port, from the Metadata
    of one node (through confluent-kafka)."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    p = md.topics[topic].partitions[0]
    return {"leader": p.leader, "replicas": sorted(p.replicas), "isr": sorted(p.isrs),
            "brokers": {i: b.port for i, b in md.brokers.items()}}


def leader_of(bootstrap: str, topic: str) -> object:
    """Partition 0's leader in one node's Metadata; None while the topic is unknown there."""
    try:
        return kafka_metadata(bootstrap, topic)["leader"]
    except KeyError:
        return None


async def test_routes_and_kafka_metadata_name_the_current_master(make_group, tmp_path) -> None:
    ns = await nameserver(tmp_path)
    try:
        g: Group = make_group()
        a = await g.node("a", DOORS, namesrv=ns.address("namesrv")).start()
        await a.wait_role("master")
        b = await g.node("b", DOORS, namesrv=ns.address("namesrv")).start()
        await b.wait_role("slave")
        async with RemotingClient() as rc:
            async with Producer(ns.address("namesrv")) as p:
                await p.send(Message("R", b"x"))
            await wait_route(rc, ns.address("namesrv"), "R",
                             {0: a.remoting, slave_broker_id("b"): b.remoting})
            # A registration whose epoch is garbage gets the protocol's own error.
            bad = H.RegisterBrokerRequestHeader("g1", "127.0.0.1:1", g.cluster_name, "", 0
                                                ).to_ext() | {"ferryEpoch": "x"}
            r = await rc.invoke(ns.address("namesrv"), request(
                RequestCode.REGISTER_BROKER, 0, bad, B.RegisterBrokerBody((), 1).encode()))
            assert r.code == ResponseCode.INVALID_PARAMETER and "ferryEpoch" in (r.remark or "")
            await wait_route(rc, ns.address("namesrv"), "R",
                             {0: a.remoting, slave_broker_id("b"): b.remoting})
            ida, idb = member_node_id("g1", "a"), member_node_id("g1", "b")
            # Every member is a Kafka broker of its own; the slave's Metadata names the
            # master leader, and lists the slave too: a client that loses the master
            # still knows whom to ask.
            for node in (a, b):
                md = await trio.to_thread.run_sync(
                    kafka_metadata, node.process.address("kafka"), "R")
                assert md["leader"] == ida and md["replicas"] == sorted([ida, idb]), md
                assert md["brokers"] == {ida: a.process.port("kafka"),
                                         idb: b.process.port("kafka")}, md
            # b must be in sync before a dies, or nobody may be elected (unclean
            # election is off); on a loaded machine it can still be catching up here.
            await g.wait_isr({"a", "b"})
            life = b.info()["life"]
            a.kill()
            await b.wait_role("master", life_after=life)
            # The new master registered as brokerId 0 and displaced the dead one at once.
            await wait_route(rc, ns.address("namesrv"), "R", {0: b.remoting})
            # The leadership moved to b's id; a, dead, leaves the broker list with its
            # lease.
            with trio.fail_after(45):
                while (md := await trio.to_thread.run_sync(
                        kafka_metadata, b.process.address("kafka"), "R"))["brokers"] != {
                        idb: b.process.port("kafka")}:
                    await trio.sleep(0.1)
            assert md["leader"] == idb, md
            await a.start()
            await a.wait_role("slave")
            await wait_route(rc, ns.address("namesrv"), "R",
                             {0: b.remoting, slave_broker_id("a"): a.remoting})
    finally:
        ns.kill()


async def test_a_consumer_far_behind_is_sent_to_a_slave_and_back_when_caught_up(
        make_group, tmp_path) -> None:
    """slave_read_enable: the master's pull answer suggests an in-sync slave's brokerId to
    a consumer more than slave_read_lag_messages behind (RocketMQ's suggestWhichBrokerId);
    the client's next pulls go there; caught up, the slave sends it back to the master."""
    from ferrymq.clients.consumer import pull
    from ferrymq.clients.instance import ClientInstance

    ns = await nameserver(tmp_path)
    try:
        g: Group = make_group(slave_read_enable=True)
        opts = {"namesrv": ns.address("namesrv"), "remoting": {"slave_read_lag_messages": 5}}
        a = await g.node("a", **opts).start()
        await a.wait_role("master")
        b = await g.node("b", **opts).start()
        await b.wait_role("slave")
        await g.wait_isr({"a", "b"})
        async with Producer(ns.address("namesrv")) as p:
            for i in range(30):  # one queue (a sharding key): 30 messages behind at 0
                sent = await p.send(Message("S", f"s{i}".encode()), sharding_key="k")
        qid = sent.queue.queueId
        async with ClientInstance(ns.address("namesrv")) as inst:
            with trio.fail_after(45):
                while slave_broker_id("b") not in {bid for bd in (await inst.fetch_route("S"))
                                                   .brokerDatas for bid in bd.brokerAddrs}:
                    await trio.sleep(0.1)
            mq = next(q for q in B.queues_of("S", inst.routes["S"], write=False)
                      if q.queueId == qid)
            code, nxt, msgs = await pull(inst, "cg", mq, 0, max_msgs=2)
            assert code == ResponseCode.SUCCESS and len(msgs) == 2
            key = ("g1", "S", qid)
            assert inst.pull_from.get(key) == slave_broker_id("b")  # far behind: the slave
            a.pause()  # the master is stopped: what follows is served by the slave
            try:
                offset = nxt
                while True:
                    code, offset, got = await pull(inst, "cg", mq, offset, max_msgs=2)
                    assert code in (ResponseCode.SUCCESS, ResponseCode.PULL_NOT_FOUND)
                    msgs += got
                    if key not in inst.pull_from:  # caught up: back to the master
                        break
                assert len(msgs) >= 2 + 2 and offset > nxt
            finally:
                a.resume()
    finally:
        ns.kill()


def kafka_on_slave(address: str) -> dict[str, int]:
    """What a slave's Kafka door answers to the requests only a master may serve."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "kafka"))
    from kafka_wire import Client, Req, produce

    c = Client(address)
    try:
        from ferrymq.protocols.kafka import records as kr

        out = {"produce": produce(c, "R", kr.encode_batch(0, [(1, None, b"x", [])])).error_code}
        R = Req(11)  # JoinGroup
        out["join"] = c.call(11, 5, R(group_id="g", session_timeout_ms=10000,
                                      rebalance_timeout_ms=10000, member_id="",
                                      group_instance_id=None, protocol_type="consumer",
                                      protocols=())).error_code
        R = Req(12)  # Heartbeat
        out["heartbeat"] = c.call(12, 3, R(group_id="g", generation_id=1, member_id="m",
                                           group_instance_id=None)).error_code
        R = Req(22)  # InitProducerId: an idempotent producer's is forwarded to the master
        r = c.call(22, 3, R(transactional_id=None, transaction_timeout_ms=60000,
                            producer_id=-1, producer_epoch=-1))
        out["init_producer_id"] = r.error_code if r.error_code or r.producer_id < 0 else "pid"
        out["init_transactional_id"] = c.call(22, 3, R(
            transactional_id="t", transaction_timeout_ms=60000, producer_id=-1,
            producer_epoch=-1)).error_code
        R = Req(75)  # DescribeTopicPartitions: the leader and replicas Metadata names
        part = c.call(75, 0, R(topics=(R.TopicRequest(name="R"),), response_partition_limit=10,
                               cursor=None)).topics[0].partitions[0]
        out["describe_partitions"] = (part.leader_id, sorted(part.replica_nodes))
        return out
    finally:
        c.close()


async def test_a_slave_sends_kafka_clients_to_the_master(make_group) -> None:
    """NOT_LEADER_OR_FOLLOWER for a produce, NOT_COORDINATOR for group and transactional
    requests: the codes after which Kafka clients refresh metadata / the coordinator. An
    idempotent producer's InitProducerId, which librdkafka sends to any broker it is
    connected to, is answered with the master's producer id (forwarded)."""
    g: Group = make_group()
    a = await g.node("a", DOORS).start()
    await a.wait_role("master")
    b = await g.node("b", DOORS).start()
    await b.wait_role("slave")
    await trio.to_thread.run_sync(kafka_metadata, a.process.address("kafka"), "R")  # creates R
    got = await trio.to_thread.run_sync(kafka_on_slave, b.process.address("kafka"))
    ids = member_node_id("g1", "a"), member_node_id("g1", "b")
    assert got == {"produce": 6, "join": 16, "heartbeat": 16, "init_producer_id": "pid",
                   "init_transactional_id": 16,
                   "describe_partitions": (ids[0], sorted(ids))}, got
    a.kill()  # no master to forward to: a retriable code, not a producer id
    got = await trio.to_thread.run_sync(kafka_on_slave, b.process.address("kafka"))
    assert got["init_producer_id"] == 15, got  # COORDINATOR_NOT_AVAILABLE


async def test_two_groups_each_route_to_their_own_master(make_group, tmp_path) -> None:
    """Two broker groups under one cluster name: the NameServer lists both groups' masters
    (a topic's queues on both), Kafka Metadata from either lists every member of both
    groups under its own broker id, and ``cluster list`` shows both groups."""
    ns = await nameserver(tmp_path)
    try:
        g1: Group = make_group("g1")
        g2: Group = make_group("g2")
        g2.cluster_name = g1.cluster_name
        a = await g1.node("a", DOORS, namesrv=ns.address("namesrv")).start()
        await a.wait_role("master")
        b = await g1.node("b", DOORS, namesrv=ns.address("namesrv")).start()
        x = await g2.node("x", DOORS, namesrv=ns.address("namesrv")).start()
        await b.wait_role("slave")
        await x.wait_role("master")
        from ferrymq.clients import Admin

        async with Admin(ns.address("namesrv")) as adm:  # on every group's master
            assert sorted(await adm.create_topic("T2", 2)) == ["g1", "g2"]
        async with Producer(ns.address("namesrv")) as p:
            names = {(await p.send(Message("T2", b"m"))).queue.brokerName for _ in range(8)}
        assert names == {"g1", "g2"}  # the topic's queues on both groups' masters
        async with RemotingClient() as rc:
            r = await rc.invoke(ns.address("namesrv"), request(
                RequestCode.GET_ROUTEINFO_BY_TOPIC, 0, {"topic": "T2"}))
            route = B.TopicRouteData.decode(r.body)
        assert {bd.brokerName: bd.brokerAddrs for bd in route.brokerDatas} == {
            "g1": {0: a.remoting, slave_broker_id("b"): b.remoting}, "g2": {0: x.remoting}}

        def brokers(bootstrap: str) -> dict[int, int]:
            from confluent_kafka.admin import AdminClient

            md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
            return {i: bm.port for i, bm in md.brokers.items()}

        want = {member_node_id("g1", "a"): a.process.port("kafka"),
                member_node_id("g1", "b"): b.process.port("kafka"),
                member_node_id("g2", "x"): x.process.port("kafka")}
        with trio.fail_after(20):  # each member's view of the other group comes from etcd
            for node in (b, x):
                while await trio.to_thread.run_sync(brokers, node.process.address("kafka")) \
                        != want:
                    await trio.sleep(0.2)
        # A topic's Kafka partitions are the asked group's queues, led by that group's
        # master (not spread over the groups: docs/cluster.md, "Not done here").
        # (The slave answers once the topic's record has reached it by replication.)
        for node, leader in ((b, "a"), (x, "x")):
            want_leader = member_node_id("g1" if leader == "a" else "g2", leader)
            with trio.fail_after(20):
                while await trio.to_thread.run_sync(
                        leader_of, node.process.address("kafka"), "T2") != want_leader:
                    await trio.sleep(0.2)
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "ferrymq.gateways", "cluster", "list", "--etcd",
             g1.etcd.url, "-c", g1.cluster_name, "--json"], capture_output=True, text=True,
            timeout=60))
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [(r["group"], r["node"], r["role"]) for r in rows] == [
            ("g1", "a", "master"), ("g1", "b", "slave"), ("g2", "x", "master")], out.stderr
    finally:
        ns.kill()


class KafkaLoad:
    """confluent-kafka in threads: an idempotent producer (acks=all) of unique bodies
    ``k:seq`` and a consumer, both recording into lists the test reads afterwards."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.stop = threading.Event()
        self.acks: list[tuple[int, int, bytes]] = []
        self.acked_at: list[float] = []  # beside ``acks``
        self.errors: list[str] = []
        self.observed: list[tuple[int, int, bytes]] = []

    def produce(self) -> None:
        from confluent_kafka import Producer as KProducer

        p = KProducer({"bootstrap.servers": self.bootstrap, "acks": "all",
                       "enable.idempotence": True, "message.timeout.ms": 60000,
                       "retry.backoff.ms": 100, "linger.ms": 5,
                       "topic.metadata.refresh.interval.ms": 1000, "log_level": 0})

        def done(err, msg) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                self.acks.append((msg.partition(), msg.offset(), msg.value()))
                self.acked_at.append(time.monotonic())

        seq = 0
        while not self.stop.is_set():
            if seq - len(self.acks) - len(self.errors) < 50:
                p.produce(self.topic, f"k:{seq}".encode(), partition=0, on_delivery=done)
                seq += 1
            p.poll(0.005)
        p.flush(60)

    def consume(self) -> None:
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "hist",
                      "auto.offset.reset": "earliest", "enable.auto.commit": True,
                      "topic.metadata.refresh.interval.ms": 1000, "log_level": 0})
        c.subscribe([self.topic])
        try:
            while not self.stop.is_set():
                m = c.poll(0.1)
                if m is not None and m.error() is None:
                    self.observed.append((m.partition(), m.offset(), m.value()))
        finally:
            c.close()


async def test_failover_under_load_with_confluent_kafka_and_the_native_client(
        make_group, tmp_path) -> None:
    """Sync replication, lease TTL 2 s. confluent-kafka (acks=all, idempotent) and the
    native client (sync sends through the NameServer) produce, consumers consume; the
    master is SIGKILLed 5 times, restarted each time to rejoin as a slave. The history
    checker holds every acknowledgement against the final log; producers resume after
    each kill (RTO: kill to the first acknowledgement from the new master).

    The Kafka clients run with librdkafka's defaults but for a 1 s metadata refresh: no
    re-bootstrap setting is needed, since Metadata lists every member of the group (a
    client that loses the master asks the slave, which names itself once elected)."""
    ns = await nameserver(tmp_path)
    kills = 5
    try:
        g: Group = make_group()
        a = await g.node("a", DOORS, namesrv=ns.address("namesrv")).start()
        await a.wait_role("master")
        b = await g.node("b", DOORS, namesrv=ns.address("namesrv")).start()
        await b.wait_role("slave")
        await g.wait_isr({"a", "b"})
        nodes = [a, b]
        # The Kafka topic exists before the load (auto-created by the master: a slave
        # cannot create it, docs/cluster.md "Not done here").
        await trio.to_thread.run_sync(kafka_metadata, a.process.address("kafka"), "KH")
        kafka = KafkaLoad(f"{a.process.address('kafka')},{b.process.address('kafka')}", "KH")
        native: list[tuple[int, int, bytes, float]] = []  # queue, offset, body, sent at
        acked_at: list[float] = []  # beside ``native``
        native_errors: list[str] = []
        observed: list[tuple[int, int, bytes]] = []
        stop = trio.Event()

        async def produce_native() -> None:
            async with Producer(ns.address("namesrv"), retries=2, timeout=5) as p:
                seq = 0
                while not stop.is_set():
                    body = f"n:{seq}".encode()
                    sent_at = time.monotonic()
                    try:
                        r = await p.send(Message("NH", body))
                    except ClientError as exc:
                        native_errors.append(str(exc))
                    else:
                        native.append((r.queue.queueId, r.queue_offset, body, sent_at))
                        acked_at.append(time.monotonic())
                    seq += 1  # a failed send is not sent again by the test: a new body

        async def consume_native(rc: RemotingClient) -> None:
            offsets: dict[int, int] = {}
            while not stop.is_set():
                m = g.master()
                if m is None:
                    await trio.sleep(0.02)
                    continue
                for q in range(8):
                    try:
                        r = await rc.invoke(m.remoting, pull_request("NH", q, offsets.get(q, 0)), 5)
                    except (ClientError, OSError, trio.BrokenResourceError):
                        break
                    if r.code != ResponseCode.SUCCESS:
                        continue
                    for msg in decode_messages(r.body):
                        if msg.queue_offset >= offsets.get(q, 0):
                            observed.append((q, msg.queue_offset, msg.body))
                            offsets[q] = msg.queue_offset + 1
                await trio.sleep(0.02)

        pushed: list[tuple[int, int, bytes]] = []  # what the native PushConsumer was served

        def on_messages(msgs: list) -> None:
            pushed.extend((m.queue_id, m.queue_offset, m.body) for m in msgs)

        def acked_count() -> int:
            return len(native) + len(kafka.acks)

        rtos: list[float] = []
        kafka_rtos: list[float] = []
        push = PushConsumer(ns.address("namesrv"), "hist", on_messages, consume_from="FIRST",
                            suspend_ms=1000)
        push.subscribe("NH")
        async with RemotingClient() as rc, push:
            async with trio.open_nursery() as n:
                n.start_soon(trio.to_thread.run_sync, kafka.produce)
                n.start_soon(trio.to_thread.run_sync, kafka.consume)
                n.start_soon(produce_native)
                n.start_soon(consume_native, rc)
                try:
                    for _ in range(kills):
                        with trio.fail_after(60):
                            target = acked_count() + 100
                            while acked_count() < target or not native or not kafka.acks:
                                await trio.sleep(0.02)
                        old = g.master()
                        assert old is not None
                        other = next(x for x in nodes if x is not old)
                        life = other.info()["life"]
                        killed_at = time.monotonic()
                        n_native, n_kafka = len(native), len(kafka.acks)
                        old.kill()
                        await other.wait_role("master", life_after=life)
                        elected_at = time.monotonic()
                        with trio.move_on_after(60):  # both producers resume on the new master
                            while len(native) <= n_native or len(kafka.acks) <= n_kafka:
                                await trio.sleep(0.02)
                        assert len(native) > n_native and len(kafka.acks) > n_kafka, (
                            len(native) - n_native, len(kafka.acks) - n_kafka,
                            native_errors[-3:], kafka.errors[-3:])
                        # RTO: from the kill to the first acknowledgement of a send begun
                        # after it (one begun before may have been answered by the old
                        # master just before it died).
                        with trio.fail_after(60):
                            while not any(a[3] > killed_at for a in native[n_native:]):
                                await trio.sleep(0.02)
                        rtos.append(min(t for a, t in zip(native[n_native:], acked_at[n_native:], strict=True)
                                        if a[3] > killed_at) - killed_at)
                        # Kafka: the first acknowledgement after the election (one before
                        # it came from the old master just before it died).
                        with trio.fail_after(60):
                            while not any(x >= elected_at for x in kafka.acked_at[n_kafka:]):
                                await trio.sleep(0.02)
                        kafka_rtos.append(min(x for x in kafka.acked_at[n_kafka:]
                                              if x >= elected_at) - killed_at)
                        n_pushed = len(pushed)
                        with trio.move_on_after(60):  # the push consumer resumes too
                            while len(pushed) <= n_pushed:
                                await trio.sleep(0.02)
                        assert len(pushed) > n_pushed, "the push consumer did not resume"
                        await old.start()
                        await old.wait_role("slave")
                        await g.wait_isr({"a", "b"})
                finally:
                    stop.set()
                    kafka.stop.set()
            master = await g.wait_master()
            final = {("NH", q): await read_queue(rc, master.remoting, "NH", q) for q in range(8)}
            final[("KH", 0)] = await read_queue(rc, master.remoting, "KH", 0)
        history = History(at_least_once=frozenset({"NH"}))
        for q, offset, body, _ in native:
            history.acked("NH", q, offset, body)
        for q, offset, body in observed + pushed:
            history.observed("NH", q, offset, body)
        for part, offset, body in kafka.acks:
            history.acked("KH", part, offset, body)
        for part, offset, body in kafka.observed:
            history.observed("KH", part, offset, body)
        report = history.check(final)
        print(report, "RTO s native", [round(r, 2) for r in rtos], "kafka",
              [round(r, 2) for r in kafka_rtos], "native errors", len(native_errors),
              "kafka errors", kafka.errors[:3])
        assert kafka.errors == []  # acks=all + idempotence: every message delivered
        assert report.acknowledged >= kills * 100 and kafka.observed and observed and pushed
        assert len(rtos) == len(kafka_rtos) == kills
    finally:
        ns.kill()
