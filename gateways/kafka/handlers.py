"""Kafka requests translated into Broker calls: one method per API, request in, response out.

``SUPPORTED`` is the table ApiVersions advertises and the connection accepts;
nothing outside it is ever advertised. Kafka topics are FerryMQ topics and
partitions are queues, so offsets committed here are the broker's offsets.
See docs/kafka.md for the reasoning behind each mapping.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ...core.access import (
    ANONYMOUS,
    GROUP,
    MECHANISM_SASL_PLAIN,
    MECHANISM_SCRAM,
    READ,
    SYSTEM,
    TRANSACTIONAL_ID,
    WRITE,
    Operation,
    Principal,
    ResourceType,
    anonymous,
)
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.message import PROPERTY_DOOR, GetStatus, Message, StoredRecord
from ...core.metadata import TopicConfig
from ...core.metrics import DoorMetrics
from ...core.replication import Durability
from ...core.tracing import Delivery
from ...protocols import record as rec
from ...protocols.kafka import batch_header as bh
from ...protocols.kafka import errors as ke
from ...protocols.kafka import records as kr
from ...protocols.kafka import schema
from ...protocols.kafka.connection import Header
from ...protocols.scram import MECHANISMS as _SCRAM
from ...protocols.scram import ScramError, ScramServer
from ...protocols.scram import ServerState as ScramState
from . import acls, configs, scram_admin
from .cluster import NS_LOG_START, ClusterApis
from .errors import kafka_error
from .groups import DEAD, EMPTY, Coordinator
from .mapping import (
    DELIVERY_MARK,
    DOOR,
    delivery_message,
    kafka_to_properties,
    kafka_visible,
    pack_messages,
    wants_delivery,
)
from .producers import ProducerStates, Verdict
from .transactions import COORDINATOR as TXN_COORDINATOR
from .transactions import TransactionCoordinator, TxnError, TxnState

log = logging.getLogger("ferrymq.kafka")

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP = 8, 9, 10, 11
HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS = 12, 13, 14, 15, 16
SASL_HANDSHAKE, API_VERSIONS, CREATE_TOPICS, DELETE_TOPICS = 17, 18, 19, 20
DELETE_RECORDS, INIT_PRODUCER_ID, OFFSET_FOR_LEADER_EPOCH = 21, 22, 23
ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, TXN_OFFSET_COMMIT = 24, 25, 26, 28
DESCRIBE_CONFIGS, ALTER_CONFIGS, ALTER_REPLICA_LOG_DIRS, DESCRIBE_LOG_DIRS = 32, 33, 34, 35
SASL_AUTHENTICATE, CREATE_PARTITIONS = 36, 37
DELETE_GROUPS, ELECT_LEADERS, INCREMENTAL_ALTER_CONFIGS = 42, 43, 44
ALTER_PARTITION_REASSIGNMENTS, LIST_PARTITION_REASSIGNMENTS, OFFSET_DELETE = 45, 46, 47
DESCRIBE_CLUSTER, DESCRIBE_PRODUCERS, DESCRIBE_TRANSACTIONS, LIST_TRANSACTIONS = 60, 61, 65, 66
DESCRIBE_TOPIC_PARTITIONS = 75
DESCRIBE_ACLS, CREATE_ACLS, DELETE_ACLS = 29, 30, 31
DESCRIBE_USER_SCRAM_CREDENTIALS, ALTER_USER_SCRAM_CREDENTIALS = 50, 51

KAFKA_RELEASE = "3.8"
SUPPORTED: dict[int, tuple[int, int]] = {
    PRODUCE: (0, 11), FETCH: (0, 16), LIST_OFFSETS: (0, 8), METADATA: (0, 12),
    OFFSET_COMMIT: (0, 9), OFFSET_FETCH: (0, 9), FIND_COORDINATOR: (0, 5), JOIN_GROUP: (0, 9),
    HEARTBEAT: (0, 4), LEAVE_GROUP: (0, 5), SYNC_GROUP: (0, 5), DESCRIBE_GROUPS: (0, 5),
    LIST_GROUPS: (0, 5), SASL_HANDSHAKE: (0, 1), API_VERSIONS: (0, 3), CREATE_TOPICS: (0, 7),
    DELETE_TOPICS: (0, 6), DELETE_RECORDS: (0, 2), INIT_PRODUCER_ID: (0, 5),
    OFFSET_FOR_LEADER_EPOCH: (0, 4), ADD_PARTITIONS_TO_TXN: (0, 5), ADD_OFFSETS_TO_TXN: (0, 4),
    END_TXN: (0, 4), TXN_OFFSET_COMMIT: (0, 4), DESCRIBE_CONFIGS: (0, 4), ALTER_CONFIGS: (0, 2),
    ALTER_REPLICA_LOG_DIRS: (0, 2), DESCRIBE_LOG_DIRS: (0, 4), SASL_AUTHENTICATE: (0, 2),
    CREATE_PARTITIONS: (0, 3),
    DELETE_GROUPS: (0, 2), ELECT_LEADERS: (0, 2), INCREMENTAL_ALTER_CONFIGS: (0, 1),
    ALTER_PARTITION_REASSIGNMENTS: (0, 0),
    LIST_PARTITION_REASSIGNMENTS: (0, 0), OFFSET_DELETE: (0, 0), DESCRIBE_CLUSTER: (0, 1),
    DESCRIBE_PRODUCERS: (0, 0), DESCRIBE_TRANSACTIONS: (0, 0), LIST_TRANSACTIONS: (0, 1),
    DESCRIBE_TOPIC_PARTITIONS: (0, 0), DESCRIBE_ACLS: (0, 3), CREATE_ACLS: (0, 3),
    DELETE_ACLS: (0, 3), DESCRIBE_USER_SCRAM_CREDENTIALS: (0, 0),
    ALTER_USER_SCRAM_CREDENTIALS: (0, 0),
}
"""Api key -> (min, max) version offered: for every API served, the range Apache Kafka
3.8's brokers advertise (docs/kafka.md, "What is offered"), so that clients that infer
a broker version from ApiVersions (kafka-python) infer 3.8."""

SCRAM_MECHANISMS = tuple(_SCRAM)
EARLIEST_TIMESTAMP, LATEST_TIMESTAMP = -2, -1  # ListOffsets special timestamps
MAX_TIMESTAMP, EARLIEST_LOCAL_TIMESTAMP = -3, -4  # v7 (KIP-734), v8 (KIP-405)
COORDINATOR_GROUP, COORDINATOR_TRANSACTION = 0, 1  # FindCoordinator key types
READ_COMMITTED = 1  # Fetch and ListOffsets isolation level
# Topic ids (Metadata v10+, Fetch v13+) name a topic's incarnation: derived from its
# name, creation time and creation offset, so they are stable across restarts and a
# topic deleted and created again gets a new one, as in Kafka.
_TOPIC_ID_NAMESPACE = uuid.UUID("6f1e4a0c-6b52-4a8e-9a57-6c2a3f4e9b10")

MAX_FETCH_MESSAGES = 1_000_000  # a fetch is bounded by bytes; this only caps the count


def now_ms() -> int:
    return time.time_ns() // 1_000_000


DELIVERY_HEADER_MODES = ("all", "uncompressed", "off")


@dataclass(frozen=True, slots=True)
class DoorOptions:
    """The ``[kafka]`` table of the server configuration."""

    node_id: int = 0
    advertised_host: str | None = None  # default: the address the client connected to
    advertised_port: int | None = None  # default: the bound port
    auto_create_topics: bool = True
    max_frame_size: int = 100 << 20
    group_min_session_timeout_ms: int = 6000
    group_max_session_timeout_ms: int = 1_800_000
    group_initial_rebalance_delay_ms: int = 0
    sasl_plain_users: Mapping[str, str] | None = None  # SASL PLAIN users; None = off
    # Close connections that send anything but ApiVersions/SASL before authenticating
    # (Kafka's SASL_PLAINTEXT listener). Always so with sasl_plain_users; with
    # [auth] enabled and this off, a connection without SASL is User:ANONYMOUS.
    sasl_required: bool = False
    cluster_id: str = "ferrymq"
    num_partitions: int = 1  # Kafka's num.partitions: topics this door creates by default
    transaction_max_timeout_ms: int = 900_000  # Kafka's transaction.max.timeout.ms
    # Kafka's transaction.abort.timed.out.transaction.cleanup.interval.ms
    transaction_abort_check_interval_ms: int = 10_000
    transactional_id_expiration_ms: int = 604_800_000  # transactional.id.expiration.ms
    # Which produced batches are searched for delivery-time headers (docs/kafka.md,
    # "Delivery time"): "all", "uncompressed" (compressed ones are stored verbatim
    # unsearched: their search costs a decompression), or "off".
    delivery_headers: str = "all"

    def __post_init__(self) -> None:
        if self.delivery_headers not in DELIVERY_HEADER_MODES:
            raise ValueError(f"[kafka] delivery_headers: one of "
                             f"{', '.join(DELIVERY_HEADER_MODES)}, not {self.delivery_headers!r}")
        if not isinstance(self.num_partitions, int) or self.num_partitions < 1:
            raise ValueError(f"[kafka] num_partitions: a positive integer, not "
                             f"{self.num_partitions!r}")
        for name in ("transaction_max_timeout_ms", "transaction_abort_check_interval_ms",
                     "transactional_id_expiration_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"[kafka] {name}: a positive integer, not {value!r}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> DoorOptions:
        kw = dict(options)
        listener = kw.pop("advertised_listener", None)
        if listener:
            host, _, port = str(listener).rpartition(":")
            kw["advertised_host"] = host or None
            kw["advertised_port"] = int(port)
        unknown = set(kw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"[kafka]: unknown option(s) {', '.join(sorted(unknown))}")
        return cls(**kw)


@dataclass
class Session:
    """Per-connection state the handlers need. ``principal`` is who the connection
    acts for: anonymous (with the client's address) until SASL names a user; every
    Broker call of the connection carries it."""

    client_host: str
    local_host: str
    authenticated: bool = True
    sasl_mechanism: str | None = None
    raw_sasl: bool = False  # SaslHandshake v0: the next frames are bare tokens
    sasl_done: bool = False  # SASL completed: no second handshake
    scram: ScramServer | None = None  # a SCRAM exchange under way
    failed: bool = False  # authentication failed: close after the answer
    principal: Principal = field(default=ANONYMOUS)
    advertised_port: int | None = None  # a TLS listener's port: its clients stay on TLS

    def __post_init__(self) -> None:
        if self.principal is ANONYMOUS:
            self.principal = anonymous(self.client_host)


class KafkaDoor(ClusterApis):
    """The Kafka door's translation layer. ``handle`` is called per request, in
    order per connection; it returns the response body, or None for no response
    (acks=0 produce)."""

    def __init__(self, broker: Broker, options: DoorOptions, port: int,
                 coordinator: Coordinator, producers: ProducerStates,
                 txns: TransactionCoordinator | None = None) -> None:
        self.broker = broker
        self.options = options
        self.port = options.advertised_port or port
        self.coordinator = coordinator
        self.producers = producers
        self.txns = txns if txns is not None else TransactionCoordinator(broker)
        self._topic_ids: dict[bytes, str] = {}
        self.log_starts: dict[tuple[str, int], int] = {}
        self.counters: dict[str, int] = {"connection_errors": 0}
        self.metrics = DoorMetrics(broker.metrics, "kafka")
        self.handlers: dict[int, Callable[[Header, Any, Session], Awaitable[Any]]] = {
            PRODUCE: self.produce, FETCH: self.fetch, LIST_OFFSETS: self.list_offsets,
            METADATA: self.metadata, OFFSET_COMMIT: self.offset_commit,
            OFFSET_FETCH: self.offset_fetch, FIND_COORDINATOR: self.find_coordinator,
            JOIN_GROUP: self.join_group, HEARTBEAT: self.heartbeat,
            LEAVE_GROUP: self.leave_group, SYNC_GROUP: self.sync_group,
            DESCRIBE_GROUPS: self.describe_groups, LIST_GROUPS: self.list_groups,
            SASL_HANDSHAKE: self.sasl_handshake, API_VERSIONS: self.api_versions,
            CREATE_TOPICS: self.create_topics, DELETE_TOPICS: self.delete_topics,
            INIT_PRODUCER_ID: self.init_producer_id, DESCRIBE_CONFIGS: self.describe_configs,
            DESCRIBE_ACLS: self.describe_acls, CREATE_ACLS: self.create_acls,
            DELETE_ACLS: self.delete_acls,
            DESCRIBE_USER_SCRAM_CREDENTIALS: self.describe_user_scram_credentials,
            ALTER_USER_SCRAM_CREDENTIALS: self.alter_user_scram_credentials,
            ALTER_CONFIGS: self.alter_configs,
            INCREMENTAL_ALTER_CONFIGS: self.incremental_alter_configs,
            SASL_AUTHENTICATE: self.sasl_authenticate,
            CREATE_PARTITIONS: self.create_partitions, DELETE_GROUPS: self.delete_groups,
            ADD_PARTITIONS_TO_TXN: self.add_partitions_to_txn,
            ADD_OFFSETS_TO_TXN: self.add_offsets_to_txn, END_TXN: self.end_txn,
            TXN_OFFSET_COMMIT: self.txn_offset_commit,
            DESCRIBE_TRANSACTIONS: self.describe_transactions,
            LIST_TRANSACTIONS: self.list_transactions,
            DELETE_RECORDS: self.delete_records, OFFSET_DELETE: self.offset_delete,
            OFFSET_FOR_LEADER_EPOCH: self.offset_for_leader_epoch,
            DESCRIBE_LOG_DIRS: self.describe_log_dirs, DESCRIBE_CLUSTER: self.describe_cluster,
            ALTER_REPLICA_LOG_DIRS: self.alter_replica_log_dirs,
            DESCRIBE_TOPIC_PARTITIONS: self.describe_topic_partitions,
            ELECT_LEADERS: self.elect_leaders,
            ALTER_PARTITION_REASSIGNMENTS: self.alter_partition_reassignments,
            LIST_PARTITION_REASSIGNMENTS: self.list_partition_reassignments,
            DESCRIBE_PRODUCERS: self.describe_producers,
        }
        missing = set(SUPPORTED) - set(self.handlers)
        assert not missing, f"SUPPORTED lists APIs without a handler: {missing}"

    # ================================================================ topic ids

    @staticmethod
    def topic_id(t: TopicConfig) -> bytes:
        """The topic's Kafka id (see ``_TOPIC_ID_NAMESPACE``)."""
        return uuid.uuid5(_TOPIC_ID_NAMESPACE,
                          f"{t.name}\x00{t.created_at}\x00{t.created_phys}").bytes

    def topic_by_id(self, topic_id: bytes, s: Session) -> TopicConfig | None:
        """The live topic whose id is ``topic_id``, or None (UNKNOWN_TOPIC_ID)."""
        topic_id = bytes(topic_id)
        name = self._topic_ids.get(topic_id)
        t = self._find(name, s) if name is not None else None
        if t is not None and self.topic_id(t) == topic_id:
            return t
        self._topic_ids = {self.topic_id(t): t.name for t in self.broker.topics(principal=s.principal)
                           if kafka_visible(t.name)}
        name = self._topic_ids.get(topic_id)
        return self._find(name, s) if name is not None else None

    def _find(self, name: str, s: Session) -> TopicConfig | None:
        try:
            return self.broker.find_topic(name, principal=s.principal)
        except FerryError:
            return None

    def log_start(self, topic: str, part: int, lo: int) -> int:
        """The partition's log start offset: the store's minimum, or where DeleteRecords
        moved it (docs/kafka.md, "DeleteRecords")."""
        moved = self.log_starts.get((topic, part))
        return lo if moved is None else max(lo, moved)

    def load_state(self) -> None:
        """Start-up: what the door keeps in the state log beside the coordinators'."""
        self.log_starts = {(str(k[0]), int(k[1])): int(str(v)) for k, v in
                           self.broker.door_state(NS_LOG_START, principal=SYSTEM)
                           if isinstance(k, tuple) and len(k) == 2}

    def host_for(self, session: Session) -> str:
        return self.options.advertised_host or session.local_host

    def port_for(self, session: Session) -> int:
        return session.advertised_port or self.port

    # ================================================================ ApiVersions

    def api_versions_body(self, error: int = ke.NONE) -> Any:
        R = schema.response_class(API_VERSIONS)
        return R(error_code=error, api_keys=tuple(
            R.ApiVersion(api_key=k, min_version=lo, max_version=hi)
            for k, (lo, hi) in sorted(SUPPORTED.items())))

    async def api_versions(self, h: Header, req: Any, s: Session) -> Any:
        return self.api_versions_body()

    # ================================================================ Metadata

    async def _ensure_topic(self, name: str, create: bool, s: Session) -> int:
        """NONE if the topic exists (created now when allowed), else an error code."""
        try:
            if self.broker.find_topic(name, principal=s.principal) is not None:
                return ke.NONE
        except FerryError as exc:
            return kafka_error(exc)
        if not kafka_visible(name):
            return ke.INVALID_TOPIC_EXCEPTION
        if not (create and self.options.auto_create_topics
                and self.broker.config.auto_create_topics):
            return ke.UNKNOWN_TOPIC_OR_PARTITION
        try:
            await self.broker.create_topic(name, self.options.num_partitions, exist_ok=True,
                                           principal=s.principal)
        except FerryError as exc:
            return kafka_error(exc)
        return ke.NONE

    async def metadata(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(METADATA)
        route = self.route(s)
        node = route.leader
        v = h.api_version
        zero = bytes(16)
        wanted: list[tuple[str | None, bytes]]
        if req.topics is None or (v == 0 and not req.topics):
            wanted = [(t.name, zero) for t in self.broker.topics(principal=s.principal)
                      if kafka_visible(t.name)]
            create = False
        else:
            wanted = [(t.name, bytes(t.topic_id) if v >= 10 else zero) for t in req.topics]
            create = req.allow_auto_topic_creation if v >= 4 else True
        topics = []
        for name, tid in wanted:
            if name is None and tid != zero:  # v12: a topic asked for by its id
                found = self.topic_by_id(tid, s)
                if found is None:
                    topics.append(R.MetadataResponseTopic(error_code=ke.UNKNOWN_TOPIC_ID,
                                                          name=None, topic_id=tid))
                    continue
                name = found.name
            err = await self._ensure_topic(name, create, s) if name is not None else \
                ke.INVALID_TOPIC_EXCEPTION
            t = self.broker.find_topic(name, principal=s.principal) \
                if err == ke.NONE and name is not None else None
            if t is None:
                topics.append(R.MetadataResponseTopic(
                    error_code=err or ke.UNKNOWN_TOPIC_OR_PARTITION, name=name or ""))
                continue
            parts = tuple(R.MetadataResponsePartition(
                error_code=ke.NONE if node >= 0 else ke.LEADER_NOT_AVAILABLE,
                partition_index=q, leader_id=node, leader_epoch=0,
                replica_nodes=route.replicas, isr_nodes=route.isr, offline_replicas=())
                for q in range(t.queues))
            topics.append(R.MetadataResponseTopic(error_code=ke.NONE, name=name,
                                                  topic_id=self.topic_id(t),
                                                  is_internal=False, partitions=parts))
        return R(brokers=tuple(R.MetadataResponseBroker(node_id=b, host=host, port=port, rack=None)
                               for b, host, port in route.brokers),
                 cluster_id=self.options.cluster_id, controller_id=route.leader,
                 topics=tuple(topics))

    # ================================================================ Produce

    async def produce(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(PRODUCE)
        acks = req.acks
        code = ke.INVALID_REQUIRED_ACKS if acks not in (0, 1, -1) else ke.NONE
        tid = req.transactional_id if h.api_version >= 3 else None
        responses = []
        for td in req.topic_data:
            parts = []
            for pd in td.partition_data:
                if code != ke.NONE:
                    parts.append(R.PartitionProduceResponse(index=pd.index, error_code=code))
                else:
                    parts.append(await self._produce_partition(R, td.name, pd.index, pd.records,
                                                               s, acks, tid))
            responses.append(R.TopicProduceResponse(name=td.name, partition_responses=tuple(parts)))
        if acks == 0:
            return None
        return R(responses=tuple(responses))

    async def _produce_partition(self, R: Any, topic: str, index: int, records: Any,
                                 s: Session, acks: int = 1, tid: str | None = None) -> Any:
        def fail(code: int, message: str | None = None) -> Any:
            return R.PartitionProduceResponse(index=index, error_code=code, base_offset=-1,
                                              error_message=message)

        if records is None or len(records) == 0:
            return fail(ke.CORRUPT_MESSAGE, "no records")
        err = await self._ensure_topic(topic, True, s)
        if err != ke.NONE:
            return fail(err)
        t = self.broker.find_topic(topic, principal=s.principal)
        if t is None or not 0 <= index < t.queues:
            return fail(ke.UNKNOWN_TOPIC_OR_PARTITION)
        try:
            magic = kr.magic_of(records)
            if magic == kr.MAGIC_V2:
                spans = kr.split_batches(records)
                for start, end in spans:
                    kr.check_crc(records, start, end - start)
                batches = [records[a:b] for a, b in spans]
            else:
                batches = [kr.upconvert(records, now_ms=now_ms())]
        except kr.CorruptRecords as exc:
            return fail(ke.CORRUPT_MESSAGE, str(exc))
        except kr.RecordsError as exc:
            return fail(ke.CORRUPT_MESSAGE, str(exc))
        base_offset = -1
        try:
            for batch in batches:
                off = await self._append(topic, index, batch, s.principal, _durability(acks),
                                         tid)
                self.metrics.messages_in(topic, bh.read_header(batch).records_count)
                if base_offset < 0:
                    base_offset = off
        except _ProduceError as exc:
            if base_offset < 0:
                return fail(exc.code)
        except FerryError as exc:
            return fail(kafka_error(exc), exc.detail)
        try:
            lo = self.broker.min_offset(topic, index, principal=s.principal)
        except FerryError as exc:
            return fail(kafka_error(exc), exc.detail)
        return R.PartitionProduceResponse(index=index, error_code=ke.NONE,
                                          base_offset=base_offset, log_append_time_ms=-1,
                                          log_start_offset=lo)

    async def _append(self, topic: str, queue_id: int, batch: Any, principal: Principal,
                      durability: Durability = Durability.LEADER, tid: str | None = None) -> int:
        """Append one v2 batch, applying the idempotent producer's sequence rules. A batch
        whose records ask for a delivery time is split into messages (``_put_split``);
        a transactional one becomes a half (``_append_transactional``); any other is
        stored verbatim."""
        hdr = bh.read_header(batch)
        if hdr.attributes & kr.CONTROL_FLAG:
            raise _ProduceError(ke.INVALID_RECORD)  # markers are the coordinator's
        if hdr.attributes & kr.TRANSACTIONAL_FLAG:
            return await self._append_transactional(topic, queue_id, batch, hdr, principal, tid)
        records = self._timed_records(batch, hdr)
        pid = hdr.producer_id
        if pid >= 0 and hdr.base_sequence >= 0:
            verdict, offset = self.producers.check(pid, hdr.producer_epoch, topic, queue_id,
                                                   hdr.base_sequence, hdr.records_count)
            if verdict is Verdict.DUPLICATE:
                return offset
            if verdict is not Verdict.APPEND:
                raise _ProduceError({
                    Verdict.OUT_OF_ORDER: ke.OUT_OF_ORDER_SEQUENCE_NUMBER,
                    Verdict.FENCED: ke.INVALID_PRODUCER_EPOCH,
                    Verdict.UNKNOWN_PRODUCER: ke.UNKNOWN_PRODUCER_ID}[verdict])
            if records is not None:
                offset = await self._put_split(topic, queue_id, records, principal, durability)
            else:
                offset = (await self.broker.put_kafka_batch(topic, queue_id, batch,
                                                            durability=durability,
                                                            principal=principal)).queue_offset
            self.producers.record(pid, hdr.producer_epoch, topic, queue_id, hdr.base_sequence,
                                  hdr.records_count, offset, now_ms())
            return offset
        if records is not None:
            return await self._put_split(topic, queue_id, records, principal, durability)
        result = await self.broker.put_kafka_batch(topic, queue_id, batch, durability=durability,
                                                   principal=principal)
        return result.queue_offset

    async def _append_transactional(self, topic: str, queue_id: int, batch: Any,
                                     hdr: bh.BatchHeader, principal: Principal,
                                     tid: str | None) -> int:
        """A batch of a Kafka transaction: checked against the transaction (its producer's
        current epoch, an added partition) and the sequence rules, then stored as a
        half of the core's engine, invisible to every door until EndTxn commits it
        (docs/transactions.md, "Kafka transactions"). Its offset is not known before
        the commit: the answer is -1, as for acks=0. A delivery-time header inside a
        transaction is refused (INVALID_RECORD): the batch is committed verbatim."""
        txns = self.txns
        pid, epoch = hdr.producer_id, hdr.producer_epoch
        try:
            t = txns.check_produce(tid, pid, epoch, topic, queue_id)
        except TxnError as exc:
            raise _ProduceError(exc.code) from None
        if hdr.base_sequence < 0:
            raise _ProduceError(ke.INVALID_RECORD)
        verdict, offset = self.producers.check(pid, epoch, topic, queue_id, hdr.base_sequence,
                                               hdr.records_count)
        if verdict is Verdict.DUPLICATE:
            return offset
        if verdict is not Verdict.APPEND:
            raise _ProduceError({
                Verdict.OUT_OF_ORDER: ke.OUT_OF_ORDER_SEQUENCE_NUMBER,
                Verdict.FENCED: ke.INVALID_PRODUCER_EPOCH,
                Verdict.UNKNOWN_PRODUCER: ke.UNKNOWN_PRODUCER_ID}[verdict])
        if self._timed_records(batch, hdr) is not None:
            raise _ProduceError(ke.INVALID_RECORD)
        seq = t.seq
        await self.broker.prepare_kafka_batch(topic, queue_id, batch, t.group,
                                              coordinator=TXN_COORDINATOR,
                                              properties=txns.half_properties(t),
                                              principal=principal)
        if t.epoch != epoch or t.seq != seq or t.state is not TxnState.ONGOING:
            # Fenced or ended while the half was stored: it can never be committed (the
            # engine commits only halves of the transaction being ended).
            raise _ProduceError(ke.INVALID_PRODUCER_EPOCH if t.epoch != epoch
                                else ke.INVALID_TXN_STATE)
        self.producers.record(pid, epoch, topic, queue_id, hdr.base_sequence,
                              hdr.records_count, -1, now_ms())
        return -1

    def _timed_records(self, batch: Any, hdr: bh.BatchHeader) -> tuple[kr.Record, ...] | None:
        """The batch's records when one of them carries a delivery-time header, else None.
        The common batch costs one search of its bytes (kr.batch_mentions: no copy,
        or one decompression when compressed); only a batch that mentions a header
        name is decoded. The ``delivery_headers`` option may skip the search."""
        mode = self.options.delivery_headers
        if mode == "off" or (mode == "uncompressed" and hdr.attributes & kr.COMPRESSION_MASK):
            return None
        try:
            if not kr.batch_mentions(batch, DELIVERY_MARK):
                return None
            records = kr.decode_batch(batch, verify=False).records
        except kr.RecordsError as exc:
            raise _ProduceError(ke.CORRUPT_MESSAGE) from exc
        return records if any(wants_delivery(r.headers) for r in records) else None

    async def _put_split(self, topic: str, queue_id: int, records: tuple[kr.Record, ...],
                         principal: Principal, durability: Durability = Durability.LEADER
                         ) -> int:
        """Store a batch with delivery-time records as messages: each timed record through
        ``Broker.put`` (a timer), the others together as one native batch record. Every
        timed record is checked before anything is stored (all or nothing, as for a
        verbatim batch). Returns the queue offset of the first immediate record, or -1
        when every record is timed (their offsets are assigned at delivery)."""
        broker = self.broker
        immediate: list[Message] = []
        timed: list[Message] = []
        for r in records:
            if wants_delivery(r.headers):
                m = delivery_message(topic, queue_id, r)
                broker.delivery_time(m.properties)  # InvalidDelay before anything is stored
                timed.append(m)
            else:
                immediate.append(Message(topic, r.value if r.value is not None else b"",
                                         {**kafka_to_properties(r.key, r.headers),
                                          PROPERTY_DOOR: DOOR}, queue_id,
                                         born_timestamp=r.timestamp))
        offset = -1
        if immediate:
            offset = (await broker.put(immediate, durability=durability,
                                       principal=principal)).queue_offset
        for m in timed:
            await broker.put(m, durability=durability, principal=principal)
        self.counters["timed_records"] = self.counters.get("timed_records", 0) + len(timed)
        return offset

    # ================================================================ Fetch

    async def fetch(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(FETCH)
        v = h.api_version
        magic = kr.MAGIC_V2 if v >= 4 else (kr.MAGIC_V1 if v >= 2 else kr.MAGIC_V0)
        max_bytes = req.max_bytes if v >= 3 else 0x7FFFFFFF
        ids: dict[str, bytes] = {}
        unknown_ids: list[Any] = []
        wanted = []
        for t in req.topics:
            name = t.topic
            if v >= 13:  # topics named by id (KIP-516)
                found = self.topic_by_id(t.topic_id, s)
                if found is None:
                    unknown_ids.append(t)
                    continue
                name = found.name
                ids[name] = bytes(t.topic_id)
            wanted += [(name, p.partition, p.fetch_offset, p.partition_max_bytes)
                       for p in t.partitions]
        deadline = trio.current_time() + max(0, req.max_wait_ms) / 1000
        while True:
            results, total = self._read_partitions(wanted, max_bytes, magic, s.principal)
            remaining = deadline - trio.current_time()
            if total >= max(1, req.min_bytes) or remaining <= 0 or not wanted:
                break
            positions = [(t, p, off) for (t, p, off, _m), r in zip(wanted, results, strict=True)
                         if r[1] == ke.NONE]
            if not positions:
                break
            await self.broker.wait_any(positions, remaining, principal=s.principal)
            if trio.current_time() >= deadline:
                results, total = self._read_partitions(wanted, max_bytes, magic, s.principal)
                break
        # The last stable offset is the high watermark and no transaction is ever aborted
        # inside a partition: a transaction's records enter it only at commit
        # (docs/transactions.md, "Kafka transactions"), so read_committed and
        # read_uncommitted consumers read the same records.
        by_topic: dict[str, list[Any]] = {}
        for (topic, part, _off, _m), (_t, err, hw, lo, data) in zip(wanted, results, strict=True):
            by_topic.setdefault(topic, []).append(R.PartitionData(
                partition_index=part, error_code=err, high_watermark=hw, last_stable_offset=hw,
                log_start_offset=lo, aborted_transactions=() if v >= 4 else None,
                preferred_read_replica=-1, records=data))
        responses = [R.FetchableTopicResponse(topic=t, topic_id=ids.get(t, bytes(16)),
                                              partitions=tuple(ps))
                     for t, ps in by_topic.items()]
        responses += [R.FetchableTopicResponse(topic_id=bytes(t.topic_id), partitions=tuple(
            R.PartitionData(partition_index=p.partition, error_code=ke.UNKNOWN_TOPIC_ID,
                            high_watermark=-1, last_stable_offset=-1, log_start_offset=-1,
                            aborted_transactions=(), records=None) for p in t.partitions))
            for t in unknown_ids]
        return R(throttle_time_ms=0, error_code=ke.NONE, session_id=0, responses=tuple(responses))

    def _read_partitions(self, wanted: list[tuple[str, int, int, int]], max_bytes: int,
                         magic: int, principal: Principal
                         ) -> tuple[list[tuple[str, int, int, int, list[Any]]], int]:
        out: list[tuple[str, int, int, int, list[Any]]] = []
        total = 0
        for topic, part, offset, part_max in wanted:
            budget = min(part_max, max_bytes - total)
            if budget <= 0 and total > 0:
                hw_lo = self._bounds(topic, part, principal)
                out.append((topic, ke.NONE if hw_lo else ke.UNKNOWN_TOPIC_OR_PARTITION,
                            *(hw_lo or (-1, -1)), []))
                continue
            err, hw, lo, chunks = self._read_one(topic, part, offset, max(1, budget), magic,
                                                 principal)
            size = sum(len(c) for c in chunks)
            total += size
            out.append((topic, err, hw, lo, chunks))
        return out, total

    def _bounds(self, topic: str, part: int, principal: Principal) -> tuple[int, int] | None:
        try:
            lo, hi = self.broker.queue_bounds(topic, part, principal=principal)
        except FerryError:
            return None
        return hi, min(hi, self.log_start(topic, part, lo))

    def _read_one(self, topic: str, part: int, offset: int, max_bytes: int, magic: int,
                  principal: Principal) -> tuple[int, int, int, list[Any]]:
        """(error, high watermark, log start, record chunks) for one partition."""
        try:
            lo, hw = self.broker.queue_bounds(topic, part, principal=principal)
            if self.log_starts:
                lo = min(hw, self.log_start(topic, part, lo))
            if offset < lo or offset > hw:
                return ke.OFFSET_OUT_OF_RANGE, hw, lo, []
            if offset == hw:
                return ke.NONE, hw, lo, []
            started = time.time_ns()
            got = self.broker.get(None, topic, part, offset, MAX_FETCH_MESSAGES, max_bytes,
                                  principal=principal)
        except FerryError as exc:
            return kafka_error(exc), -1, -1, []
        if got.status in (GetStatus.OFFSET_TOO_SMALL, GetStatus.OFFSET_OVERFLOW_BADLY):
            return ke.OFFSET_OUT_OF_RANGE, hw, lo, []
        self.metrics.messages_out(topic, got.message_count)
        tracer = self.broker.tracer
        if tracer is not None and got.records:  # the deliver span (core/tracing.py)
            tracer.delivered(Delivery("kafka", None, topic, part, got.messages(offset),
                                      started))
        if magic == kr.MAGIC_V2:
            return ke.NONE, hw, lo, batches_v2(got.records)
        return ke.NONE, hw, lo, [message_set(got.records, magic, offset)]

    # ================================================================ ListOffsets

    async def list_offsets(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(LIST_OFFSETS)
        v = h.api_version
        topics = []
        for t in req.topics:
            parts = []
            for p in t.partitions:
                try:
                    lo, hi = self.broker.queue_bounds(t.name, p.partition_index,
                                                      principal=s.principal)
                except FerryError as exc:
                    parts.append(R.ListOffsetsPartitionResponse(
                        partition_index=p.partition_index, error_code=kafka_error(exc)))
                    continue
                lo = min(hi, self.log_start(t.name, p.partition_index, lo))
                ts = -1
                if p.timestamp == LATEST_TIMESTAMP:
                    offset = hi  # also read_committed's: the last stable offset is the end
                elif p.timestamp in (EARLIEST_TIMESTAMP, EARLIEST_LOCAL_TIMESTAMP):
                    offset = lo  # no tiered storage: the local log starts where the log does
                elif p.timestamp == MAX_TIMESTAMP:
                    # The record with the largest timestamp of the topic's type (the time
                    # index keeps the maximum and where it was reached).
                    offset, ts = self.broker.max_timestamp(t.name, p.partition_index,
                                                           principal=s.principal)
                    if offset < lo:
                        offset = ts = -1
                elif p.timestamp < 0:
                    parts.append(R.ListOffsetsPartitionResponse(
                        partition_index=p.partition_index, error_code=ke.INVALID_REQUEST))
                    continue
                else:
                    # Kafka's rule: the first offset whose timestamp (CreateTime or
                    # LogAppendTime, as the topic says) is >= the one asked for.
                    offset, ts = self.broker.offset_for_timestamp(
                        t.name, p.partition_index, p.timestamp, principal=s.principal)
                    if offset >= hi:
                        offset = ts = -1
                    elif offset < lo:  # below a DeleteRecords start: the first record kept
                        offset, ts = lo, -1
                if v == 0:
                    parts.append(R.ListOffsetsPartitionResponse(
                        partition_index=p.partition_index, error_code=ke.NONE,
                        old_style_offsets=(offset,) if offset >= 0 else ()))
                else:
                    parts.append(R.ListOffsetsPartitionResponse(
                        partition_index=p.partition_index, error_code=ke.NONE, timestamp=ts,
                        offset=offset, leader_epoch=0))
            topics.append(R.ListOffsetsTopicResponse(name=t.name, partitions=tuple(parts)))
        return R(topics=tuple(topics))

    # ================================================================ offsets

    async def offset_commit(self, h: Header, req: Any, s: Session) -> Any:
        """OffsetCommit: the offsets go to ``Broker.commit_offset`` (the offsets every
        door shares); the metadata string and leader epoch beside them to the door's
        namespace ``kafka.offset_meta`` (``transactions.OffsetMetadata``). Answered once both
        are durable."""
        R = schema.response_class(OFFSET_COMMIT)
        v = h.api_version
        generation = req.generation_id_or_member_epoch if v >= 1 else -1
        member = req.member_id if v >= 1 else ""
        instance = req.group_instance_id if v >= 7 else None
        group_err = self.coordinator.check_commit(req.group_id, generation, member, instance) \
            if req.group_id else ke.INVALID_GROUP_ID
        topics = []
        meta: list[Any] = []
        for t in req.topics:
            parts = []
            for p in t.partitions:
                code = group_err
                if code == ke.NONE:
                    try:
                        self.broker.commit_offset(req.group_id, t.name, p.partition_index,
                                                  p.committed_offset, principal=s.principal)
                    except FerryError as exc:
                        code = kafka_error(exc)
                    else:
                        c = self.txns.offset_meta.change(
                            req.group_id, t.name, p.partition_index, p.committed_offset,
                            p.committed_metadata, p.committed_leader_epoch if v >= 6 else -1)
                        if c is not None:
                            meta.append(c)
                parts.append(R.OffsetCommitResponsePartition(partition_index=p.partition_index,
                                                             error_code=code))
            topics.append(R.OffsetCommitResponseTopic(name=t.name, partitions=tuple(parts)))
        if meta:
            await self.broker.put_door_state(meta, principal=SYSTEM)
        await self.broker.wait_durable()  # acknowledged commits survive a crash (sync flush)
        return R(topics=tuple(topics))

    async def offset_fetch(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(OFFSET_FETCH)
        v = h.api_version
        stable = bool(req.require_stable) if v >= 7 else False
        if v < 8:
            code, topics = self._fetch_offsets(R, req.group_id, req.topics, stable, s, False)
            return R(topics=topics, error_code=code)
        groups = []
        for g in req.groups:
            code, topics = self._fetch_offsets(R, g.group_id, g.topics, stable, s, True)
            groups.append(R.OffsetFetchResponseGroup(group_id=g.group_id, topics=topics,
                                                     error_code=code))
        return R(groups=tuple(groups))

    def _fetch_offsets(self, R: Any, group: str, wanted_topics: Any, stable: bool, s: Session,
                       grouped: bool) -> tuple[int, tuple[Any, ...]]:
        Topic = R.OffsetFetchResponseTopics if grouped else R.OffsetFetchResponseTopic
        Part = R.OffsetFetchResponsePartitions if grouped else R.OffsetFetchResponsePartition
        try:
            if wanted_topics is None:  # v2+: every topic the group committed
                wanted = [(t, sorted(qs)) for t, qs in
                          self.broker.committed_offsets(group, principal=s.principal).items()]
            else:
                wanted = [(t.name, list(t.partition_indexes)) for t in wanted_topics]
        except FerryError as exc:
            return kafka_error(exc), ()
        topics = []
        for name, parts in wanted:
            out = []
            for q in parts:
                if stable and self.txns.unstable(group, name, q):
                    out.append(Part(partition_index=q, committed_offset=-1,
                                    committed_leader_epoch=-1, metadata="",
                                    error_code=ke.UNSTABLE_OFFSET_COMMIT))
                    continue
                try:
                    off = self.broker.committed_offset(group, name, q, principal=s.principal)
                except FerryError as exc:
                    out.append(Part(partition_index=q, committed_offset=-1,
                                    committed_leader_epoch=-1, metadata="",
                                    error_code=kafka_error(exc)))
                    continue
                meta, epoch = self.txns.offset_meta.get(group, name, q, off) \
                    if off is not None else ("", -1)
                out.append(Part(partition_index=q, committed_offset=-1 if off is None else off,
                                committed_leader_epoch=epoch, metadata=meta,
                                error_code=ke.NONE))
            topics.append(Topic(name=name, partitions=tuple(out)))
        return ke.NONE, tuple(topics)

    # ================================================================ groups

    async def find_coordinator(self, h: Header, req: Any, s: Session) -> Any:
        """This broker coordinates every group and every transactional id (key types 0
        and 1); v4+ asks for several keys at once."""
        R = schema.response_class(FIND_COORDINATOR)
        route = self.route(s)
        node, host, port = route.leader, route.leader_host, route.leader_port
        known = req.key_type in (COORDINATOR_GROUP, COORDINATOR_TRANSACTION)
        code = ke.NONE if known else ke.INVALID_REQUEST
        message = None if known else f"unknown coordinator key type {req.key_type}"
        if known and node < 0:  # a slave that knows no master yet
            code, message, known = ke.COORDINATOR_NOT_AVAILABLE, "no master known yet", False
        if h.api_version < 4:
            if not known:
                return R(error_code=code, error_message=message, node_id=-1, host="", port=-1)
            return R(error_code=ke.NONE, error_message=None, node_id=node, host=host,
                     port=port)
        return R(coordinators=tuple(
            R.Coordinator(key=key, node_id=node if known else -1, host=host if known else "",
                          port=port if known else -1, error_code=code,
                          error_message=message)
            for key in req.coordinator_keys))

    def _refused(self, s: Session, kind: ResourceType, name: str | None,
                 operation: Operation) -> int:
        """The core's decision on a resource the door itself keeps (a group's membership,
        a transactional id): NONE or the refusal's Kafka code."""
        if name is None or self.broker.permits(kind, name, operation, principal=s.principal):
            return ke.NONE
        return (ke.GROUP_AUTHORIZATION_FAILED if kind is GROUP
                else ke.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)

    async def join_group(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(JOIN_GROUP)
        v = h.api_version
        denied = self._refused(s, GROUP, req.group_id, READ)
        if denied:
            return R(error_code=denied, generation_id=-1, protocol_name="", leader="",
                     member_id=req.member_id, members=())
        if self.slave_refusal() is not None:  # the group's master coordinates (FindCoordinator)
            return R(error_code=ke.NOT_COORDINATOR, generation_id=-1, protocol_name="",
                     leader="", member_id=req.member_id or "", members=())
        res = await self.coordinator.join(
            req.group_id, req.member_id, req.group_instance_id if v >= 5 else None,
            h.client_id or "", s.client_host, req.session_timeout_ms,
            req.rebalance_timeout_ms if v >= 1 else req.session_timeout_ms,
            req.protocol_type, [(p.name, bytes(p.metadata)) for p in req.protocols],
            require_known_id=v >= 4)
        return R(error_code=res.error, generation_id=res.generation,
                 protocol_type=req.protocol_type if res.error == ke.NONE else None,
                 protocol_name=res.protocol or "", leader=res.leader, member_id=res.member_id,
                 skip_assignment=False,
                 members=tuple(R.JoinGroupResponseMember(member_id=m, group_instance_id=i,
                                                         metadata=meta)
                               for m, i, meta in res.members))

    async def sync_group(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(SYNC_GROUP)
        v = h.api_version
        denied = self._refused(s, GROUP, req.group_id, READ)
        if denied:
            return R(error_code=denied, assignment=b"")
        if self.slave_refusal() is not None:
            return R(error_code=ke.NOT_COORDINATOR, assignment=b"")
        instance = req.group_instance_id if v >= 3 else None
        g = self.coordinator.describe(req.group_id)
        if v >= 5 and g is not None and g.protocol_type is not None and (
                (req.protocol_type is not None and req.protocol_type != g.protocol_type)
                or (req.protocol_name is not None and g.protocol is not None
                    and req.protocol_name != g.protocol)):
            return R(error_code=ke.INCONSISTENT_GROUP_PROTOCOL, assignment=b"")
        err, assignment = await self.coordinator.sync(
            req.group_id, req.generation_id, req.member_id,
            [(a.member_id, bytes(a.assignment)) for a in req.assignments], instance)
        g = self.coordinator.describe(req.group_id)
        ok = err == ke.NONE and g is not None
        return R(error_code=err, assignment=assignment,
                 protocol_type=g.protocol_type if ok and g is not None else None,
                 protocol_name=g.protocol if ok and g is not None else None)

    async def heartbeat(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(HEARTBEAT)
        denied = self._refused(s, GROUP, req.group_id, READ)
        if denied:
            return R(error_code=denied)
        if self.slave_refusal() is not None:
            return R(error_code=ke.NOT_COORDINATOR)
        instance = req.group_instance_id if h.api_version >= 3 else None
        return R(error_code=self.coordinator.heartbeat(req.group_id, req.generation_id,
                                                       req.member_id, instance))

    async def leave_group(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(LEAVE_GROUP)
        denied = self._refused(s, GROUP, req.group_id, READ)
        if denied:
            return R(error_code=denied, members=())
        if self.slave_refusal() is not None:
            return R(error_code=ke.NOT_COORDINATOR)
        if h.api_version < 3:
            code = self.coordinator.leave(req.group_id, req.member_id)
            await self.coordinator.save_dirty()
            return R(error_code=code)
        members = tuple(R.MemberResponse(
            member_id=m.member_id, group_instance_id=m.group_instance_id,
            error_code=self.coordinator.leave(req.group_id, m.member_id, m.group_instance_id))
            for m in req.members)
        await self.coordinator.save_dirty()
        return R(error_code=ke.NONE, members=members)

    async def describe_groups(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(DESCRIBE_GROUPS)
        out = []
        for gid in req.groups:
            g = self.coordinator.describe(gid)
            if g is None:
                known = gid in self.broker.known_groups(principal=s.principal)
                out.append(R.DescribedGroup(error_code=ke.NONE, group_id=gid,
                                            group_state=EMPTY if known else DEAD,
                                            protocol_type="consumer" if known else "",
                                            protocol_data=""))
                continue
            members = tuple(R.DescribedGroupMember(
                member_id=m.member_id, group_instance_id=m.group_instance_id,
                client_id=m.client_id, client_host=m.client_host,
                member_metadata=m.metadata(g.protocol or ""), member_assignment=m.assignment)
                for m in g.members.values())
            out.append(R.DescribedGroup(error_code=ke.NONE, group_id=gid, group_state=g.state,
                                        protocol_type=g.protocol_type or "",
                                        protocol_data=g.protocol or "", members=members))
        return R(groups=tuple(out))

    async def list_groups(self, h: Header, req: Any, s: Session) -> Any:
        """Every group (v4+: in the states asked for; v5+: of the types asked for, all
        of them "classic" here)."""
        R = schema.response_class(LIST_GROUPS)
        v = h.api_version
        seen: dict[str, tuple[str, str]] = {}
        for gid in self.broker.known_groups(principal=s.principal):
            seen.setdefault(gid, ("consumer", EMPTY.value))
        for gid, g in self.coordinator.groups.items():
            if g.members or gid in seen:
                seen[gid] = (g.protocol_type or "consumer", g.state.value)
        states = {x.lower() for x in req.states_filter} if v >= 4 else set()
        types = {x.lower() for x in req.types_filter} if v >= 5 else set()
        if types and "classic" not in types:
            seen = {}
        return R(error_code=ke.NONE, groups=tuple(
            R.ListedGroup(group_id=gid, protocol_type=pt, group_state=st, group_type="classic")
            for gid, (pt, st) in sorted(seen.items()) if not states or st.lower() in states))

    async def delete_groups(self, h: Header, req: Any, s: Session) -> Any:
        """A group with live members is NON_EMPTY_GROUP; otherwise its committed offsets,
        its FerryMQ group (subscription settings, pop state) and its coordinator state
        go, as they would through ``DELETE /v1/groups/{group}``."""
        R = schema.response_class(DELETE_GROUPS)
        out = []
        for gid in req.groups_names:
            code = await self.coordinator.forget(gid)
            if code == ke.NONE:
                try:
                    await self.broker.delete_group(gid, principal=s.principal)
                except FerryError as exc:
                    code = kafka_error(exc)
                else:
                    gone = self.txns.offset_meta.forget(group=gid)
                    if gone:
                        await self.broker.put_door_state(gone, principal=SYSTEM)
            out.append(R.DeletableGroupResult(group_id=gid, error_code=code))
        return R(results=tuple(out))

    # ================================================================ admin

    async def create_topics(self, h: Header, req: Any, s: Session) -> Any:
        async with self.broker.admin_batch():  # the topics of one request share one fsync
            return await self._create_topics(h, req, s)

    async def _create_topics(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(CREATE_TOPICS)
        out = []
        for t in req.topics:
            code, message = ke.NONE, None
            would_be: TopicConfig | None = None
            # -1 (v4+) asks for the broker's default: the door's num_partitions, as for
            # the topics it auto-creates (Kafka's num.partitions).
            n = t.num_partitions if t.num_partitions > 0 else self.options.num_partitions
            if t.assignments:
                n = len(t.assignments)
            if self._exists(t.name, s):
                code, message = ke.TOPIC_ALREADY_EXISTS, f"topic {t.name} exists"
            elif not kafka_visible(t.name):
                code, message = ke.INVALID_TOPIC_EXCEPTION, "invalid topic name"
            elif t.replication_factor > 1:
                code, message = ke.INVALID_REPLICATION_FACTOR, "this cluster has one broker"
            elif t.num_partitions == 0 or t.num_partitions < -1:
                code, message = ke.INVALID_PARTITIONS, "partitions must be positive"
            else:
                try:
                    would_be = await self.broker.create_topic(
                        t.name, n, attributes=configs.create_topic_configs(t.configs),
                        validate_only=req.validate_only, principal=s.principal)
                except FerryError as exc:
                    code, message = kafka_error(exc), exc.detail
            created = self._find(t.name, s) if code == ke.NONE else None
            out.append(R.CreatableTopicResult(
                name=t.name, error_code=code, error_message=message,
                topic_id=self.topic_id(created) if created is not None else bytes(16),
                num_partitions=n if code == ke.NONE else -1,
                replication_factor=1 if code == ke.NONE else -1,
                # v5+: the topic's configs, also those a validate_only request would get.
                configs=configs.created_configs(R, self.broker.config, would_be.attributes)
                if would_be is not None and code == ke.NONE and h.api_version >= 5 else ()))
        return R(topics=tuple(out))

    async def delete_topics(self, h: Header, req: Any, s: Session) -> Any:
        """DeleteTopics by name (v6+: or by topic id)."""
        R = schema.response_class(DELETE_TOPICS)
        zero = bytes(16)
        if h.api_version >= 6:
            wanted = [(t.name, bytes(t.topic_id)) for t in req.topics]
        else:
            wanted = [(name, zero) for name in req.topic_names]
        out = []
        for name, tid in wanted:
            code, message = ke.NONE, None
            if name is None:
                found = self.topic_by_id(tid, s) if tid != zero else None
                if found is None:
                    out.append(R.DeletableTopicResult(name=None, topic_id=tid,
                                                      error_code=ke.UNKNOWN_TOPIC_ID))
                    continue
                name = found.name
            t = self._find(name, s)
            if t is not None:
                tid = self.topic_id(t)
            try:
                await self.broker.delete_topic(name, principal=s.principal)
                self.producers.forget_topic(name)
                gone = self.txns.offset_meta.forget(topic=name)
                gone += [(NS_LOG_START, key, None) for key in list(self.log_starts)
                         if key[0] == name]
                for key in [k for k in self.log_starts if k[0] == name]:
                    del self.log_starts[key]
                if gone:
                    await self.broker.put_door_state(gone, principal=SYSTEM)
            except FerryError as exc:
                code, message = kafka_error(exc), exc.detail
            out.append(R.DeletableTopicResult(name=name, topic_id=tid, error_code=code,
                                              error_message=message))
        return R(responses=tuple(out))

    async def create_partitions(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(CREATE_PARTITIONS)
        out = []
        for t in req.topics:
            code, message = ke.NONE, None
            try:
                cur = self.broker.find_topic(t.name, principal=s.principal)
            except FerryError as exc:
                out.append(R.CreatePartitionsTopicResult(name=t.name, error_code=kafka_error(exc),
                                                         error_message=exc.detail))
                continue
            if cur is None:
                code = ke.UNKNOWN_TOPIC_OR_PARTITION
            elif t.count <= cur.queues:
                code, message = ke.INVALID_PARTITIONS, \
                    f"topic has {cur.queues} partitions; it can only grow"
            elif not req.validate_only:
                try:
                    await self.broker.update_topic(t.name, queues=t.count, principal=s.principal)
                except FerryError as exc:
                    code, message = kafka_error(exc), exc.detail
            out.append(R.CreatePartitionsTopicResult(name=t.name, error_code=code,
                                                     error_message=message))
        return R(results=tuple(out))

    # ================================================================ ACLs (acls.py)

    async def describe_acls(self, h: Header, req: Any, s: Session) -> Any:
        return acls.describe(schema.response_class(DESCRIBE_ACLS), req, self.broker, s.principal)

    async def create_acls(self, h: Header, req: Any, s: Session) -> Any:
        return await acls.create(schema.response_class(CREATE_ACLS), req, self.broker,
                                 s.principal)

    async def delete_acls(self, h: Header, req: Any, s: Session) -> Any:
        return await acls.delete(schema.response_class(DELETE_ACLS), req, self.broker,
                                 s.principal)

    async def describe_user_scram_credentials(self, h: Header, req: Any, s: Session) -> Any:
        return scram_admin.describe(schema.response_class(DESCRIBE_USER_SCRAM_CREDENTIALS), req,
                                    self.broker, s.principal)

    async def alter_user_scram_credentials(self, h: Header, req: Any, s: Session) -> Any:
        return await scram_admin.alter(schema.response_class(ALTER_USER_SCRAM_CREDENTIALS), req,
                                       self.broker, s.principal)

    async def describe_configs(self, h: Header, req: Any, s: Session) -> Any:
        """DescribeConfigs: the core's topic configs and broker settings (configs.py)."""
        extra = {"num.partitions": str(self.options.num_partitions),
                 "auto.create.topics.enable": str(self.options.auto_create_topics
                                                  and self.broker.config.auto_create_topics).lower(),
                 "advertised.listeners": f"PLAINTEXT://{self.host_for(s)}:{self.port}",
                 "node.id": str(self.options.node_id), "broker.id": str(self.options.node_id)}
        return configs.describe(schema.response_class(DESCRIBE_CONFIGS), h.api_version, req,
                                self.broker, s.principal, extra, self.options.node_id)

    async def alter_configs(self, h: Header, req: Any, s: Session) -> Any:
        return await configs.alter(schema.response_class(ALTER_CONFIGS), req, self.broker,
                                   s.principal, incremental=False)

    async def incremental_alter_configs(self, h: Header, req: Any, s: Session) -> Any:
        return await configs.alter(schema.response_class(INCREMENTAL_ALTER_CONFIGS), req,
                                   self.broker, s.principal, incremental=True)

    def _exists(self, topic: str, s: Session) -> bool:
        try:
            return self.broker.find_topic(topic, principal=s.principal) is not None
        except FerryError:
            return False

    # ================================================================ producers

    async def init_producer_id(self, h: Header, req: Any, s: Session) -> Any:
        """A producer id: a fresh one with epoch 0 for an idempotent producer; for a
        transactional id, the id's producer with its epoch bumped (fencing older
        producers), through the transaction coordinator (transactions.py)."""
        R = schema.response_class(INIT_PRODUCER_ID)
        v = h.api_version
        denied = self._refused(s, TRANSACTIONAL_ID, req.transactional_id, WRITE)
        if denied:
            return R(error_code=denied, producer_id=-1, producer_epoch=-1)
        if self.slave_refusal() is not None:  # producer ids are the master's to hand out
            if req.transactional_id is None:  # any broker answers an idempotent producer
                return await self.forward_init_producer_id(h, req)
            return R(error_code=ke.NOT_COORDINATOR, producer_id=-1, producer_epoch=-1)
        if req.transactional_id is None:
            pid = await self.txns.new_producer_id()
            self.producers.register(pid, 0, now_ms())
            return R(error_code=ke.NONE, producer_id=pid, producer_epoch=0)
        try:
            pid, epoch = await self.txns.init_producer_id(
                req.transactional_id, req.transaction_timeout_ms,
                req.producer_id if v >= 3 else -1, req.producer_epoch if v >= 3 else -1)
        except TxnError as exc:
            code = exc.code
            if code == ke.PRODUCER_FENCED and v < 4:
                code = ke.INVALID_PRODUCER_EPOCH  # older clients know only this one
            return R(error_code=code, producer_id=-1, producer_epoch=-1)
        except FerryError as exc:
            return R(error_code=kafka_error(exc), producer_id=-1, producer_epoch=-1)
        self.producers.register(pid, epoch, now_ms())
        return R(error_code=ke.NONE, producer_id=pid, producer_epoch=epoch)

    # ================================================================ transactions

    def _fenced_code(self, code: int, version: int) -> int:
        """PRODUCER_FENCED for clients that know it (v2+ of the coordinator requests),
        INVALID_PRODUCER_EPOCH for older ones (as Kafka's KafkaApis converts it)."""
        return ke.INVALID_PRODUCER_EPOCH if code == ke.PRODUCER_FENCED and version < 2 else code

    def _partition_exists(self, topic: str, part: int, s: Session) -> bool:
        t = self._find(topic, s)
        return t is not None and 0 <= part < t.queues

    async def add_partitions_to_txn(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(ADD_PARTITIONS_TO_TXN)
        v = h.api_version

        async def one(tid: str, pid: int, epoch: int, topics: Any, verify: bool
                      ) -> tuple[Any, ...]:
            wanted = [(t.name, p) for t in topics for p in t.partitions]
            denied = self._refused(s, TRANSACTIONAL_ID, tid, WRITE)
            try:
                if denied:
                    raise TxnError(denied)
                if verify:
                    codes = await self.txns.verify_partitions(tid, pid, epoch, wanted)
                else:
                    codes = await self.txns.add_partitions(
                        tid, pid, epoch, wanted, lambda t, p: self._partition_exists(t, p, s))
            except TxnError as exc:
                code = self._fenced_code(exc.code, v)
                codes = dict.fromkeys(wanted, code)
            except FerryError as exc:
                codes = dict.fromkeys(wanted, kafka_error(exc))
            by_topic: dict[str, list[Any]] = {}
            for (topic, p), code in codes.items():
                by_topic.setdefault(topic, []).append(R.AddPartitionsToTxnPartitionResult(
                    partition_index=p, partition_error_code=code))
            return tuple(R.AddPartitionsToTxnTopicResult(name=t, results_by_partition=tuple(ps))
                         for t, ps in by_topic.items())

        if v <= 3:
            return R(results_by_topic_v3_and_below=await one(
                req.v3_and_below_transactional_id, req.v3_and_below_producer_id,
                req.v3_and_below_producer_epoch, req.v3_and_below_topics, False))
        results = []
        for t in req.transactions:
            results.append(R.AddPartitionsToTxnResult(
                transactional_id=t.transactional_id,
                topic_results=await one(t.transactional_id, t.producer_id, t.producer_epoch,
                                        t.topics, t.verify_only)))
        return R(error_code=ke.NONE, results_by_transaction=tuple(results))

    async def add_offsets_to_txn(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(ADD_OFFSETS_TO_TXN)
        denied = (self._refused(s, TRANSACTIONAL_ID, req.transactional_id, WRITE)
                  or self._refused(s, GROUP, req.group_id, READ))
        if denied:
            return R(error_code=denied)
        try:
            await self.txns.add_offsets(req.transactional_id, req.producer_id,
                                        req.producer_epoch, req.group_id)
        except TxnError as exc:
            return R(error_code=self._fenced_code(exc.code, h.api_version))
        except FerryError as exc:
            return R(error_code=kafka_error(exc))
        return R(error_code=ke.NONE)

    async def end_txn(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(END_TXN)
        denied = self._refused(s, TRANSACTIONAL_ID, req.transactional_id, WRITE)
        if denied:
            return R(error_code=denied)
        try:
            await self.txns.end_txn(req.transactional_id, req.producer_id, req.producer_epoch,
                                    bool(req.committed))
        except TxnError as exc:
            return R(error_code=self._fenced_code(exc.code, h.api_version))
        except FerryError as exc:
            return R(error_code=kafka_error(exc))
        return R(error_code=ke.NONE)

    async def txn_offset_commit(self, h: Header, req: Any, s: Session) -> Any:
        """TxnOffsetCommit: offsets kept with the transaction (KIP-98), committed to the
        group at its commit; v3+ checks the member's generation (KIP-447)."""
        R = schema.response_class(TXN_OFFSET_COMMIT)
        v = h.api_version
        group = req.group_id

        def member_check() -> int:
            if v < 3 or (req.generation_id < 0 and not req.member_id):
                return ke.NONE
            return self.coordinator.check_commit(group, req.generation_id, req.member_id,
                                                 req.group_instance_id)

        offsets = []
        codes: dict[tuple[str, int], int] = {}
        for t in req.topics:
            for p in t.partitions:
                if not self._partition_exists(t.name, p.partition_index, s):
                    codes[(t.name, p.partition_index)] = ke.UNKNOWN_TOPIC_OR_PARTITION
                    continue
                offsets.append((t.name, p.partition_index, p.committed_offset,
                                p.committed_metadata,
                                p.committed_leader_epoch if v >= 2 else -1))
        try:
            code = await self.txns.txn_offset_commit(req.transactional_id, group,
                                                     req.producer_id, req.producer_epoch,
                                                     offsets, member_check) if group \
                else ke.INVALID_GROUP_ID
        except FerryError as exc:
            code = kafka_error(exc)
        for topic, p, *_rest in offsets:
            codes[(topic, p)] = code
        by_topic: dict[str, list[Any]] = {}
        for (topic, p), c in codes.items():
            by_topic.setdefault(topic, []).append(
                R.TxnOffsetCommitResponsePartition(partition_index=p, error_code=c))
        return R(topics=tuple(R.TxnOffsetCommitResponseTopic(name=t, partitions=tuple(ps))
                              for t, ps in by_topic.items()))

    async def describe_transactions(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(DESCRIBE_TRANSACTIONS)
        out = []
        for tid in req.transactional_ids:
            t = self.txns.describe(tid) if tid else None
            if t is None:
                out.append(R.TransactionState(
                    transactional_id=tid, transaction_state="", producer_id=-1,
                    producer_epoch=-1, error_code=ke.TRANSACTIONAL_ID_NOT_FOUND
                    if tid else ke.INVALID_REQUEST))
                continue
            topics: dict[str, list[int]] = {}
            for topic, p in sorted(t.partitions):
                topics.setdefault(topic, []).append(p)
            out.append(R.TransactionState(
                error_code=ke.NONE, transactional_id=tid, transaction_state=t.state.value,
                transaction_timeout_ms=t.timeout_ms, transaction_start_time_ms=t.start_ms,
                producer_id=t.producer_id, producer_epoch=t.epoch,
                topics=tuple(R.TopicData(topic=k, partitions=tuple(ps))
                             for k, ps in topics.items())))
        return R(transaction_states=tuple(out))

    async def list_transactions(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(LIST_TRANSACTIONS)
        known = {st.value for st in TxnState}
        states = set(req.state_filters)
        pids = set(req.producer_id_filters)
        min_ms = req.duration_filter if h.api_version >= 1 else -1
        now = now_ms()
        out = [R.TransactionState(transactional_id=t.transactional_id, producer_id=t.producer_id,
                                  transaction_state=t.state.value)
               for t in self.txns.listing()
               if (not states or t.state.value in states)
               and (not pids or t.producer_id in pids)
               and (min_ms < 0 or (t.start_ms >= 0 and now - t.start_ms >= min_ms))]
        return R(error_code=ke.NONE, unknown_state_filters=tuple(sorted(states - known)),
                 transaction_states=tuple(out))

    # ================================================================ SASL

    def sasl_mechanisms(self) -> tuple[str, ...]:
        """What SaslHandshake offers: PLAIN with ``sasl_plain_users`` or the broker's
        users (``[auth] enabled``); SCRAM-SHA-256/512 with the broker's users."""
        mechs: tuple[str, ...] = ()
        if self.options.sasl_plain_users is not None or self.broker.auth_enabled:
            mechs = ("PLAIN",)
        if self.broker.auth_enabled:
            mechs += SCRAM_MECHANISMS
        return mechs

    async def sasl_handshake(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(SASL_HANDSHAKE)
        mechs = self.sasl_mechanisms()
        if not mechs or s.sasl_done or s.sasl_mechanism is not None:
            return R(error_code=ke.ILLEGAL_SASL_STATE, mechanisms=mechs)
        if req.mechanism not in mechs:
            return R(error_code=ke.UNSUPPORTED_SASL_MECHANISM, mechanisms=mechs)
        s.sasl_mechanism = req.mechanism
        if req.mechanism in SCRAM_MECHANISMS:
            s.scram = ScramServer(req.mechanism)
        s.raw_sasl = h.api_version == 0
        return R(error_code=ke.NONE, mechanisms=mechs)

    def check_plain(self, token: bytes) -> str | None:
        """The user a SASL PLAIN token (RFC 4616: authzid NUL authcid NUL password)
        proves, or None: ``sasl_plain_users`` first, then the broker's users (their
        SCRAM verifiers check the password)."""
        parts = token.split(b"\x00")
        if len(parts) != 3:
            return None
        try:
            user = parts[1].decode()
            parts[2].decode()  # a password is UTF-8 (RFC 4616)
        except UnicodeDecodeError:
            return None
        if parts[0] and parts[0] != parts[1]:
            return None  # acting for another identity (an authzid) is not supported
        users = self.options.sasl_plain_users
        if users is not None and user in users:
            return user if hmac.compare_digest(users[user].encode(), parts[2]) else None
        if self.broker.authenticate(user, parts[2]):
            return user
        return None

    def login_plain(self, s: Session, token: bytes) -> bool:
        """Authenticate the connection with a SASL PLAIN token: from now on its calls
        carry the user's principal. False (and nothing changes) for a bad token."""
        user = self.check_plain(token)
        if user is None:
            return False
        s.authenticated = s.sasl_done = True
        s.principal = Principal(user, MECHANISM_SASL_PLAIN, s.client_host)
        return True

    def sasl_step(self, s: Session, token: bytes) -> tuple[bool | None, bytes]:
        """One SASL token of the connection's mechanism: (True, reply) when the
        exchange is complete, (None, reply) when it goes on, (False, b"") when it
        failed (the connection is then closed, as Kafka does)."""
        if s.sasl_mechanism == "PLAIN":
            return (True, b"") if self.login_plain(s, token) else (False, b"")
        scram = s.scram
        if scram is None:
            return False, b""
        try:
            if scram.state is ScramState.WAIT_CLIENT_FIRST:
                user = scram.first(token)
                return None, scram.challenge(self.broker.scram_verifier(user, scram.mechanism))
            reply = scram.final(token)
        except ScramError:
            return False, b""
        s.authenticated = s.sasl_done = True
        s.scram = None
        s.principal = Principal(scram.user, MECHANISM_SCRAM, s.client_host)
        return True, reply

    async def sasl_authenticate(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(SASL_AUTHENTICATE)
        if s.sasl_mechanism is None or s.sasl_done or s.raw_sasl:
            return R(error_code=ke.ILLEGAL_SASL_STATE, error_message="handshake first")
        done, reply = self.sasl_step(s, bytes(req.auth_bytes))
        if done is False:
            s.failed = True
            return R(error_code=ke.SASL_AUTHENTICATION_FAILED,
                     error_message="authentication failed")
        return R(error_code=ke.NONE, error_message=None, auth_bytes=reply)


class _ProduceError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(ke.NAMES.get(code, code))
        self.code = code


# ================================================================ record conversion


def kafka_batch_view(r: StoredRecord) -> memoryview:
    """The Kafka batch inside a stored FORMAT_KAFKA_BATCH record, without copying."""
    data = r.data
    body_len = int.from_bytes(data[rec.HEADER_SIZE - 4:rec.HEADER_SIZE], "big", signed=True)
    return memoryview(data)[rec.HEADER_SIZE:rec.HEADER_SIZE + body_len]


def batches_v2(records: tuple[StoredRecord, ...]) -> list[Any]:
    """Stored records as RecordBatch chunks: Kafka batches verbatim, runs of native
    messages packed into one batch each."""
    out: list[Any] = []
    pending: list[Any] = []
    for r in records:
        if r.format == rec.FORMAT_KAFKA_BATCH and not r.sys_flag & rec.BORNHOST_V6_FLAG \
                and not r.sys_flag & rec.STOREHOST_V6_FLAG:
            if pending:
                out.append(pack_messages(pending))
                pending = []
            out.append(kafka_batch_view(r))
        elif r.format == rec.FORMAT_KAFKA_BATCH:
            if pending:
                out.append(pack_messages(pending))
                pending = []
            out.append(r.decode().body)
        else:
            pending.extend(r.messages())
    if pending:
        out.append(pack_messages(pending))
    return out


def message_set(records: tuple[StoredRecord, ...], magic: int, from_offset: int) -> bytes:
    """Stored records as a v0/v1 message set (Fetch v0-v3): down-conversion."""
    rows: list[kr.Record] = []
    for r in records:
        if r.format == rec.FORMAT_KAFKA_BATCH:
            rows.extend(k for k in kr.decode_batch(r.decode().body, verify=False).records
                        if k.offset >= from_offset)
        else:
            for m in r.messages(from_offset):
                key, _headers = _native_key(m.properties)
                rows.append(kr.Record(m.queue_offset, m.born_timestamp or m.store_timestamp,
                                      key, m.body))
    return kr.downconvert(rows, magic)


def _native_key(props: Mapping[str, str]) -> tuple[bytes | None, list[Any]]:
    from .mapping import properties_to_kafka

    return properties_to_kafka(props)


def _durability(acks: int) -> Durability:
    """Kafka's acks as the core's durability: acks=all waits for the in-sync set
    (docs/cluster.md), 0 and 1 for the leader only."""
    return Durability.REPLICATED if acks == -1 else Durability.LEADER
