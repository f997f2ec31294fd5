"""Kafka requests translated into Broker calls: one method per API, request in, response out.

``SUPPORTED`` is the table ApiVersions advertises and the connection accepts;
nothing outside it is ever advertised. Kafka topics are FerryMQ topics and
partitions are queues, so offsets committed here are the broker's offsets.
See docs/kafka.md for the reasoning behind each mapping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from ...core.access import ANONYMOUS, MECHANISM_SASL_PLAIN, Principal, anonymous
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.message import GetStatus, Message, StoredRecord
from ...core.metrics import DoorMetrics
from ...protocols import record as rec
from ...protocols.kafka import batch_header as bh
from ...protocols.kafka import errors as ke
from ...protocols.kafka import records as kr
from ...protocols.kafka import schema
from ...protocols.kafka.connection import Header
from .errors import kafka_error
from .groups import DEAD, EMPTY, Coordinator
from .mapping import (
    DELIVERY_MARK,
    delivery_message,
    kafka_to_properties,
    pack_messages,
    wants_delivery,
)
from .producers import ProducerStates, Verdict

log = logging.getLogger("ferrymq.kafka")

PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP = 8, 9, 10, 11
HEARTBEAT, LEAVE_GROUP, SYNC_GROUP, DESCRIBE_GROUPS, LIST_GROUPS = 12, 13, 14, 15, 16
SASL_HANDSHAKE, API_VERSIONS, CREATE_TOPICS, DELETE_TOPICS = 17, 18, 19, 20
INIT_PRODUCER_ID, DESCRIBE_CONFIGS, SASL_AUTHENTICATE, CREATE_PARTITIONS = 22, 32, 36, 37
DELETE_GROUPS = 42

SUPPORTED: dict[int, tuple[int, int]] = {
    PRODUCE: (0, 8), FETCH: (0, 11), LIST_OFFSETS: (0, 5), METADATA: (0, 8),
    OFFSET_COMMIT: (0, 7), OFFSET_FETCH: (0, 6), FIND_COORDINATOR: (0, 3), JOIN_GROUP: (0, 5),
    HEARTBEAT: (0, 3), LEAVE_GROUP: (0, 3), SYNC_GROUP: (0, 3), DESCRIBE_GROUPS: (0, 3),
    LIST_GROUPS: (0, 2), SASL_HANDSHAKE: (0, 1), API_VERSIONS: (0, 3), CREATE_TOPICS: (0, 4),
    DELETE_TOPICS: (0, 3), INIT_PRODUCER_ID: (0, 2), DESCRIBE_CONFIGS: (0, 2),
    SASL_AUTHENTICATE: (0, 1), CREATE_PARTITIONS: (0, 1), DELETE_GROUPS: (0, 2),
}
"""Api key -> (min, max) version offered. The Kafka 0.11 table and a little more."""

EARLIEST_TIMESTAMP, LATEST_TIMESTAMP = -2, -1  # ListOffsets special timestamps
MAX_FETCH_MESSAGES = 1_000_000  # a fetch is bounded by bytes; this only caps the count
KAFKA_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
KAFKA_MAX_TOPIC = 249  # Kafka's topic name length limit
RESOURCE_TOPIC, RESOURCE_BROKER = 2, 4  # DescribeConfigs resource types
CONFIG_SOURCE_DEFAULT, CONFIG_SOURCE_STATIC_BROKER = 5, 4  # DescribeConfigs config sources


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def kafka_visible(name: str) -> bool:
    """Topics whose names Kafka clients accept (FerryMQ's %RETRY% and the like are not)."""
    return 0 < len(name) <= KAFKA_MAX_TOPIC and set(name) <= KAFKA_TOPIC_CHARS


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
    cluster_id: str = "ferrymq"
    # Which produced batches are searched for delivery-time headers (docs/kafka.md,
    # "Delivery time"): "all", "uncompressed" (compressed ones are stored verbatim
    # unsearched: their search costs a decompression), or "off".
    delivery_headers: str = "all"

    def __post_init__(self) -> None:
        if self.delivery_headers not in DELIVERY_HEADER_MODES:
            raise ValueError(f"[kafka] delivery_headers: one of "
                             f"{', '.join(DELIVERY_HEADER_MODES)}, not {self.delivery_headers!r}")

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
    raw_sasl: bool = False  # SaslHandshake v0: the next frame is a bare token
    principal: Principal = field(default=ANONYMOUS)

    def __post_init__(self) -> None:
        if self.principal is ANONYMOUS:
            self.principal = anonymous(self.client_host)


class KafkaDoor:
    """The Kafka door's translation layer. ``handle`` is called per request, in
    order per connection; it returns the response body, or None for no response
    (acks=0 produce)."""

    def __init__(self, broker: Broker, options: DoorOptions, port: int,
                 coordinator: Coordinator, producers: ProducerStates) -> None:
        self.broker = broker
        self.options = options
        self.port = options.advertised_port or port
        self.coordinator = coordinator
        self.producers = producers
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
            SASL_AUTHENTICATE: self.sasl_authenticate,
            CREATE_PARTITIONS: self.create_partitions, DELETE_GROUPS: self.delete_groups,
        }

    def host_for(self, session: Session) -> str:
        return self.options.advertised_host or session.local_host

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
            await self.broker.create_topic(name, exist_ok=True, principal=s.principal)
        except FerryError as exc:
            return kafka_error(exc)
        return ke.NONE

    async def metadata(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(METADATA)
        node = self.options.node_id
        v = h.api_version
        if req.topics is None or (v == 0 and not req.topics):
            names = [t.name for t in self.broker.topics(principal=s.principal)
                     if kafka_visible(t.name)]
            create = False
        else:
            names = [t.name for t in req.topics]
            create = req.allow_auto_topic_creation if v >= 4 else True
        topics = []
        for name in names:
            err = await self._ensure_topic(name, create, s) if name is not None else \
                ke.INVALID_TOPIC_EXCEPTION
            t = self.broker.find_topic(name, principal=s.principal) if err == ke.NONE else None
            if t is None:
                topics.append(R.MetadataResponseTopic(
                    error_code=err or ke.UNKNOWN_TOPIC_OR_PARTITION, name=name or ""))
                continue
            parts = tuple(R.MetadataResponsePartition(
                error_code=ke.NONE, partition_index=q, leader_id=node, leader_epoch=0,
                replica_nodes=(node,), isr_nodes=(node,), offline_replicas=())
                for q in range(t.queues))
            topics.append(R.MetadataResponseTopic(error_code=ke.NONE, name=name,
                                                  is_internal=False, partitions=parts))
        return R(brokers=(R.MetadataResponseBroker(node_id=node, host=self.host_for(s),
                                                   port=self.port, rack=None),),
                 cluster_id=self.options.cluster_id, controller_id=node, topics=tuple(topics))

    # ================================================================ Produce

    async def produce(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(PRODUCE)
        acks = req.acks
        if req.transactional_id is not None:
            code = ke.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        elif acks not in (0, 1, -1):
            code = ke.INVALID_REQUIRED_ACKS
        else:
            code = ke.NONE
        responses = []
        for td in req.topic_data:
            parts = []
            for pd in td.partition_data:
                if code != ke.NONE:
                    parts.append(R.PartitionProduceResponse(index=pd.index, error_code=code))
                else:
                    parts.append(await self._produce_partition(R, td.name, pd.index, pd.records,
                                                               s))
            responses.append(R.TopicProduceResponse(name=td.name, partition_responses=tuple(parts)))
        if acks == 0:
            return None
        return R(responses=tuple(responses))

    async def _produce_partition(self, R: Any, topic: str, index: int, records: Any,
                                 s: Session) -> Any:
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
                off = await self._append(topic, index, batch, s.principal)
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

    async def _append(self, topic: str, queue_id: int, batch: Any, principal: Principal) -> int:
        """Append one v2 batch, applying the idempotent producer's sequence rules. A batch
        whose records ask for a delivery time is split into messages (``_put_split``);
        any other is stored verbatim."""
        hdr = bh.read_header(batch)
        if hdr.attributes & kr.CONTROL_FLAG or hdr.attributes & kr.TRANSACTIONAL_FLAG:
            raise _ProduceError(ke.INVALID_RECORD)
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
                offset = await self._put_split(topic, queue_id, records, principal)
            else:
                offset = (await self.broker.put_kafka_batch(topic, queue_id, batch,
                                                            principal=principal)).queue_offset
            self.producers.record(pid, hdr.producer_epoch, topic, queue_id, hdr.base_sequence,
                                  hdr.records_count, offset, now_ms())
            return offset
        if records is not None:
            return await self._put_split(topic, queue_id, records, principal)
        result = await self.broker.put_kafka_batch(topic, queue_id, batch, principal=principal)
        return result.queue_offset

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
                         principal: Principal) -> int:
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
                                         kafka_to_properties(r.key, r.headers), queue_id,
                                         born_timestamp=r.timestamp))
        offset = -1
        if immediate:
            offset = (await broker.put(immediate, principal=principal)).queue_offset
        for m in timed:
            await broker.put(m, principal=principal)
        self.counters["timed_records"] = self.counters.get("timed_records", 0) + len(timed)
        return offset

    # ================================================================ Fetch

    async def fetch(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(FETCH)
        v = h.api_version
        magic = kr.MAGIC_V2 if v >= 4 else (kr.MAGIC_V1 if v >= 2 else kr.MAGIC_V0)
        max_bytes = req.max_bytes if v >= 3 else 0x7FFFFFFF
        wanted = [(t.topic, p.partition, p.fetch_offset, p.partition_max_bytes)
                  for t in req.topics for p in t.partitions]
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
        by_topic: dict[str, list[Any]] = {}
        for (topic, part, _off, _m), (_t, err, hw, lo, data) in zip(wanted, results, strict=True):
            by_topic.setdefault(topic, []).append(R.PartitionData(
                partition_index=part, error_code=err, high_watermark=hw, last_stable_offset=hw,
                log_start_offset=lo, aborted_transactions=() if v >= 4 else None,
                preferred_read_replica=-1, records=data))
        return R(throttle_time_ms=0, error_code=ke.NONE, session_id=0, responses=tuple(
            R.FetchableTopicResponse(topic=t, partitions=tuple(ps)) for t, ps in by_topic.items()))

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
        return hi, lo

    def _read_one(self, topic: str, part: int, offset: int, max_bytes: int, magic: int,
                  principal: Principal) -> tuple[int, int, int, list[Any]]:
        """(error, high watermark, log start, record chunks) for one partition."""
        try:
            lo, hw = self.broker.queue_bounds(topic, part, principal=principal)
            if offset < lo or offset > hw:
                return ke.OFFSET_OUT_OF_RANGE, hw, lo, []
            if offset == hw:
                return ke.NONE, hw, lo, []
            got = self.broker.get(None, topic, part, offset, MAX_FETCH_MESSAGES, max_bytes,
                                  principal=principal)
        except FerryError as exc:
            return kafka_error(exc), -1, -1, []
        if got.status in (GetStatus.OFFSET_TOO_SMALL, GetStatus.OFFSET_OVERFLOW_BADLY):
            return ke.OFFSET_OUT_OF_RANGE, hw, lo, []
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
                ts = -1
                if p.timestamp == LATEST_TIMESTAMP:
                    offset = hi
                elif p.timestamp == EARLIEST_TIMESTAMP:
                    offset = lo
                else:
                    offset = self.broker.offset_for_time(t.name, p.partition_index, p.timestamp,
                                                         principal=s.principal)
                    if offset >= hi:
                        offset = -1
                    else:
                        ts = self._timestamp_at(t.name, p.partition_index, offset, s.principal)
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

    def _timestamp_at(self, topic: str, part: int, offset: int, principal: Principal) -> int:
        got = self.broker.get(None, topic, part, offset, 1, 1, principal=principal)
        return got.records[0].store_timestamp if got.records else -1

    # ================================================================ offsets

    async def offset_commit(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(OFFSET_COMMIT)
        v = h.api_version
        generation = req.generation_id_or_member_epoch if v >= 1 else -1
        member = req.member_id if v >= 1 else ""
        group_err = self.coordinator.check_commit(req.group_id, generation, member) \
            if req.group_id else ke.INVALID_GROUP_ID
        topics = []
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
                parts.append(R.OffsetCommitResponsePartition(partition_index=p.partition_index,
                                                             error_code=code))
            topics.append(R.OffsetCommitResponseTopic(name=t.name, partitions=tuple(parts)))
        await self.broker.wait_durable()  # acknowledged commits survive a crash (sync flush)
        return R(topics=tuple(topics))

    async def offset_fetch(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(OFFSET_FETCH)
        group = req.group_id
        try:
            if req.topics is None:  # v2+: every topic the group committed
                wanted = [(t, sorted(qs)) for t, qs in
                          self.broker.committed_offsets(group, principal=s.principal).items()]
            else:
                wanted = [(t.name, list(t.partition_indexes)) for t in req.topics]
        except FerryError as exc:
            return R(topics=(), error_code=kafka_error(exc))
        topics = []
        for name, parts in wanted:
            out = []
            for q in parts:
                try:
                    off = self.broker.committed_offset(group, name, q, principal=s.principal)
                except FerryError as exc:
                    out.append(R.OffsetFetchResponsePartition(
                        partition_index=q, committed_offset=-1, committed_leader_epoch=-1,
                        metadata="", error_code=kafka_error(exc)))
                    continue
                out.append(R.OffsetFetchResponsePartition(
                    partition_index=q, committed_offset=-1 if off is None else off,
                    committed_leader_epoch=-1, metadata="", error_code=ke.NONE))
            topics.append(R.OffsetFetchResponseTopic(name=name, partitions=tuple(out)))
        return R(topics=tuple(topics), error_code=ke.NONE)

    # ================================================================ groups

    async def find_coordinator(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(FIND_COORDINATOR)
        return R(error_code=ke.NONE, error_message=None, node_id=self.options.node_id,
                 host=self.host_for(s), port=self.port)

    async def join_group(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(JOIN_GROUP)
        v = h.api_version
        res = await self.coordinator.join(
            req.group_id, req.member_id, req.group_instance_id if v >= 5 else None,
            h.client_id or "", s.client_host, req.session_timeout_ms,
            req.rebalance_timeout_ms if v >= 1 else req.session_timeout_ms,
            req.protocol_type, [(p.name, bytes(p.metadata)) for p in req.protocols],
            require_known_id=v >= 4)
        return R(error_code=res.error, generation_id=res.generation,
                 protocol_name=res.protocol or "", leader=res.leader, member_id=res.member_id,
                 members=tuple(R.JoinGroupResponseMember(member_id=m, group_instance_id=i,
                                                         metadata=meta)
                               for m, i, meta in res.members))

    async def sync_group(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(SYNC_GROUP)
        err, assignment = await self.coordinator.sync(
            req.group_id, req.generation_id, req.member_id,
            [(a.member_id, bytes(a.assignment)) for a in req.assignments])
        return R(error_code=err, assignment=assignment)

    async def heartbeat(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(HEARTBEAT)
        return R(error_code=self.coordinator.heartbeat(req.group_id, req.generation_id,
                                                       req.member_id))

    async def leave_group(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(LEAVE_GROUP)
        if h.api_version < 3:
            return R(error_code=self.coordinator.leave(req.group_id, req.member_id))
        members = tuple(R.MemberResponse(
            member_id=m.member_id, group_instance_id=m.group_instance_id,
            error_code=self.coordinator.leave(req.group_id, m.member_id, m.group_instance_id))
            for m in req.members)
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
        R = schema.response_class(LIST_GROUPS)
        seen: dict[str, str] = {}
        for gid in self.broker.known_groups(principal=s.principal):
            seen.setdefault(gid, "consumer")
        for gid, g in self.coordinator.groups.items():
            if g.members or gid in seen:
                seen[gid] = g.protocol_type or "consumer"
        return R(error_code=ke.NONE, groups=tuple(
            R.ListedGroup(group_id=gid, protocol_type=pt) for gid, pt in sorted(seen.items())))

    async def delete_groups(self, h: Header, req: Any, s: Session) -> Any:
        """A group with live members is NON_EMPTY_GROUP; otherwise its committed offsets,
        its FerryMQ group (subscription settings, pop state) and its coordinator state
        go, as they would through ``DELETE /v1/groups/{group}``."""
        R = schema.response_class(DELETE_GROUPS)
        out = []
        for gid in req.groups_names:
            code = self.coordinator.forget(gid)
            if code == ke.NONE:
                try:
                    await self.broker.delete_group(gid, principal=s.principal)
                except FerryError as exc:
                    code = kafka_error(exc)
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
            n = t.num_partitions if t.num_partitions > 0 else self.broker.config.default_queues
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
            elif not req.validate_only:
                try:
                    await self.broker.create_topic(t.name, n, principal=s.principal)
                except FerryError as exc:
                    code, message = kafka_error(exc), exc.detail
            out.append(R.CreatableTopicResult(name=t.name, error_code=code,
                                              error_message=message))
        return R(topics=tuple(out))

    async def delete_topics(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(DELETE_TOPICS)
        out = []
        for name in req.topic_names:
            code = ke.NONE
            try:
                await self.broker.delete_topic(name, principal=s.principal)
                self.producers.forget_topic(name)
            except FerryError as exc:
                code = kafka_error(exc)
            out.append(R.DeletableTopicResult(name=name, error_code=code))
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

    async def describe_configs(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(DESCRIBE_CONFIGS)
        cfg = self.broker.config
        out = []
        for r in req.resources:
            if r.resource_type == RESOURCE_TOPIC:
                if not self._exists(r.resource_name, s):
                    out.append(R.DescribeConfigsResult(
                        error_code=ke.UNKNOWN_TOPIC_OR_PARTITION, error_message="no such topic",
                        resource_type=r.resource_type, resource_name=r.resource_name))
                    continue
                values = {
                    "cleanup.policy": "delete",
                    "retention.ms": str(int(cfg.retention_hours * 3_600_000)),
                    "max.message.bytes": str(cfg.max_message_size),
                    "message.timestamp.type": "CreateTime",
                    "segment.bytes": str(cfg.segment_size),
                }
            elif r.resource_type == RESOURCE_BROKER:
                values = {
                    "log.retention.hours": str(int(cfg.retention_hours)),
                    "message.max.bytes": str(cfg.max_message_size),
                    "num.partitions": str(cfg.default_queues),
                    "auto.create.topics.enable": str(self.options.auto_create_topics
                                                     and cfg.auto_create_topics).lower(),
                    "log.segment.bytes": str(cfg.segment_size),
                }
            else:
                out.append(R.DescribeConfigsResult(
                    error_code=ke.INVALID_REQUEST, error_message="unsupported resource type",
                    resource_type=r.resource_type, resource_name=r.resource_name))
                continue
            keys = r.configuration_keys
            configs = tuple(R.DescribeConfigsResourceResult(
                name=k, value=v, read_only=True, is_default=True,
                config_source=CONFIG_SOURCE_DEFAULT, is_sensitive=False)
                for k, v in values.items() if keys is None or not keys or k in keys)
            out.append(R.DescribeConfigsResult(error_code=ke.NONE, error_message=None,
                                               resource_type=r.resource_type,
                                               resource_name=r.resource_name, configs=configs))
        return R(results=tuple(out))

    def _exists(self, topic: str, s: Session) -> bool:
        try:
            return self.broker.find_topic(topic, principal=s.principal) is not None
        except FerryError:
            return False

    # ================================================================ producers

    async def init_producer_id(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(INIT_PRODUCER_ID)
        if req.transactional_id is not None:
            # Transactions are not implemented (no AddPartitionsToTxn/EndTxn advertised).
            return R(error_code=ke.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        pid, epoch = self.producers.new_producer(now_ms())
        return R(error_code=ke.NONE, producer_id=pid, producer_epoch=epoch)

    # ================================================================ SASL

    async def sasl_handshake(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(SASL_HANDSHAKE)
        if self.options.sasl_plain_users is None:
            return R(error_code=ke.ILLEGAL_SASL_STATE, mechanisms=())
        if req.mechanism != "PLAIN":
            return R(error_code=ke.UNSUPPORTED_SASL_MECHANISM, mechanisms=("PLAIN",))
        s.sasl_mechanism = "PLAIN"
        s.raw_sasl = h.api_version == 0
        return R(error_code=ke.NONE, mechanisms=("PLAIN",))

    def check_plain(self, token: bytes) -> str | None:
        """The user a SASL PLAIN token (RFC 4616: authzid NUL authcid NUL password)
        proves, or None."""
        users = self.options.sasl_plain_users or {}
        parts = token.split(b"\x00")
        if len(parts) != 3:
            return None
        try:
            user, password = parts[1].decode(), parts[2].decode()
        except UnicodeDecodeError:
            return None
        return user if users.get(user) == password else None

    def login_plain(self, s: Session, token: bytes) -> bool:
        """Authenticate the connection with a SASL PLAIN token: from now on its calls
        carry the user's principal. False (and nothing changes) for a bad token."""
        user = self.check_plain(token)
        if user is None:
            return False
        s.authenticated = True
        s.principal = Principal(user, MECHANISM_SASL_PLAIN, s.client_host)
        return True

    async def sasl_authenticate(self, h: Header, req: Any, s: Session) -> Any:
        R = schema.response_class(SASL_AUTHENTICATE)
        if s.sasl_mechanism != "PLAIN" or s.authenticated:
            return R(error_code=ke.ILLEGAL_SASL_STATE, error_message="handshake first")
        if not self.login_plain(s, bytes(req.auth_bytes)):
            return R(error_code=ke.SASL_AUTHENTICATION_FAILED,
                     error_message="authentication failed")
        return R(error_code=ke.NONE, error_message=None, auth_bytes=b"")


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
