"""The MQTT door's hub: ties sessions, dispatchers, routing, shared subscriptions, retained
messages, wills and ``$SYS`` together, and runs their background tasks.

The way of a message (docs/mqtt.md, "Delivery"):

    PUBLISH ─► StorePath.store (publish.py) ─► Broker.put (queue = crc32(MQTT topic))
    Dispatcher(T) (dispatcher.py) ─ wait_any/get on T's queues ─► Router.route (routing.py)
        ─► Session.enqueue (sessions.py) ─► SessionState window (protocols/mqtt/session.py)
        ─► Connection's out buffer (client.py) ─► socket

A persistent session is a consumer with its own committed offsets in the core
(group ``mqtt-session-<client id>``): what it missed while offline is simply
what lies after its offsets, read back when it reconnects (``catch_up``),
bounded by ``max_queued`` per queue. The hub owns the registry of sessions and
connections; one file per job holds the rest:

    sessions.py   Session (subscriptions, pending queue) and the Connection interface
    shared.py     shared subscriptions and their hand-over
    routing.py    the subscription trie and delivery to sessions
    dispatcher.py one task per watched broker topic
    publish.py    the one store path of every publish (QoS 0/1/2, retained, wills)
    retained.py   retained messages
    sys_topics.py $SYS
    state.py      durable state (retained messages, sessions): tables of the state log
    errors.py     core errors -> MQTT reason codes
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace

import trio

from ...core.access import SYSTEM, Principal
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.message import now_ms
from ...core.metrics import DoorMetrics
from ...protocols.mqtt.connection import ServerLimits
from ...protocols.mqtt.constants import Prop
from ...protocols.mqtt.packets import Publish, Will
from ...protocols.mqtt.topics import TopicTrie, filter_matches
from . import mapping
from .auth import ClientAccess, core_rules, load_acl, load_passwords
from .delivery import Delivery, Outgoing, RecordReader, SubOpts
from .dispatcher import DISPATCH_BATCH, DISPATCH_BYTES, Dispatcher, first_broker_topic
from .options import MqttOptions
from .publish import StorePath
from .retained import RetainedStore
from .routing import Router
from .sessions import Connection, Session
from .shared import SharedGroup
from .state import MqttState
from .sys_topics import SysTopics

log = logging.getLogger("ferrymq.mqtt")

DEADLINE_TICK = 0.1  # seconds: how late a keep alive or CONNECT timeout may be noticed


class Hub:
    """All MQTT state of one broker (see the module docstring)."""

    def __init__(self, broker: Broker, options: MqttOptions, state_dir: str) -> None:
        self.broker = broker
        self.options = options
        self.state_dir = state_dir
        self.sessions: dict[str, Session] = {}
        self.clients: set[Connection] = set()  # connected, CONNECT or not yet
        self.router = Router(self.sessions)
        self.shared = self.router.groups
        self.retained = RetainedStore()
        self.sys = SysTopics(self, options.sys_interval)
        self.dispatchers: dict[str, Dispatcher] = {}
        self.literal_watch: collections.Counter[str] = collections.Counter()
        self.wild_watch = 0
        self.wild_since = 0
        self.nursery: trio.Nursery | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        self.metrics = DoorMetrics(broker.metrics, "mqtt")
        self.reader = RecordReader()
        self.state = MqttState(broker, state_dir, options.save_interval, self.retained.snapshot,
                               self._sessions_state, self._session_state)
        self.store = StorePath(broker, self.retained, self.state, self.stats,
                               self.topic_created)
        self.store.door_metrics = self.metrics
        self.limits = ServerLimits(options.max_packet_size, options.receive_maximum,
                                   options.topic_alias_maximum)
        self._pre_auth: tuple[int, ServerLimits] | None = None
        self.passwords = load_passwords(options.password_file) if options.password_file else None
        self.acl = load_acl(options.acl_file) if options.acl_file else None
        if self.passwords is not None or self.acl is not None:
            # Into the one model: the core judges every door by them (docs/security.md).
            broker.load_file_rules("mqtt:acl_file", core_rules(self.acl) if self.acl else [],
                                   sorted((self.passwords or {}).items()),
                                   enforce_door="mqtt" if self.acl else None, principal=SYSTEM)
        self.open_access = ClientAccess(broker, SYSTEM)

    def pre_auth_limits(self, max_bytes: int) -> ServerLimits:
        """``limits`` with the supervisor's pre-auth packet cap, built once per cap
        (``dataclasses.replace`` per connection was a visible part of a connect)."""
        cached = self._pre_auth
        if cached is None or cached[0] != max_bytes:
            cached = self._pre_auth = (max_bytes, replace(self.limits, max_packet_size=max_bytes))
        return cached[1]

    def access_for(self, principal: Principal) -> ClientAccess:
        return ClientAccess(self.broker, principal)

    def new_session(self, client_id: str) -> Session:
        return Session(client_id, self.options, self.stats)

    def subscription_count(self) -> int:
        return self.router.subscription_count()

    def publish_local(self, d: Delivery) -> None:
        self.router.publish_local(d)

    # ------------------------------------------------------------ wills

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
        (err,) = await self.store.store(
            [Publish(will.topic, will.payload, will.qos, will.retain, False, None, props)],
            s.client_id, access.principal)
        if err is None:
            self.stats["wills"] += 1
        else:
            log.warning("will of %r not published: %s", s.client_id, err)

    # ------------------------------------------------------------ lifecycle

    def load(self) -> None:
        loaded = self.state.load()
        self.retained.restore(loaded.retained)
        for cid, sst in loaded.sessions.items():
            s = self.new_session(cid)
            s.load_state(sst)
            self.sessions[cid] = s
        log.info("mqtt state loaded: %d retained, %d sessions", len(self.retained.messages),
                 len(self.sessions))

    def save_sync(self) -> None:
        """At shutdown (the broker still open): the state, then the positions."""
        self.state.save_all()
        self.commit_positions()

    def _sessions_state(self) -> dict[str, object]:
        return {cid: s.to_state() for cid, s in self.sessions.items() if s.persistent}

    def _session_state(self, cid: str) -> object:
        s = self.sessions.get(cid)
        return s.to_state() if s is not None and s.persistent else None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.state.run)
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._deadlines)
            if self.options.sys_interval > 0:
                nursery.start_soon(self.sys.run)
            task_status.started()
            await trio.sleep_forever()

    async def _deadlines(self) -> None:
        """Every client's CONNECT timeout and keep alive, checked by one task (a
        cancel scope per connection would cost each idle client more memory)."""
        while True:
            await trio.sleep(DEADLINE_TICK)
            now = trio.current_time()
            for c in [c for c in self.clients if c.deadline <= now or c.send_deadline <= now]:
                c.expire()

    async def _housekeeping(self) -> None:
        """Once a second: expire sessions, discover topics for wildcard subscriptions,
        commit persistent sessions' positions."""
        while True:
            await trio.sleep(1.0)
            now = now_ms()
            for s in list(self.sessions.values()):
                if s.expired(now):
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
            t = self.broker.find_topic(topic, principal=SYSTEM)
            return t is not None and not t.system
        return False

    def ensure_dispatchers(self) -> None:
        """Start a dispatcher for every watched topic; stop those no longer watched."""
        for t in self.literal_watch:
            if t not in self.dispatchers:
                self._start_dispatcher(t, False)
        if self.wild_watch > 0:
            for config in self.broker.topics(principal=SYSTEM):
                if not config.system and config.readable and config.name not in self.dispatchers:
                    self._start_dispatcher(config.name, config.created_at >= self.wild_since)
        for name, d in list(self.dispatchers.items()):
            if not self.watched(name):
                d.stopped = True
                del self.dispatchers[name]

    def _start_dispatcher(self, topic: str, from_start: bool) -> Dispatcher:
        d = self.dispatchers[topic] = Dispatcher(self.broker, topic, from_start,
                                                 self.router.route, self.reader, self.stats)
        assert self.nursery is not None
        self.nursery.start_soon(d.run)
        return d

    def topic_created(self, topic: str) -> None:
        """A publish is about to create ``topic``: a wildcard subscriber must see
        its first message, so its dispatcher starts before the put."""
        if self.wild_watch > 0 and topic not in self.dispatchers:
            self._start_dispatcher(topic, True)

    # ------------------------------------------------------------ sessions

    def attach(self, s: Session, resumed: bool = False) -> None:
        """An online session's subscriptions enter the trie and start their
        dispatchers; shared subscriptions that waited for a member get their backlog."""
        for f, so in s.subs.items():
            self.router.add(f, s.client_id, so)
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
            else:
                g.flush_orphans()

    def detach(self, s: Session) -> None:
        """The client went away: its subscriptions leave the trie (a persistent
        session keeps them and its committed positions), and what it had queued
        from shared subscriptions goes to another member (4.8.2)."""
        if s.persistent:
            self.commit_session(s)
        for f in s.subs:
            self.router.remove(f, s.client_id)
            self._watch(f, -1)
        queued = s.take_pending_shared()
        s.pending = ()
        for (name, f) in list(s.shared):
            self._leave_shared(s.client_id, name, f, keep=s.persistent)
        self._hand_over(queued, s.client_id)

    def end_session(self, s: Session) -> None:
        """The session is over (clean start, expiry, a non-persistent client gone):
        forget it; its unfinished shared messages go to another member (4.8.2)."""
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
        unfinished = s.take_pending_shared() + s.unacknowledged_shared()
        for (name, f) in list(s.shared):
            self._leave_shared(s.client_id, name, f, keep=False)
        self._hand_over(unfinished, s.client_id)
        if s.persistent or s.flows.inflight:
            self.state.sessions_changed()

    def _hand_over(self, outs: list[Outgoing], leaving: str) -> None:
        by_group: dict[tuple[str, str], list[Outgoing]] = {}
        for out in outs:
            if out.share is not None:
                by_group.setdefault(out.share, []).append(out)
        for key, group_outs in by_group.items():
            g = self.shared.get(key)
            if g is not None and g.members:
                g.hand_over(group_outs, leaving)
            else:
                # The shared subscription ceased with its last member (4.8.2).
                self.stats["dropped"] += len(group_outs)

    def subscribe(self, s: Session, share: str | None, topic_filter: str, so: SubOpts) -> bool:
        """Add or replace a subscription of an online session; True if it existed."""
        if share is not None:
            key = (share, topic_filter)
            existed = key in s.shared
            s.shared[key] = so
            self._join_shared(s.client_id, share, topic_filter, so).flush_orphans()
        else:
            existed = topic_filter in s.subs
            s.subs[topic_filter] = so
            self.router.add(topic_filter, s.client_id, so)
            if not existed:
                self._watch(topic_filter, +1)
        self.ensure_dispatchers()
        if s.persistent:
            self.state.sessions_changed()
        return existed

    def unsubscribe(self, s: Session, share: str | None, topic_filter: str) -> bool:
        """Remove a subscription; True if it existed. A shared one's queued messages
        go to another member; its in-flight ones complete here ([MQTT-3.10.4-3])."""
        if share is not None:
            key = (share, topic_filter)
            if s.shared.pop(key, None) is None:
                return False
            g = self.shared.get(key)
            # Queued messages go to another member; with none left, they are still
            # delivered here (3.10.4: the server MAY deliver what it buffered).
            others = g is not None and any(cid != s.client_id for cid in g.members)
            queued = s.take_pending_shared(key) if others else []
            self._leave_shared(s.client_id, share, topic_filter, keep=False)
            self._hand_over(queued, s.client_id)
        else:
            if s.subs.pop(topic_filter, None) is None:
                return False
            self.router.remove(topic_filter, s.client_id)
            self._watch(topic_filter, -1)
        if s.persistent:
            self.state.sessions_changed()
        return True

    def _join_shared(self, cid: str, name: str, topic_filter: str, so: SubOpts
                     ) -> SharedGroup:
        g = self.shared.get((name, topic_filter))
        if g is None:
            g = SharedGroup(name, topic_filter, self.sessions, self.stats,
                            self.options.max_queued)
            self.router.add_group(g)
            self._watch(topic_filter, +1)
        g.members[cid] = so
        return g

    def _leave_shared(self, cid: str, name: str, topic_filter: str, keep: bool) -> None:
        """``keep``: an offline persistent member stays a member (it gets nothing
        while offline: the others, or nobody, take its share)."""
        g = self.shared.get((name, topic_filter))
        if g is None:
            return
        if not keep:
            g.members.pop(cid, None)
        if not g.members:
            self.router.remove_group(g)
            self._watch(topic_filter, -1)
            if g.orphans:
                self.stats["dropped"] += len(g.orphans)  # it ceased (4.8.2)

    # ------------------------------------------------------------ positions

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
            topics.update(t.name for t in self.broker.topics(principal=SYSTEM) if not t.system)
        return topics

    def _saved_first(self, s: Session) -> bool:
        """Before positions are committed past in-flight messages, the session holding
        them is appended: one log, so that order holds after a crash (a committed
        position never outlives the in-flight message it skipped). False when it could
        not be (logged and counted by the state): the positions wait for the next round."""
        try:
            self.state.save_session(s.client_id)
        except FerryError:
            return False
        return True

    def commit_session(self, s: Session) -> bool:
        """Record in the core how far this session has been served: per queue, the
        dispatcher's position, or the first message still waiting in its queue
        (the in-flight ones are in the session's saved state, appended first).
        False when the session could not be saved (nothing committed)."""
        if not self._saved_first(s):
            return False
        self._commit_offsets(s)
        return True

    async def session_delivered(self, s: Session) -> None:
        """Durably: the session as it is now, and its positions past what it holds in
        flight. Before a PUBREL: once we say we never send that PUBLISH again, neither
        its in-flight row nor a committed position behind it may bring it back as a new
        message after a crash (a duplicate at QoS 2). Raises FerryError."""
        self.state.save_session(s.client_id)
        self._commit_offsets(s)
        await self.broker.wait_durable()

    def _commit_offsets(self, s: Session) -> None:
        broker = self.broker
        for t in self._session_topics(s):
            d = self.dispatchers.get(t)
            if d is None or not d.positions:
                continue
            pos = list(d.positions)
            for out in s.pending:
                src = out.delivery.src
                if out.share is None and src is not None and src[0] == t and src[1] < len(pos):
                    pos[src[1]] = min(pos[src[1]], src[2])
            for q, off in enumerate(pos):
                try:
                    broker.commit_offset(s.group, t, q, off, principal=SYSTEM)
                except FerryError as exc:
                    log.warning("cannot commit %s %s/%d: %s", s.group, t, q, exc)

    def commit_positions(self) -> None:
        """Every online persistent session's positions (an offline one's were committed
        when it went away), then the shared groups' (which count messages in flight at
        their members: those sessions are saved first)."""
        saved = True
        for s in list(self.sessions.values()):
            if s.persistent and s.client is not None:
                saved &= self.commit_session(s)
        if not saved:
            return
        for g in self.shared.values():
            held = g.held_positions()
            for t in self._filter_topics(g.filter):
                d = self.dispatchers.get(t)
                if d is not None:
                    for q, off in enumerate(d.positions):
                        with contextlib.suppress(FerryError):  # the topic went away
                            self.broker.commit_offset(g.group, t, q, held.get((t, q), off),
                                                     principal=SYSTEM)

    def _filter_topics(self, topic_filter: str) -> list[str]:
        t = first_broker_topic(topic_filter)
        if t is not None:
            return [t]
        if topic_filter.startswith("$"):
            return []
        return [x.name for x in self.broker.topics(principal=SYSTEM) if not x.system]

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
            lo, _ = broker.queue_bounds(t, q, principal=SYSTEM)
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
                res = broker.get(None, t, q, pos, DISPATCH_BATCH, DISPATCH_BYTES,
                                 principal=SYSTEM)
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
                start = broker.committed_offset(s.group, t, q, principal=SYSTEM)
                if start is None:
                    # A topic or queue born while the session was away: what was
                    # stored since it left is what it missed.
                    start = broker.offset_for_time(t, q, s.disconnected_at, principal=SYSTEM)
                starts[q] = start
            for topic, dl in self._backlog(t, starts):
                sos = [so for _, so in trie.match(topic)]
                if sos:
                    self.router.deliver(dl, {s.client_id: sos})

    def catch_up_group(self, g: SharedGroup, from_committed: bool) -> None:
        """Give a shared subscription's members what arrived while none of them was
        online: what members handed back, then the store from the positions it
        held then, or (a group re-created by a resumed persistent member, after a
        restart) from its committed offsets."""
        held, g.held = g.held, {}
        # An orphan at or past a held position comes again with the backlog.
        g.orphans = collections.deque(
            o for o in g.orphans
            if o.src is None or held.get((o.src[0], o.src[1]), o.src[2] + 1) > o.src[2])
        g.flush_orphans()
        for t in self._filter_topics(g.filter):
            d = self.dispatchers.get(t)
            if d is None:
                continue
            starts = {}
            for q in range(len(d.positions)):
                start = held.get((t, q))
                if start is None and from_committed:
                    start = self.broker.committed_offset(g.group, t, q, principal=SYSTEM)
                if start is not None:
                    starts[q] = start
            for topic, dl in self._backlog(t, starts):
                if filter_matches(g.filter, topic):
                    g.dispatch(dl)

    # ------------------------------------------------------------ retained

    def retained_for(self, topic_filter: str) -> Iterator[Delivery]:
        """Retained messages for a new subscription (``$SYS`` values included)."""
        yield from self.retained.live(topic_filter)
        yield from self.sys.retained_for(topic_filter)
