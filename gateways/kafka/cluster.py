"""The Kafka door's cluster and admin APIs that a one-broker cluster answers honestly.

DeleteRecords, OffsetDelete, OffsetForLeaderEpoch, DescribeLogDirs, AlterReplicaLogDirs,
DescribeCluster, DescribeTopicPartitions, ElectLeaders, the reassignment APIs and
DescribeProducers (docs/kafka.md, "One broker, answered honestly"). A FerryMQ
broker is its own cluster of one: it leads every partition at leader epoch 0 and
is every partition's only replica, so an election is never needed and a
reassignment can only name this broker. These answers gain meaning with
replication (issue 14), where the same requests reach real choices.

``ClusterApis`` is a mixin of ``handlers.KafkaDoor``: the methods are handlers
(header, request, session) -> response like the others.

A member of a broker group (docs/cluster.md, "Clients follow the master") is a
Kafka broker of its own (``member_node_id``), master or slave, read from the
controller's ``ClusterView``: Metadata lists every live member of every group,
names the group's master leader of every partition (its members the replicas,
the in-sync set the ISR) and FindCoordinator names the master coordinator,
whichever member answers. A client therefore always knows the surviving members
of a group whose master died, asks them, and finds the new master's id as
leader once it is elected. A slave that knows no master yet answers
LEADER_NOT_AVAILABLE / COORDINATOR_NOT_AVAILABLE, and refuses produce and (unless
slaves serve reads) fetch with NOT_LEADER_OR_FOLLOWER, so that clients refresh
their metadata.
"""

from __future__ import annotations

import logging
import shutil
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ...core.access import SYSTEM
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.metadata import TopicConfig
from ...core.replication import Role
from ...protocols.kafka import errors as ke
from ...protocols.kafka import schema
from ...protocols.kafka.connection import Header, parse_response, request_bytes
from .errors import kafka_error
from .groups import Coordinator
from .mapping import kafka_visible
from .producers import ProducerStates

if TYPE_CHECKING:
    from ..replication.view import ClusterView

DELETE_RECORDS, OFFSET_FOR_LEADER_EPOCH, ALTER_REPLICA_LOG_DIRS, DESCRIBE_LOG_DIRS = 21, 23, 34, 35
ELECT_LEADERS, ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS = 43, 45, 46
OFFSET_DELETE, DESCRIBE_CLUSTER, DESCRIBE_PRODUCERS, DESCRIBE_TOPIC_PARTITIONS = 47, 60, 61, 75
NS_LOG_START = "kafka.log_start"
HIGH_WATERMARK = -1  # DeleteRecords: "up to the high watermark"
LEADER_EPOCH = 0  # this broker leads every partition, at epoch 0 (Metadata says so too)
ENDPOINT_BROKERS = 1  # DescribeCluster v1 endpoint types: brokers 1, controllers 2
DEFAULT_PARTITION_LIMIT = 2000  # DescribeTopicPartitions' response_partition_limit default
INIT_PRODUCER_ID = 22
FORWARD_TIMEOUT_S = 5.0  # a slave's InitProducerId forwarded to its master
FORWARD_MAX_BYTES = 1 << 16  # the master's answer is a few bytes: anything larger is garbage

log = logging.getLogger("ferrymq.kafka")


def subscribed_topics(metadata: bytes) -> set[str] | None:
    """The topics of a consumer protocol subscription (ConsumerProtocolSubscription:
    version int16, topics array of int16-length strings, ...), or None when it does
    not parse (then the member counts as subscribed to everything)."""
    try:
        (n,) = struct.unpack_from(">i", metadata, 2)
        pos, out = 6, set()
        for _ in range(n):
            (length,) = struct.unpack_from(">h", metadata, pos)
            out.add(metadata[pos + 2:pos + 2 + length].decode())
            pos += 2 + length
        return out
    except (struct.error, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class Route:
    """Who leads this door's partitions: ``leader`` (a node id, -1 while unknown) at
    ``leader_host:leader_port``; ``replicas`` and ``isr``, the node ids of this broker's
    group and of its in-sync members; ``brokers``, every (node id, host, port) Metadata
    lists."""

    leader: int
    leader_host: str
    leader_port: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    brokers: tuple[tuple[int, str, int], ...]


class ClusterApis:
    """Handlers of the admin APIs above (mixed into ``KafkaDoor``, which provides what
    is declared here)."""

    view: ClusterView | None = None  # a broker group's member: every group's master
    broker: Broker
    options: Any  # handlers.DoorOptions
    port: int
    coordinator: Coordinator
    producers: ProducerStates
    log_starts: dict[tuple[str, int], int]

    def log_start(self, topic: str, part: int, lo: int) -> int:
        raise NotImplementedError

    def host_for(self, s: Any) -> str:
        raise NotImplementedError

    def port_for(self, s: Any) -> int:
        raise NotImplementedError

    def topic_id(self, t: TopicConfig) -> bytes:
        raise NotImplementedError

    def _find(self, name: str, s: Any) -> TopicConfig | None:
        raise NotImplementedError

    # ---------------------------------------------------------------- routes

    def route(self, s: Any) -> Route:
        """This door's answer to "who leads": itself for a single broker or a master;
        the group's master, as etcd names it, for a slave. Every live member of every
        group is a broker (its member key, with a Kafka port, is in etcd)."""
        here = (self.host_for(s), self.port_for(s))
        if self.view is None:
            node = self.options.node_id
            return Route(node, *here, (node,), (node,), ((node, *here),))
        own = self.view.own()
        me = own.member_id(self.view.own_node)
        brokers: dict[int, tuple[str, int]] = {}
        for g in self.view.groups.values():
            for member in g.members.values():
                if member.ports.get("kafka"):
                    brokers[g.member_id(member.node)] = (member.host, member.ports["kafka"])
        brokers[me] = here  # as this client reaches it (its listener, TLS or not)
        leader, host, port = -1, "", -1
        if self.broker.replication_position().role is Role.MASTER:
            leader, (host, port) = me, here
        else:
            m = own.master_member()
            if m is not None and m.ports.get("kafka"):
                leader, host, port = own.member_id(m.node), m.host, m.ports["kafka"]
        replicas = {own.member_id(n) for n in own.members} | {me}
        if leader >= 0:
            replicas.add(leader)
        isr = {own.member_id(n) for n in own.isr} & replicas or {leader} - {-1}
        return Route(leader, host, port, tuple(sorted(replicas)), tuple(sorted(isr)),
                     tuple((b, h, p) for b, (h, p) in sorted(brokers.items())))

    async def forward_init_producer_id(self, h: Header, req: Any) -> Any:
        """A slave's answer to an idempotent producer's InitProducerId: the master's,
        asked over the master's Kafka door. librdkafka sends it to whichever broker it
        is connected to, and a client that bootstrapped from a slave may be connected
        to that slave alone (it connects to the leader only to produce, which waits for
        the producer id); refused there, it would ask the same slave forever. Any
        failure (no master known, unreachable, a refusal of its own) is
        COORDINATOR_NOT_AVAILABLE, which the client retries."""
        R = schema.response_class(INIT_PRODUCER_ID)
        unavailable = R(error_code=ke.COORDINATOR_NOT_AVAILABLE, producer_id=-1,
                        producer_epoch=-1)
        m = self.view.own().master_member() if self.view is not None else None
        if m is None or not m.ports.get("kafka") or m.node == self.view.own_node:  # type: ignore
            return unavailable
        frame = request_bytes(INIT_PRODUCER_ID, h.api_version, 1, req, client_id="ferrymq-slave")
        try:
            with trio.fail_after(FORWARD_TIMEOUT_S):
                stream = await trio.open_tcp_stream(m.host, m.ports["kafka"])
                async with stream:
                    await stream.send_all(frame)
                    data = b""
                    while len(data) < 4 or len(data) < 4 + struct.unpack_from(">i", data)[0]:
                        if len(data) > FORWARD_MAX_BYTES:
                            raise ValueError(f"an answer over {FORWARD_MAX_BYTES} bytes")
                        chunk = await stream.receive_some(FORWARD_MAX_BYTES)
                        if not chunk:
                            raise EOFError("the master closed the connection")
                        data += chunk
            (size,) = struct.unpack_from(">i", data)
            _corr, body = parse_response(INIT_PRODUCER_ID, h.api_version, data[4:4 + size])
        except (OSError, EOFError, trio.TooSlowError, trio.BrokenResourceError,
                ValueError, struct.error) as exc:
            log.info("cannot forward InitProducerId to the master %s: %s", m.node, exc)
            return unavailable
        return body

    def slave_refusal(self) -> str | None:
        """Why this broker cannot coordinate (a slave of a group), or None."""
        if self.view is not None and self.broker.replication_position().role is Role.SLAVE:
            return "a slave"
        return None

    # ---------------------------------------------------------------- DeleteRecords

    async def delete_records(self, h: Header, req: Any, s: Any) -> Any:
        """Move each partition's log start offset to ``offset`` (-1: the high watermark).
        Kafka clients then see the records before it as deleted: Fetch answers
        OFFSET_OUT_OF_RANGE below it, ListOffsets' earliest is it. The bytes stay in
        the CommitLog until retention removes their segment (every partition shares
        the log), so other doors still read them meanwhile (docs/kafka.md)."""
        R = schema.response_class(DELETE_RECORDS)
        changes = []
        topics = []
        for t in req.topics:
            parts = []
            for p in t.partitions:
                code, low = ke.NONE, -1
                try:
                    lo, hw = self.broker.queue_bounds(t.name, p.partition_index,
                                                      principal=s.principal)
                except FerryError as exc:
                    code = kafka_error(exc)
                else:
                    target = hw if p.offset == HIGH_WATERMARK else p.offset
                    low = self.log_start(t.name, p.partition_index, lo)
                    if target < 0 or target > hw:
                        code = ke.OFFSET_OUT_OF_RANGE
                    elif target > low:
                        low = target
                        self.log_starts[(t.name, p.partition_index)] = target
                        changes.append((NS_LOG_START, (t.name, p.partition_index), target))
                parts.append(R.DeleteRecordsPartitionResult(
                    partition_index=p.partition_index, low_watermark=low, error_code=code))
            topics.append(R.DeleteRecordsTopicResult(name=t.name, partitions=tuple(parts)))
        if changes:
            await self.broker.put_door_state(changes, principal=SYSTEM)
        return R(topics=tuple(topics))

    # ---------------------------------------------------------------- OffsetDelete

    async def offset_delete(self, h: Header, req: Any, s: Any) -> Any:
        """Forget a group's committed offsets, as Kafka's GroupCoordinator does: refused
        per partition (GROUP_SUBSCRIBED_TO_TOPIC) while a member of the group is
        subscribed to its topic."""
        R = schema.response_class(OFFSET_DELETE)
        group = req.group_id
        known = group in self.broker.known_groups(principal=s.principal) \
            or self.coordinator.describe(group) is not None
        if not group:
            return R(error_code=ke.INVALID_GROUP_ID)
        if not known:
            return R(error_code=ke.GROUP_ID_NOT_FOUND)
        g = self.coordinator.describe(group)
        subscribed: set[str] | None = set()
        if g is not None and g.members:
            if g.protocol_type != "consumer":
                return R(error_code=ke.NON_EMPTY_GROUP)
            for m in g.members.values():
                topics = subscribed_topics(m.metadata(g.protocol or m.protocols[0][0]))
                if topics is None or subscribed is None:
                    subscribed = None
                    break
                subscribed |= topics
        deletable = []
        out: dict[str, list[Any]] = {}
        for t in req.topics:
            for p in t.partitions:
                if subscribed is None or t.name in subscribed:
                    code = ke.GROUP_SUBSCRIBED_TO_TOPIC
                else:
                    code = ke.NONE
                    deletable.append((t.name, p.partition_index))
                out.setdefault(t.name, []).append(code)
        try:
            await self.broker.delete_committed_offsets(group, deletable, principal=s.principal)
        except FerryError as exc:
            return R(error_code=kafka_error(exc))
        return R(error_code=ke.NONE, topics=tuple(
            R.OffsetDeleteResponseTopic(name=t.name, partitions=tuple(
                R.OffsetDeleteResponsePartition(partition_index=p.partition_index, error_code=c)
                for p, c in zip(t.partitions, out[t.name], strict=True)))
            for t in req.topics))

    # ---------------------------------------------------------------- leader epochs

    async def offset_for_leader_epoch(self, h: Header, req: Any, s: Any) -> Any:
        """The end offset of a leader epoch: there has only been epoch 0, so any epoch
        at or past it ends at the high watermark (KIP-101, KIP-320)."""
        R = schema.response_class(OFFSET_FOR_LEADER_EPOCH)
        topics = []
        for t in req.topics:
            parts = []
            for p in t.partitions:
                code, epoch, end = ke.NONE, -1, -1
                try:
                    _lo, hw = self.broker.queue_bounds(t.topic, p.partition,
                                                       principal=s.principal)
                except FerryError as exc:
                    code = kafka_error(exc)
                else:
                    if h.api_version >= 2 and p.current_leader_epoch > LEADER_EPOCH:
                        code = ke.UNKNOWN_LEADER_EPOCH
                    elif p.leader_epoch >= LEADER_EPOCH:
                        epoch, end = LEADER_EPOCH, hw
                parts.append(R.EpochEndOffset(error_code=code, partition=p.partition,
                                              leader_epoch=epoch, end_offset=end))
            topics.append(R.OffsetForLeaderTopicResult(topic=t.topic, partitions=tuple(parts)))
        return R(topics=tuple(topics))

    # ---------------------------------------------------------------- log dirs, cluster

    async def describe_log_dirs(self, h: Header, req: Any, s: Any) -> Any:
        """One log directory, the broker's data directory, with its disk's total and usable
        bytes. Partitions share one CommitLog, so no partition has a size of its own:
        each reports 0 (docs/kafka.md)."""
        R = schema.response_class(DESCRIBE_LOG_DIRS)
        path = self.broker.config.data_dir
        try:
            usage = shutil.disk_usage(path)
            total, usable = usage.total, usage.free
        except OSError:
            total = usable = -1
        wanted: list[tuple[str, range | list[int]]]
        if req.topics is None:
            wanted = [(t.name, range(t.queues)) for t in self.broker.topics(principal=s.principal)
                      if kafka_visible(t.name)]
        else:
            wanted = []
            for t in req.topics:
                found = self._find(t.topic, s)
                if found is not None:
                    wanted.append((t.topic, [p for p in t.partitions if 0 <= p < found.queues]))
        topics = tuple(R.DescribeLogDirsTopic(name=name, partitions=tuple(
            R.DescribeLogDirsPartition(partition_index=p, partition_size=0, offset_lag=0,
                                       is_future_key=False) for p in parts))
            for name, parts in wanted)
        return R(error_code=ke.NONE, results=(R.DescribeLogDirsResult(
            error_code=ke.NONE, log_dir=path, topics=topics, total_bytes=total,
            usable_bytes=usable),))

    async def alter_replica_log_dirs(self, h: Header, req: Any, s: Any) -> Any:
        """Move replicas between log directories: there is one, so a move into it is done
        already and any other directory is LOG_DIR_NOT_FOUND."""
        R = schema.response_class(ALTER_REPLICA_LOG_DIRS)
        here = self.broker.config.data_dir
        results: dict[str, list[Any]] = {}
        for d in req.dirs:
            for t in d.topics:
                found = self._find(t.name, s)
                for p in t.partitions:
                    if found is None or not 0 <= p < found.queues:
                        code = ke.UNKNOWN_TOPIC_OR_PARTITION
                    else:
                        code = ke.NONE if d.path == here else ke.LOG_DIR_NOT_FOUND
                    results.setdefault(t.name, []).append(R.AlterReplicaLogDirPartitionResult(
                        partition_index=p, error_code=code))
        return R(results=tuple(R.AlterReplicaLogDirTopicResult(topic_name=name,
                                                               partitions=tuple(parts))
                               for name, parts in results.items()))

    async def describe_cluster(self, h: Header, req: Any, s: Any) -> Any:
        R = schema.response_class(DESCRIBE_CLUSTER)
        if h.api_version >= 1 and req.endpoint_type != ENDPOINT_BROKERS:
            return R(error_code=ke.UNSUPPORTED_ENDPOINT_TYPE, endpoint_type=req.endpoint_type,
                     error_message="this broker is its own controller; ask for brokers",
                     cluster_id=self.options.cluster_id, controller_id=-1)
        route = self.route(s)  # a broker group: every member of every group
        return R(error_code=ke.NONE, error_message=None, endpoint_type=ENDPOINT_BROKERS,
                 cluster_id=self.options.cluster_id, controller_id=route.leader,
                 brokers=tuple(R.DescribeClusterBroker(broker_id=b, host=host, port=port,
                                                       rack=None)
                               for b, host, port in route.brokers))

    async def describe_topic_partitions(self, h: Header, req: Any,
                                        s: Any) -> Any:
        """Topics and their partitions (KIP-966), paged by ``response_partition_limit``
        and the cursor. Leader, replicas and ISR as Metadata names them (in a broker
        group, its master, its members and its in-sync set); no eligible leader
        replicas beyond those."""
        R = schema.response_class(DESCRIBE_TOPIC_PARTITIONS)
        route = self.route(s)
        code = ke.NONE if route.leader >= 0 else ke.LEADER_NOT_AVAILABLE
        limit = req.response_partition_limit if req.response_partition_limit > 0 \
            else DEFAULT_PARTITION_LIMIT
        if req.topics:
            names = sorted({t.name for t in req.topics})
        else:
            names = [t.name for t in self.broker.topics(principal=s.principal)
                     if kafka_visible(t.name)]
        cursor = req.cursor
        if cursor is not None:
            names = [n for n in names if n >= cursor.topic_name]
        topics = []
        left = limit
        next_cursor = None
        for name in names:
            t = self._find(name, s)
            if t is None:
                topics.append(R.DescribeTopicPartitionsResponseTopic(
                    error_code=ke.UNKNOWN_TOPIC_OR_PARTITION, name=name, topic_id=bytes(16)))
                continue
            first = cursor.partition_index if cursor is not None and cursor.topic_name == name \
                else 0
            if left <= 0:
                next_cursor = R.Cursor(topic_name=name, partition_index=first)
                break
            last = min(t.queues, first + left)
            parts = tuple(R.DescribeTopicPartitionsResponsePartition(
                error_code=code, partition_index=q, leader_id=route.leader,
                leader_epoch=LEADER_EPOCH, replica_nodes=route.replicas, isr_nodes=route.isr,
                eligible_leader_replicas=(),
                last_known_elr=(), offline_replicas=()) for q in range(first, last))
            left -= last - first
            topics.append(R.DescribeTopicPartitionsResponseTopic(
                error_code=ke.NONE, name=name, topic_id=self.topic_id(t), is_internal=False,
                partitions=parts))
            if last < t.queues:
                next_cursor = R.Cursor(topic_name=name, partition_index=last)
                break
        return R(topics=tuple(topics), next_cursor=next_cursor)

    # ---------------------------------------------------------------- elections, reassignments

    async def elect_leaders(self, h: Header, req: Any, s: Any) -> Any:
        """This broker leads every partition already: ELECTION_NOT_NEEDED for each named
        one (none at all when every partition is asked for)."""
        R = schema.response_class(ELECT_LEADERS)
        results = []
        for t in req.topic_partitions or ():
            found = self._find(t.topic, s)
            results.append(R.ReplicaElectionResult(topic=t.topic, partition_result=tuple(
                R.PartitionResult(
                    partition_id=p,
                    error_code=ke.ELECTION_NOT_NEEDED if found is not None
                    and 0 <= p < found.queues else ke.UNKNOWN_TOPIC_OR_PARTITION,
                    error_message=None) for p in t.partitions)))
        return R(error_code=ke.NONE, replica_election_results=tuple(results))

    async def alter_partition_reassignments(self, h: Header, req: Any,
                                            s: Any) -> Any:
        """A reassignment to this broker alone is already done; any other broker does not
        exist (INVALID_REPLICA_ASSIGNMENT); a cancellation finds nothing in progress."""
        R = schema.response_class(ALTER_PARTITION_REASSIGNMENTS)
        node = self.options.node_id
        out = []
        for t in req.topics:
            found = self._find(t.name, s)
            parts = []
            for p in t.partitions:
                message = None
                if found is None or not 0 <= p.partition_index < found.queues:
                    code = ke.UNKNOWN_TOPIC_OR_PARTITION
                elif p.replicas is None:
                    code, message = ke.NO_REASSIGNMENT_IN_PROGRESS, "no reassignment is going on"
                elif list(p.replicas) == [node]:
                    code = ke.NONE
                else:
                    code = ke.INVALID_REPLICA_ASSIGNMENT
                    message = f"this cluster has one broker, node {node}"
                parts.append(R.ReassignablePartitionResponse(
                    partition_index=p.partition_index, error_code=code, error_message=message))
            out.append(R.ReassignableTopicResponse(name=t.name, partitions=tuple(parts)))
        return R(error_code=ke.NONE, error_message=None, responses=tuple(out))

    async def list_partition_reassignments(self, h: Header, req: Any,
                                           s: Any) -> Any:
        R = schema.response_class(LIST_PARTITION_REASSIGNMENTS)
        return R(error_code=ke.NONE, error_message=None, topics=())

    # ---------------------------------------------------------------- producers

    async def describe_producers(self, h: Header, req: Any, s: Any) -> Any:
        """The idempotent and transactional producers the door remembers per partition:
        their epoch, last sequence and when they were last seen."""
        R = schema.response_class(DESCRIBE_PRODUCERS)
        topics = []
        for t in req.topics:
            found = self._find(t.name, s)
            parts = []
            for p in t.partition_indexes:
                if found is None or not 0 <= p < found.queues:
                    parts.append(R.PartitionResponse(partition_index=p,
                                                     error_code=ke.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                active = tuple(R.ProducerState(
                    producer_id=pid, producer_epoch=entry.epoch, last_sequence=batches[-1].last_seq,
                    last_timestamp=entry.last_used_ms, coordinator_epoch=-1,
                    current_txn_start_offset=-1)
                    for pid, entry in sorted(self.producers.producers.items())
                    for batches in (entry.partitions.get((t.name, p)),) if batches)
                parts.append(R.PartitionResponse(partition_index=p, error_code=ke.NONE,
                                                 active_producers=active))
            topics.append(R.TopicResponse(name=t.name, partitions=tuple(parts)))
        return R(topics=tuple(topics))


