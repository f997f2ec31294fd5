"""The MQTT door's shared state: sessions, dispatchers tailing the store, retained, wills, $SYS.

The way of a message (docs/mqtt.md, "Delivery"):

    PUBLISH ─► Broker.put (queue = crc32(MQTT topic)) ─► store
    Dispatcher(T) ─ wait_any/get on T's queues ─► route(m): topic trie ─► Session.enqueue
        ─► inflight window / bounded pending queue ─► Client's out buffer ─► socket

Messages live only in the store: a dispatcher reads each message of broker
topic T once and matches its MQTT topic against one trie of every online
subscription, so the cost per message does not grow with the number of
filters. A persistent session is a consumer with its own committed offsets
in the core (group ``mqtt-session-<client id>``): what it missed while offline
is simply what lies after its offsets, read back when it reconnects
(``catch_up``), bounded by ``max_queued`` per queue.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import math
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from ...core.broker import Broker
from ...core.errors import FerryError, TopicNotFound
from ...core.message import GetStatus, Message, StoredRecord, now_ms
from ...core.metadata import TopicConfig
from ...protocols import record as rec
from ...protocols.mqtt import codec
from ...protocols.mqtt.connection import ServerLimits
from ...protocols.mqtt.constants import Prop
from ...protocols.mqtt.packets import Will
from ...protocols.mqtt.topics import TopicTrie, filter_matches
from . import mapping
from .auth import ClientAccess, load_acl, load_passwords
from .options import MqttOptions
from .state import Saver, load

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("ferrymq.mqtt")

DISPATCH_BATCH = 256  # messages per get: one wake-up drains a burst
DISPATCH_BYTES = 1 << 20
IDLE_WAIT = 1.0  # seconds a dispatcher long-polls before re-checking its topic
ROUTE_CACHE_MAX = 10_000  # cached MQTT topics (publish routes, plain property dicts)
DEADLINE_TICK = 0.1  # seconds: how late a keep alive or CONNECT timeout may be noticed
GROUP_PREFIX = "mqtt-session-"
SHARE_GROUP_PREFIX = "mqtt-share-"
MAX_GROUP_NAME = 255
VERSION = "ferrymq-mqtt 0.1"


@dataclass(frozen=True, slots=True)
class SubOpts:
    """One subscription's options (3.8.3.1) and its Subscription Identifier."""

    qos: int
    no_local: bool = False
    rap: bool = False  # retain as published
    rh: int = 0  # retain handling
    sub_id: int | None = None


class Delivery:
    """One message on its way to subscribers; encodings are cached so a fan-out
    to many subscribers encodes each variant once."""

    __slots__ = ("_v5", "cache", "expiry_at", "payload", "props", "publisher", "qos", "retain",
                 "src", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool,
                 props: dict[str, str], publisher: str,
                 src: tuple[str, int, int] | None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.props = props
        self.publisher = publisher
        self.src = src
        self.cache: dict[Any, bytes] = {}
        self._v5: bytes | None = None
        exp = props.get(mapping.MQTT_EXPIRY_AT)
        self.expiry_at = int(exp) if exp and exp.isdigit() else 0

    @classmethod
    def stored(cls, mqtt_topic: str, body: bytes, p: dict[str, str],
               src: tuple[str, int, int]) -> Delivery:
        return cls(mqtt_topic, body, mapping.qos_of(p), p.get(mapping.MQTT_RETAIN) == "1", p,
                   p.get(mapping.MQTT_PUBLISHER, ""), src)

    def expired(self, now: int) -> bool:
        return bool(self.expiry_at) and self.expiry_at <= now

    def v5_props(self, now: int) -> bytes:
        """The encoded 5.0 property block (the expiry interval counts down, 3.3.2.3.3)."""
        if self._v5 is not None:
            return self._v5
        props, _ = mapping.message_properties(self.props, now)
        data = codec.encode_properties(props)
        if not self.expiry_at:
            self._v5 = data
        return data


class Outgoing:
    """A message queued or in flight for one session."""

    __slots__ = ("delivery", "group", "pid", "qos", "released", "retain", "sub_ids")

    def __init__(self, delivery: Delivery, qos: int, retain: bool, sub_ids: tuple[int, ...],
                 group: SharedGroup | None = None) -> None:
        self.delivery = delivery
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.group = group
        self.pid = 0
        self.released = False  # QoS 2: PUBREC received, PUBREL sent


class Session:
    """MQTT session state (4.1): subscriptions, in-flight and queued messages, QoS 2
    ids. Lives on while its client is offline if its expiry interval allows."""

    __slots__ = ("client", "client_id", "disconnected_at", "dropped", "expiry", "generation",
                 "group", "hub", "inbound_qos2", "inflight", "next_pid", "pending", "shared",
                 "subs", "window")

    def __init__(self, hub: Hub, client_id: str) -> None:
        self.hub = hub
        self.client_id = client_id
        self.client: Client | None = None
        self.expiry = 0  # seconds after disconnect; 0xFFFFFFFF never
        self.subs: dict[str, SubOpts] = {}
        self.shared: dict[tuple[str, str], SubOpts] = {}
        self.inflight: dict[int, Outgoing] = {}
        # () until the first message has to wait: a deque costs 600 bytes even empty.
        self.pending: collections.deque[Outgoing] | tuple[()] = ()
        self.inbound_qos2: set[int] = set()
        self.next_pid = 1
        self.window = hub.options.max_inflight
        self.disconnected_at = 0
        self.generation = 0
        self.dropped = 0
        self.group = core_group_name(GROUP_PREFIX, client_id)

    @property
    def persistent(self) -> bool:
        return self.expiry > 0

    def _alloc_pid(self) -> int:
        pid = self.next_pid
        while pid in self.inflight:
            pid = pid % 0xFFFF + 1
        self.next_pid = pid % 0xFFFF + 1
        return pid

    def enqueue(self, d: Delivery, qos: int, retain: bool, sub_ids: tuple[int, ...],
                group: SharedGroup | None = None) -> None:
        """Hand a message to this (online) session: straight to the socket buffer
        when the window allows, else the bounded pending queue."""
        c = self.client
        if c is None:
            return
        if not self.pending and c.writable:
            if qos == 0:
                c.send_delivery(d, 0, retain, sub_ids, 0)
                return
            if len(self.inflight) < self.window:
                self._send_new(Outgoing(d, qos, retain, sub_ids, group))
                return
        elif qos == 0 and not self.pending:
            self.dropped += 1  # a slow socket: QoS 0 is the first to go
            self.hub.stats["dropped"] += 1
            return
        pending = self.pending
        if not pending:
            pending = self.pending = collections.deque()
        elif len(pending) >= self.hub.options.max_queued:
            self.dropped += 1
            self.hub.stats["dropped"] += 1
            if self.hub.options.overflow == "refuse":
                return
            pending.popleft()  # type: ignore[union-attr]
        pending.append(Outgoing(d, qos, retain, sub_ids, group))  # type: ignore[union-attr]

    def _send_new(self, out: Outgoing) -> None:
        c = self.client
        assert c is not None
        if out.qos:
            out.pid = self._alloc_pid()
            if c.send_delivery(out.delivery, out.qos, out.retain, out.sub_ids, out.pid):
                self.inflight[out.pid] = out
        else:
            c.send_delivery(out.delivery, 0, out.retain, out.sub_ids, 0)

    def pump(self) -> None:
        """Move queued messages out while the window and the socket buffer allow."""
        c = self.client
        pending = self.pending
        while pending and c is not None and c.writable:
            if pending[0].qos and len(self.inflight) >= self.window:
                return
            self._send_new(pending.popleft())  # type: ignore[union-attr]

    def resend_inflight(self) -> None:
        """4.4: on a resumed session, resend unacknowledged PUBLISHes (DUP set) and
        PUBRELs, in their original order."""
        c = self.client
        assert c is not None
        for pid, out in list(self.inflight.items()):
            if out.released:
                c.send_pubrel(pid)
            elif not c.send_delivery(out.delivery, out.qos, out.retain, out.sub_ids, pid,
                                     dup=True):
                del self.inflight[pid]

    def ack(self, pid: int) -> bool:
        out = self.inflight.pop(pid, None)
        if out is None:
            return False
        self.pump()
        return True

    def to_state(self) -> dict[str, Any]:
        return {
            "expiry": self.expiry, "disconnected_at": self.disconnected_at,
            "subs": [[f, o.qos, o.no_local, o.rap, o.rh, o.sub_id] for f, o in self.subs.items()],
            "shared": [[n, f, o.qos, o.sub_id] for (n, f), o in self.shared.items()],
            "qos2": sorted(self.inbound_qos2), "next_pid": self.next_pid,
            "inflight": [[pid, o.released, o.qos, o.retain, list(o.sub_ids), o.delivery.topic,
                          o.delivery.payload, o.delivery.props, o.delivery.publisher]
                         for pid, o in self.inflight.items()],
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.expiry = int(st.get("expiry", 0))
        self.disconnected_at = int(st.get("disconnected_at", 0)) or now_ms()
        self.subs = {f: SubOpts(q, bool(nl), bool(rap), rh, sid)
                     for f, q, nl, rap, rh, sid in st.get("subs", [])}
        self.shared = {(n, f): SubOpts(q, sub_id=sid) for n, f, q, sid in st.get("shared", [])}
        self.inbound_qos2 = set(st.get("qos2", []))
        self.next_pid = int(st.get("next_pid", 1)) or 1
        for pid, released, qos, retain, sub_ids, topic, payload, props, publisher in st.get(
                "inflight", []):
            d = Delivery(topic, payload, qos, retain, dict(props), publisher, None)
            out = Outgoing(d, qos, retain, tuple(sub_ids))
            out.pid = pid
            out.released = released
            self.inflight[pid] = out


class SharedGroup:
    """``$share/<name>/<filter>`` (4.8.2): each matching message goes to one online
    member, round robin, preferring members with room in their window."""

    def __init__(self, hub: Hub, name: str, topic_filter: str) -> None:
        self.hub = hub
        self.name = name
        self.filter = topic_filter
        self.members: dict[str, SubOpts] = {}
        self._rr = 0
        self.group = core_group_name(SHARE_GROUP_PREFIX, f"{name}/{topic_filter}")
        # (topic, queue) -> first offset routed while no member was online: the
        # group's committed offsets stop there, and ``Hub.catch_up_group`` starts there.
        self.held: dict[tuple[str, int], int] = {}

    def dispatch(self, d: Delivery) -> None:
        sessions = self.hub.sessions
        online = [(sessions[cid], so) for cid, so in self.members.items()
                  if cid in sessions and sessions[cid].client is not None]
        if not online:
            # Only offline persistent members: the message waits in the store.
            if d.src is not None:
                self.held.setdefault((d.src[0], d.src[1]), d.src[2])
            else:
                self.hub.stats["dropped"] += 1
            return
        n = len(online)
        start = self._rr % n
        choice = online[start]
        for i in range(n):
            s, so = online[(start + i) % n]
            if not s.pending and len(s.inflight) < s.window:
                choice = online[(start + i) % n]
                break
        self._rr = (self._rr + 1) % n
        s, so = choice
        s.enqueue(d, min(d.qos, so.qos), False, (so.sub_id,) if so.sub_id else (), self)


class RetainedStore:
    """Retained messages by topic, with a level trie so that a subscribing filter
    finds its matches without a scan of every retained topic."""

    def __init__(self) -> None:
        self.messages: dict[str, Delivery] = {}
        self._root: dict[str, Any] = {}

    def set(self, d: Delivery) -> None:
        node = self._root
        for level in d.topic.split("/"):
            node = node.setdefault(level, {})
        node["\x00"] = d  # a key no topic level can be (1.5.4)
        self.messages[d.topic] = d

    def delete(self, topic: str) -> bool:
        if self.messages.pop(topic, None) is None:
            return False
        path = [self._root]
        levels = topic.split("/")
        for level in levels:
            path.append(path[-1][level])
        del path[-1]["\x00"]
        for i in range(len(levels), 0, -1):
            if path[i]:
                break
            del path[i - 1][levels[i - 1]]
        return True

    def match(self, topic_filter: str) -> Iterator[Delivery]:
        levels = topic_filter.split("/")
        n = len(levels)

        def walk(node: dict[str, Any], i: int) -> Iterator[Delivery]:
            if i == n:
                d = node.get("\x00")
                if d is not None:
                    yield d
                return
            level = levels[i]
            if level == "#":
                stack = [node]
                while stack:
                    cur = stack.pop()
                    for k, v in cur.items():
                        if k == "\x00":
                            yield v
                        elif not (i == 0 and k.startswith("$")):
                            stack.append(v)
                return
            if level == "+":
                for k, v in node.items():
                    if k != "\x00" and not (i == 0 and k.startswith("$")):
                        yield from walk(v, i + 1)
                return
            nxt = node.get(level)
            if nxt is not None:
                yield from walk(nxt, i + 1)

        yield from walk(self._root, 0)


_MEMBER_HEAD = struct.Struct(">iiiii")
_BODY_LEN_AT = rec.HEADER_SIZE - 4
_PROPS_CACHE_MAX = 4096


class RecordReader:
    """Messages of stored records as (queue offset, body, properties), decoding only
    what MQTT delivery needs. Properties are decoded once per distinct byte string
    (the messages of one publisher and topic share theirs) into read-only dicts."""

    def __init__(self) -> None:
        self._props: dict[bytes, dict[str, str]] = {}

    def properties(self, raw: bytes) -> dict[str, str]:
        d = self._props.get(raw)
        if d is None:
            if len(self._props) >= _PROPS_CACHE_MAX:
                self._props.clear()
            d = self._props[raw] = rec.decode_properties(raw)
        return d

    def messages(self, r: StoredRecord, start: int) -> Iterator[tuple[int, bytes, dict[str, str]]]:
        sys_flag = r.sys_flag
        fmt = sys_flag & rec.FORMAT_MASK
        if (sys_flag & (rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG)
                or fmt not in (rec.FORMAT_SINGLE, rec.FORMAT_NATIVE_BATCH)):
            for m in r.messages(start):  # Kafka batches and the rare IPv6 record
                yield m.queue_offset, m.body, m.properties  # type: ignore[misc]
            return
        data = r.data
        body_len = _I32.unpack_from(data, _BODY_LEN_AT)[0]
        p = rec.HEADER_SIZE + body_len
        if fmt == rec.FORMAT_SINGLE:
            p += 1 + data[p]
            plen = (data[p] << 8) | data[p + 1]
            yield (r.queue_offset, data[rec.HEADER_SIZE:rec.HEADER_SIZE + body_len],
                   self.properties(data[p + 2:p + 2 + plen]))
            return
        offset = r.queue_offset
        pos = rec.HEADER_SIZE
        end = p
        unpack = _MEMBER_HEAD.unpack_from
        while pos < end:
            total, _, _, _, blen = unpack(data, pos)
            if offset >= start:
                q = pos + 20 + blen
                plen = (data[q] << 8) | data[q + 1]
                yield offset, data[pos + 20:q], self.properties(data[q + 2:q + 2 + plen])
            offset += 1
            pos += total


_I32 = struct.Struct(">i")


def _first(item: tuple[int, int, StoredRecord]) -> int:
    return item[0]


def core_group_name(prefix: str, ident: str) -> str:
    """A consumer group name for the core: readable when it fits, hashed when not."""
    name = prefix + ident
    if len(name) <= MAX_GROUP_NAME:
        return name
    return prefix + "h-" + hashlib.sha1(ident.encode()).hexdigest()


def first_broker_topic(topic_filter: str) -> str | None:
    """The broker topic a filter's first level names; None for a wildcard level
    (every topic) and for $-topics (never stored: $SYS is served from memory)."""
    first = topic_filter.split("/", 1)[0]
    if first in ("+", "#") or first.startswith("$"):
        return None
    return mapping.broker_topic(first)


class Dispatcher:
    """Tails every queue of one broker topic from where it started and routes each
    message through the hub (see the module docstring)."""

    def __init__(self, hub: Hub, topic: str, from_start: bool) -> None:
        self.hub = hub
        self.topic = topic
        self.positions: list[int] = []
        self.stopped = False
        self._from_start = from_start
        self._ensure_positions()

    def _ensure_positions(self) -> bool:
        broker = self.hub.broker
        try:
            t = broker.topic(self.topic)
        except (TopicNotFound, FerryError):
            self._from_start = True  # created later: every message of it is new
            return False
        while len(self.positions) < t.queues:
            q = len(self.positions)
            lo, hi = broker.queue_bounds(self.topic, q)
            self.positions.append(lo if self._from_start else hi)
        self._from_start = True  # queues added later start at their beginning
        return True

    def position(self, q: int) -> int:
        return self.positions[q] if q < len(self.positions) else 0

    def _pass(self) -> bool:
        """Read what is new in every queue and route it in CommitLog order, so that
        one publisher's messages to different MQTT topics (different queues) reach
        a wildcard subscriber in the order they were stored. All gets of a pass
        happen without yielding, so no put lands in between; where a queue had
        more than one get returns, records past its last one wait for the next
        pass. Returns whether any position moved."""
        hub = self.hub
        broker = hub.broker
        topic = self.topic
        positions = self.positions
        available = broker.available
        fetched: list[tuple[int, int, StoredRecord]] = []
        cut = math.inf
        moved = False
        for q in range(len(positions)):
            pos = positions[q]
            if not available(topic, q, pos):
                if pos == 0:
                    lo, _ = broker.queue_bounds(topic, q)
                    if lo > pos:
                        positions[q] = lo
                continue
            try:
                res = broker.get(None, topic, q, pos, DISPATCH_BATCH, DISPATCH_BYTES)
            except FerryError:
                break  # deleted or changed under us: re-check the topic
            if res.status is GetStatus.OFFSET_TOO_SMALL or not res.records:
                if res.next_offset != pos:
                    positions[q] = res.next_offset  # retention removed what we had not read
                    moved = True
                continue
            fetched.extend((r.physical_offset, q, r) for r in res.records)
            if res.next_offset < res.max_offset:
                cut = min(cut, res.records[-1].physical_offset)
        if len(fetched) > 1:
            fetched.sort(key=_first)
        route = hub.route
        read = hub.reader.messages
        for phys, q, r in fetched:
            if phys > cut:
                break
            pos = positions[q]
            try:
                for off, body, props in read(r, pos):
                    route(topic, q, off, body, props)
            except Exception:  # a bug must not stop the topic: skip, count, log
                hub.stats["internal_errors"] += 1
                log.exception("routing %s/%d from %d failed", topic, q, pos)
            positions[q] = r.queue_offset + r.count
            moved = True
        return moved

    async def run(self) -> None:
        hub = self.hub
        broker = hub.broker
        topic = self.topic
        default_queues = broker.config.default_queues
        while not self.stopped:
            if not self._ensure_positions():
                await broker.wait_any([(topic, q, 0) for q in range(default_queues)], IDLE_WAIT)
                continue
            moved = self._pass()
            if moved:
                await trio.sleep(0)
            elif await broker.wait_any([(topic, q, p) for q, p in enumerate(self.positions)],
                                       IDLE_WAIT):
                # Woken by a put: let the other ready readers put theirs too, so
                # one pass routes them all.
                await trio.sleep(0)


class Hub:
    """All MQTT state of one broker (see the module docstring)."""

    def __init__(self, broker: Broker, options: MqttOptions, state_dir: str) -> None:
        self.broker = broker
        self.options = options
        self.state_dir = state_dir
        self.sessions: dict[str, Session] = {}
        self.clients: set[Client] = set()  # connected, CONNECT or not yet
        self.trie: TopicTrie[str, SubOpts] = TopicTrie()
        # MQTT topic -> (trie matches, each client at most once): cleared whenever
        # the trie changes, so a stream of messages to one topic matches once.
        self._matches: dict[str, tuple[list[tuple[str, SubOpts]], bool]] = {}
        self.shared_trie: TopicTrie[tuple[str, str], SharedGroup] = TopicTrie()
        self.shared: dict[tuple[str, str], SharedGroup] = {}
        self.retained = RetainedStore()
        self.sys_retained = RetainedStore()
        self.dispatchers: dict[str, Dispatcher] = {}
        self.literal_watch: collections.Counter[str] = collections.Counter()
        self.wild_watch = 0
        self.wild_since = 0
        self.nursery: trio.Nursery | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        self.reader = RecordReader()
        # MQTT topic -> (its topic's config, broker topic, queue): a publish skips
        # the name mapping and the hash while the topic's config is unchanged.
        self._routes: dict[str, tuple[TopicConfig, str, int]] = {}
        self._plain_props: dict[tuple[str, int, bool, str], dict[str, str]] = {}
        self.started = time.monotonic()
        self.session_saver = Saver(f"{state_dir}/sessions.msgpack", self._sessions_state,
                                   options.save_interval)
        self.retained_saver = Saver(f"{state_dir}/retained.msgpack", self._retained_state,
                                    options.save_interval)
        self.limits = ServerLimits(options.max_packet_size, options.receive_maximum,
                                   options.topic_alias_maximum)
        self.open_access = ClientAccess(None)
        self.passwords = load_passwords(options.password_file) if options.password_file else None
        self.acl = load_acl(options.acl_file) if options.acl_file else None

    def access_for(self, username: str | None, client_id: str) -> ClientAccess:
        return ClientAccess(self.acl.rules_for(username, client_id) if self.acl else None)

    # ------------------------------------------------------------ publishing

    def cached_message(self, topic: str, payload: bytes, qos: int, retain: bool,
                       publisher: str, props: Mapping[int, Any]) -> Message | None:
        """``message_for`` without a coroutine, for a topic whose route is known and
        that carries no 5.0 properties (the hot path); None otherwise."""
        hit = self._routes.get(topic)
        if hit is None or props or self.broker.meta.topics.get(hit[1]) is not hit[0]:
            return None
        plain = self._plain_props.get((topic, qos, retain, publisher))
        if plain is None:
            return None
        return Message(hit[1], payload, plain, hit[2])

    async def message_for(self, topic: str, payload: bytes, qos: int, retain: bool,
                          publisher: str, props: Mapping[int, Any]) -> Message:
        """The broker Message of an MQTT application message, its topic created if
        needed (before any put, so wildcard subscribers see its first message)."""
        broker = self.broker
        hit = self._routes.get(topic)
        if hit is not None and broker.meta.topics.get(hit[1]) is hit[0]:
            bt, queue = hit[1], hit[2]
        else:
            bt = mapping.broker_topic(topic)
            try:
                t = broker.topic(bt)
            except TopicNotFound:
                if not broker.config.auto_create_topics:
                    raise
                self.topic_created(bt)
                t = await broker.create_topic(bt, exist_ok=True)
            queue = mapping.queue_for(topic, t.queues)
            if len(self._routes) >= ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[topic] = (t, bt, queue)
        if not props:
            # The common message has no MQTT 5 properties: its store properties
            # are the same dict for every message of a publisher and topic.
            key = (topic, qos, retain, publisher)
            plain = self._plain_props.get(key)
            if plain is None:
                if len(self._plain_props) >= ROUTE_CACHE_MAX:
                    self._plain_props.clear()
                plain = self._plain_props[key] = dict(
                    mapping.to_message(topic, queue, b"", qos, retain, publisher, {}).properties)
            return Message(bt, payload, plain, queue)
        return mapping.to_message(topic, queue, payload, qos, retain, publisher, props)

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool, publisher: str,
                      props: Mapping[int, Any]) -> None:
        """Store one application message (and retain it). Raises FerryError."""
        msg = await self.message_for(topic, payload, qos, retain, publisher, props)
        await self.broker.put(msg)
        self.stats["received"] += 1
        if retain:
            self.retain(Delivery(topic, payload, qos, True, dict(msg.properties), publisher, None))
            if qos:
                await self.retained_saver.save_now()

    async def publish_will(self, s: Session, generation: int, will: Will, delay: int,
                           access: ClientAccess) -> None:
        """3.1.2.5: publish a will, after its delay unless the session resumed."""
        if delay:
            await trio.sleep(delay)
            if s.generation != generation or s.client is not None:
                return  # the client came back in time (3.1.3.2.2)
        if will.topic.startswith("$") or not access.may_publish(will.topic):
            self.stats["publish_denied"] += 1
            return
        props = {k: v for k, v in will.properties.items() if k != Prop.WILL_DELAY_INTERVAL}
        try:
            await self.publish(will.topic, will.payload, will.qos, will.retain, s.client_id, props)
            self.stats["wills"] += 1
        except FerryError as exc:
            log.warning("will of %r not published: %s", s.client_id, exc)

    # ------------------------------------------------------------ lifecycle

    def load(self) -> None:
        st = load(self.retained_saver.path)
        for topic, payload, qos, props, publisher in st or []:
            self.retained.set(Delivery(topic, payload, qos, True, dict(props), publisher, None))
        st = load(self.session_saver.path)
        for cid, sst in (st or {}).items():
            s = Session(self, cid)
            s.load_state(sst)
            self.sessions[cid] = s
        log.info("mqtt state loaded: %d retained, %d sessions", len(self.retained.messages),
                 len(self.sessions))

    def save_sync(self) -> None:
        self.commit_positions()
        self.retained_saver.save_sync()
        self.session_saver.save_sync()

    def _retained_state(self) -> list[Any]:
        return [[d.topic, d.payload, d.qos, d.props, d.publisher]
                for d in self.retained.messages.values()]

    def _sessions_state(self) -> dict[str, Any]:
        return {cid: s.to_state() for cid, s in self.sessions.items() if s.persistent}

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.session_saver.run)
            nursery.start_soon(self.retained_saver.run)
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._deadlines)
            if self.options.sys_interval > 0:
                nursery.start_soon(self._sys_publisher)
            task_status.started()
            await trio.sleep_forever()

    async def _deadlines(self) -> None:
        """Every client's CONNECT timeout and keep alive, checked by one task (a
        cancel scope per connection would cost each idle client more memory)."""
        while True:
            await trio.sleep(DEADLINE_TICK)
            now = trio.current_time()
            for c in [c for c in self.clients if c.deadline <= now]:
                c.expire()

    async def _housekeeping(self) -> None:
        """Once a second: expire sessions, discover topics for wildcard subscriptions,
        commit persistent sessions' positions."""
        while True:
            await trio.sleep(1.0)
            now = now_ms()
            for s in list(self.sessions.values()):
                if (s.client is None and s.expiry != 0xFFFFFFFF
                        and s.disconnected_at + s.expiry * 1000 <= now):
                    self.end_session(s)
            self.ensure_dispatchers()
            self.commit_positions()

    # ------------------------------------------------------------ dispatchers

    def _watch(self, topic_filter: str, delta: int) -> None:
        t = first_broker_topic(topic_filter)
        if t is not None:
            self.literal_watch[t] += delta
            if self.literal_watch[t] <= 0:
                del self.literal_watch[t]
        elif not topic_filter.startswith("$"):
            if not self.wild_watch and delta > 0:
                self.wild_since = now_ms()
            self.wild_watch += delta

    def watched(self, topic: str) -> bool:
        if topic in self.literal_watch:
            return True
        if self.wild_watch > 0:
            t = self.broker.meta.topics.get(topic)
            return t is not None and not t.system
        return False

    def ensure_dispatchers(self) -> None:
        """Start a dispatcher for every watched topic; stop those no longer watched."""
        for t in self.literal_watch:
            if t not in self.dispatchers:
                self._start_dispatcher(t, False)
        if self.wild_watch > 0:
            for t in self.broker.topics():
                if not t.system and t.readable and t.name not in self.dispatchers:
                    self._start_dispatcher(t.name, t.created_at >= self.wild_since)
        for name, d in list(self.dispatchers.items()):
            if not self.watched(name):
                d.stopped = True
                del self.dispatchers[name]

    def _start_dispatcher(self, topic: str, from_start: bool) -> Dispatcher:
        d = self.dispatchers[topic] = Dispatcher(self, topic, from_start)
        assert self.nursery is not None
        self.nursery.start_soon(d.run)
        return d

    def topic_created(self, topic: str) -> None:
        """A publish is about to create ``topic``: a wildcard subscriber must see
        its first message, so its dispatcher starts before the put."""
        if self.wild_watch > 0 and topic not in self.dispatchers:
            self._start_dispatcher(topic, True)

    # ------------------------------------------------------------ routing

    def route(self, broker_topic: str, queue_id: int, offset: int, body: bytes,
              props: dict[str, str]) -> None:
        """One stored message to every matching online subscription."""
        topic = props.get(mapping.MQTT_TOPIC) or broker_topic
        d: Delivery | None = None
        hit = self._matches.get(topic)
        if hit is None:
            found = list(self.trie.match(topic))
            hit = (found, len(found) <= 1 or len({cid for cid, _ in found}) == len(found))
            if len(self._matches) >= ROUTE_CACHE_MAX:
                self._matches.clear()
            self._matches[topic] = hit
        matches, once_each = hit
        if matches:
            d = Delivery.stored(topic, body, props, (broker_topic, queue_id, offset))
            if once_each:
                self._deliver_single(d, matches)
            else:
                hits: dict[str, list[SubOpts]] = {}
                for cid, so in matches:
                    hits.setdefault(cid, []).append(so)
                self.deliver(d, hits)
        if self.shared:
            for _, group in self.shared_trie.match(topic):
                if d is None:
                    d = Delivery.stored(topic, body, props, (broker_topic, queue_id, offset))
                group.dispatch(d)

    def _deliver_single(self, d: Delivery, matches: list[tuple[str, SubOpts]]) -> None:
        """``deliver`` when each client matched through one subscription (the
        common case: no grouping needed)."""
        sessions = self.sessions
        publisher = d.publisher
        dq = d.qos
        for cid, so in matches:
            if so.no_local and publisher == cid:
                continue
            s = sessions.get(cid)
            if s is None:
                continue
            c = s.client
            if c is not None and c.access.read_denies and not c.access.may_read(d.topic):
                continue
            sid = so.sub_id
            s.enqueue(d, so.qos if so.qos < dq else dq, d.retain and so.rap,
                      (sid,) if sid else ())

    def deliver(self, d: Delivery, hits: dict[str, list[SubOpts]]) -> None:
        sessions = self.sessions
        publisher = d.publisher
        for cid, sos in hits.items():
            s = sessions.get(cid)
            if s is None:
                continue
            c = s.client
            if c is not None and c.access.read_denies and not c.access.may_read(d.topic):
                continue
            if len(sos) == 1:
                so = sos[0]
                if so.no_local and publisher == cid:
                    continue
                s.enqueue(d, min(so.qos, d.qos), d.retain and so.rap,
                          (so.sub_id,) if so.sub_id else ())
                continue
            # 3.3.4 / 3.1.1 3.3.5: overlapping subscriptions, one copy at the
            # highest QoS, carrying every matching Subscription Identifier.
            qos = -1
            sub_ids = []
            rap = False
            for so in sos:
                if so.no_local and publisher == cid:
                    continue
                qos = max(qos, so.qos)
                rap |= so.rap
                if so.sub_id:
                    sub_ids.append(so.sub_id)
            if qos >= 0:
                s.enqueue(d, min(qos, d.qos), d.retain and rap, tuple(sub_ids))

    def publish_local(self, d: Delivery) -> None:
        """Deliver a message that is not stored ($SYS) to matching online sessions."""
        hits: dict[str, list[SubOpts]] = {}
        for cid, so in self.trie.match(d.topic):
            hits.setdefault(cid, []).append(so)
        self.deliver(d, hits)

    # ------------------------------------------------------------ sessions

    def attach(self, s: Session, resumed: bool = False) -> None:
        """An online session's subscriptions enter the trie and start their
        dispatchers; shared subscriptions that waited for a member get their backlog."""
        for f, so in s.subs.items():
            self.trie.add(f, s.client_id, so)
            self._matches.clear()
            self._watch(f, +1)
        joined = []
        for (name, f), so in s.shared.items():
            created = (name, f) not in self.shared
            joined.append((self._join_shared(s.client_id, name, f, so), created))
        if s.subs or joined:  # a client without subscriptions needs no dispatcher check
            self.ensure_dispatchers()
        for g, created in joined:
            if g.held or (created and resumed):
                self.catch_up_group(g, from_committed=created)

    def detach(self, s: Session) -> None:
        """The client went away: its subscriptions leave the trie (a persistent
        session keeps them and its committed positions)."""
        if s.persistent:
            self.commit_session(s)
        for f in s.subs:
            self.trie.remove(f, s.client_id)
            self._matches.clear()
            self._watch(f, -1)
        requeue = [o for o in s.pending if o.group is not None]
        s.pending = ()
        for (name, f) in list(s.shared):
            self._leave_shared(s.client_id, name, f, keep=s.persistent)
        for out in requeue:
            if out.group is not None and out.group.members:
                out.group.dispatch(out.delivery)  # 4.8.2: another member gets it

    def end_session(self, s: Session) -> None:
        """The session is over (clean start, expiry): forget it entirely."""
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
        for (name, f) in list(s.shared):
            self._leave_shared(s.client_id, name, f, keep=False)
        if s.persistent or s.inflight:
            self.session_saver.mark()

    def subscribe(self, s: Session, share: str | None, topic_filter: str, so: SubOpts) -> bool:
        """Add or replace a subscription of an online session; True if it existed."""
        if share is not None:
            key = (share, topic_filter)
            existed = key in s.shared
            s.shared[key] = so
            self._join_shared(s.client_id, share, topic_filter, so)
        else:
            existed = topic_filter in s.subs
            s.subs[topic_filter] = so
            self.trie.add(topic_filter, s.client_id, so)
            self._matches.clear()
            if not existed:
                self._watch(topic_filter, +1)
        self.ensure_dispatchers()
        if s.persistent:
            self.session_saver.mark()
        return existed

    def unsubscribe(self, s: Session, share: str | None, topic_filter: str) -> bool:
        if share is not None:
            if s.shared.pop((share, topic_filter), None) is None:
                return False
            self._leave_shared(s.client_id, share, topic_filter, keep=False)
        else:
            if s.subs.pop(topic_filter, None) is None:
                return False
            self.trie.remove(topic_filter, s.client_id)
            self._matches.clear()
            self._watch(topic_filter, -1)
        if s.persistent:
            self.session_saver.mark()
        return True

    def _join_shared(self, cid: str, name: str, topic_filter: str, so: SubOpts
                     ) -> SharedGroup:
        key = (name, topic_filter)
        g = self.shared.get(key)
        if g is None:
            g = self.shared[key] = SharedGroup(self, name, topic_filter)
            self.shared_trie.add(topic_filter, key, g)
            self._watch(topic_filter, +1)
        g.members[cid] = so
        return g

    def _leave_shared(self, cid: str, name: str, topic_filter: str, keep: bool) -> None:
        """``keep``: an offline persistent member stays a member (it gets nothing
        while offline: the others, or nobody, take its share)."""
        key = (name, topic_filter)
        g = self.shared.get(key)
        if g is None:
            return
        if not keep:
            g.members.pop(cid, None)
        if not g.members:
            del self.shared[key]
            self.shared_trie.remove(topic_filter, key)
            self._watch(topic_filter, -1)

    def _session_topics(self, s: Session) -> set[str]:
        topics = set()
        wild = False
        for f in s.subs:
            t = first_broker_topic(f)
            if t is not None:
                topics.add(t)
            elif not f.startswith("$"):
                wild = True
        if wild:
            topics.update(t.name for t in self.broker.topics() if not t.system)
        return topics

    def commit_session(self, s: Session) -> None:
        """Record in the core how far this session has been served: per queue, the
        dispatcher's position, or the first message still waiting in its queue."""
        broker = self.broker
        for t in self._session_topics(s):
            d = self.dispatchers.get(t)
            if d is None or not d.positions:
                continue
            pos = list(d.positions)
            for out in s.pending:
                src = out.delivery.src
                if out.group is None and src is not None and src[0] == t and src[1] < len(pos):
                    pos[src[1]] = min(pos[src[1]], src[2])
            for q, off in enumerate(pos):
                try:
                    broker.commit_offset(s.group, t, q, off)
                except FerryError as exc:
                    log.warning("cannot commit %s %s/%d: %s", s.group, t, q, exc)

    def commit_positions(self) -> None:
        for s in self.sessions.values():
            if s.persistent and s.client is not None:
                self.commit_session(s)
        for g in self.shared.values():
            for t in self._filter_topics(g.filter):
                d = self.dispatchers.get(t)
                if d is not None:
                    for q, off in enumerate(d.positions):
                        with contextlib.suppress(FerryError):  # the topic went away
                            self.broker.commit_offset(g.group, t, q,
                                                      g.held.get((t, q), off))

    def _filter_topics(self, topic_filter: str) -> list[str]:
        t = first_broker_topic(topic_filter)
        if t is not None:
            return [t]
        if topic_filter.startswith("$"):
            return []
        return [x.name for x in self.broker.topics() if not x.system]

    def _backlog(self, t: str, starts: dict[int, int]) -> Iterator[tuple[str, Delivery]]:
        """(MQTT topic, delivery) of topic ``t``'s messages from ``starts`` (queue ->
        offset) to its dispatcher's positions, in CommitLog order, at most
        ``max_queued`` per queue: further behind, skip ahead (``drop_oldest``) or
        keep the oldest (``refuse``), counting the rest as dropped."""
        broker = self.broker
        d = self.dispatchers.get(t)
        if d is None or not d.positions:
            return
        limit = self.options.max_queued
        refuse = self.options.overflow == "refuse"
        backlog: list[tuple[int, int, int, str, bytes, dict[str, str]]] = []
        for q, start in starts.items():
            end = d.position(q)
            lo, _ = broker.queue_bounds(t, q)
            start = max(start, lo)
            if start >= end:
                continue
            if end - start > limit:
                self.stats["dropped"] += end - start - limit
                if refuse:
                    end = start + limit
                else:
                    start = end - limit
            pos = start
            while pos < end:
                res = broker.get(None, t, q, pos, DISPATCH_BATCH, DISPATCH_BYTES)
                if not res.records:
                    break
                for r in res.records:
                    for off, body, props in self.reader.messages(r, pos):
                        if off >= end:
                            break
                        topic = props.get(mapping.MQTT_TOPIC) or t
                        backlog.append((r.physical_offset, off, q, topic, body, props))
                pos = res.next_offset
        backlog.sort(key=lambda m: (m[0], m[1]))  # CommitLog order, as live delivery
        for _, off, q, topic, body, props in backlog:
            yield topic, Delivery.stored(topic, body, props, (t, q, off))

    def catch_up(self, s: Session) -> None:
        """Queue what a resumed persistent session missed: the messages between its
        committed offsets and its dispatchers' positions that match its filters
        (bounded as ``_backlog`` says). Runs without yielding, so no live message
        can overtake the backlog."""
        if not s.subs:
            return
        broker = self.broker
        trie: TopicTrie[int, SubOpts] = TopicTrie()
        for i, (f, so) in enumerate(s.subs.items()):
            trie.add(f, i, so)
        for t in sorted(self._session_topics(s)):
            d = self.dispatchers.get(t)
            if d is None:
                continue
            starts = {}
            for q in range(len(d.positions)):
                start = broker.committed_offset(s.group, t, q)
                if start is None:
                    # A topic or queue born while the session was away: what was
                    # stored since it left is what it missed.
                    start = broker.offset_for_time(t, q, s.disconnected_at)
                starts[q] = start
            for topic, dl in self._backlog(t, starts):
                sos = [so for _, so in trie.match(topic)]
                if sos:
                    self.deliver(dl, {s.client_id: sos})

    def catch_up_group(self, g: SharedGroup, from_committed: bool) -> None:
        """Give a shared subscription's members what arrived while none of them was
        online: from the positions it held then, or (a group re-created by a
        resumed persistent member, after a restart) from its committed offsets."""
        held, g.held = g.held, {}
        for t in self._filter_topics(g.filter):
            d = self.dispatchers.get(t)
            if d is None:
                continue
            starts = {}
            for q in range(len(d.positions)):
                start = held.get((t, q))
                if start is None and from_committed:
                    start = self.broker.committed_offset(g.group, t, q)
                if start is not None:
                    starts[q] = start
            for topic, dl in self._backlog(t, starts):
                if filter_matches(g.filter, topic):
                    g.dispatch(dl)

    # ------------------------------------------------------------ retained, $SYS

    def retain(self, d: Delivery) -> None:
        """3.3.1.3: store or (empty payload) delete the topic's retained message."""
        if d.payload:
            self.retained.set(d)
        else:
            self.retained.delete(d.topic)
        self.retained_saver.mark()

    def retained_for(self, topic_filter: str) -> Iterator[Delivery]:
        now = now_ms()
        for d in self.retained.match(topic_filter):
            if not d.expired(now):
                yield d
        if topic_filter.startswith("$SYS") and self.options.sys_interval > 0:
            self.refresh_sys()
            yield from self.sys_retained.match(topic_filter)

    def sys_values(self) -> dict[str, str]:
        st = self.stats
        online = sum(1 for s in self.sessions.values() if s.client is not None)
        return {
            "$SYS/broker/version": VERSION,
            "$SYS/broker/uptime": f"{int(time.monotonic() - self.started)} seconds",
            "$SYS/broker/clients/connected": str(online),
            "$SYS/broker/clients/disconnected": str(len(self.sessions) - online),
            "$SYS/broker/clients/total": str(len(self.sessions)),
            "$SYS/broker/clients/maximum": str(st["max_online"]),
            "$SYS/broker/messages/received": str(st["received"]),
            "$SYS/broker/messages/sent": str(st["sent"]),
            "$SYS/broker/messages/dropped": str(st["dropped"]),
            "$SYS/broker/publish/denied": str(st["publish_denied"]),
            "$SYS/broker/bytes/received": str(st["bytes_received"]),
            "$SYS/broker/bytes/sent": str(st["bytes_sent"]),
            "$SYS/broker/subscriptions/count": str(self.trie.count + sum(
                len(g.members) for g in self.shared.values())),
            "$SYS/broker/retained messages/count": str(len(self.retained.messages)),
            "$SYS/broker/connections/total": str(st["connects"]),
        }

    def refresh_sys(self) -> None:
        """Bring the retained $SYS values up to date without publishing them."""
        for topic, value in self.sys_values().items():
            self.sys_retained.set(Delivery(topic, value.encode(), 0, True, {}, "", None))

    def publish_sys(self) -> None:
        for topic, value in self.sys_values().items():
            old = self.sys_retained.messages.get(topic)
            if old is not None and old.payload == value.encode():
                continue
            d = Delivery(topic, value.encode(), 0, True, {}, "", None)
            self.sys_retained.set(d)
            live = Delivery(topic, d.payload, 0, False, {}, "", None)
            self.publish_local(live)

    async def _sys_publisher(self) -> None:
        while True:
            self.publish_sys()
            await trio.sleep(self.options.sys_interval)
