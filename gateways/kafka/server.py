"""The Kafka door's sockets: accept, read frames, answer in order, persist producer state.

One task per connection reads bytes into a ``ServerConnection`` (sans-I/O),
hands each request to ``KafkaDoor`` and writes the response before reading
the next request, as a Kafka broker does (responses go back in request order
and a long-polling fetch holds only its own connection). A framing error, an
unknown API, a body that does not decode or an unsupported version (but for
ApiVersions, answered with error 35 in v0) closes that connection alone.

Connections run under the door's ``ConnectionSupervisor`` (gateways/
supervision.py): whatever escapes this loop ends its connection only, and the
loop keeps the connection's ``Watch`` told what it is doing, so the door's
limits hold: with SASL on, the authentication within ``handshake_timeout_s``;
``connections.max.idle.ms``'s 10 minutes idle (from the accept when SASL is
off: Kafka has no first-request deadline, and clients open connections early), a frame
begun complete within ``frame_timeout_s``, a response taken within
``send_timeout_s``. Before SASL completes a frame may be at most
``pre_auth_max_bytes`` (Kafka's sasl.server.max.receive.size, 512 KiB), and a
frame larger than one read waits for the broker-wide request-bytes budget
before the rest of it is read (queued.max.request.bytes). One request at a time
per connection, as Kafka mutes a channel with a request in flight: a
connection's own share of the budget is the frame it is receiving.
"""

from __future__ import annotations

import logging
import os
import socket
from functools import partial
from time import perf_counter
from typing import Any

import trio

from ...core.access import SYSTEM
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.replication import Role
from ...protocols import record as rec
from ...protocols.kafka import batch_header as bh
from ...protocols.kafka import errors as ke
from ...protocols.kafka.connection import (
    NEED_DATA,
    BadRequest,
    FrameError,
    Request,
    ServerConnection,
    UnknownApi,
    UnsupportedVersion,
    response_bytes,
)
from ...protocols.kafka.schema import API_NAMES
from ..server import DoorContext
from ..supervision import SEND_CHUNK, Watch
from .groups import NS_GROUP, Coordinator
from .handlers import (
    API_VERSIONS,
    SASL_AUTHENTICATE,
    SASL_HANDSHAKE,
    SUPPORTED,
    DoorOptions,
    KafkaDoor,
    Session,
    now_ms,
)
from .producers import ProducerStates
from .transactions import TransactionCoordinator, TxnOptions

log = logging.getLogger("ferrymq.kafka")

RECV_MIN = 64 << 10  # smallest read; a frame in progress asks for up to RECV_MAX at once
RECV_MAX = 4 << 20
# A response at least this large goes out by sendmsg(2) of its parts (the stored batches a
# Fetch answer carries), not joined first: see _send_parts.
GATHER_MIN = 64 << 10
IOV_MAX = 1024  # buffers per sendmsg call (Linux's UIO_MAXIOV)
PERSIST_INTERVAL_S = 1.0  # producer-state snapshot period when it changed
REPLAY_BYTES = 4 << 20  # read size while replaying producer state from the queues
_PRE_AUTH = frozenset((API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE))


async def serve(ctx: DoorContext, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Run the Kafka door until cancelled (see gateways/server.py)."""
    options = DoorOptions.from_mapping(ctx.options)
    broker = ctx.broker
    producers = ProducerStates(os.path.join(broker.config.data_dir, "kafka"))
    await trio.to_thread.run_sync(producers.load)
    check_snapshot_log(broker, producers)
    replay_producer_state(broker, producers)

    async def save(changes: Any) -> None:
        await broker.put_door_state(changes, principal=SYSTEM)

    coordinator = Coordinator(min_session_ms=options.group_min_session_timeout_ms,
                              max_session_ms=options.group_max_session_timeout_ms,
                              initial_rebalance_delay_ms=options.group_initial_rebalance_delay_ms,
                              save=save)
    restored = coordinator.restore(broker.door_state(NS_GROUP, principal=SYSTEM))
    txns = TransactionCoordinator(broker, TxnOptions(
        max_timeout_ms=options.transaction_max_timeout_ms,
        abort_check_interval_ms=options.transaction_abort_check_interval_ms,
        id_expiration_ms=options.transactional_id_expiration_ms))
    txns.load()
    # Producer ids come from the state log's blocks; none below what the producer snapshot
    # (and its replay) knows was handed out, and the snapshot never reuses the log's.
    txns.reserve_below(producers.next_id)
    for pid in txns.by_pid:
        producers.next_id = max(producers.next_id, pid + 1)
    listeners = await trio.open_tcp_listeners(ctx.port, host=ctx.host)
    port = listeners[0].socket.getsockname()[1]
    door = KafkaDoor(broker, options, port, coordinator, producers, txns)
    door.view = ctx.cluster  # a broker group's member routes clients to masters
    # A slave records no produce: its producer table is empty while its queues grow by
    # replication. Saving it would mark those batches as replayed, and the producers
    # would be unknown to it once promoted (UNKNOWN_PRODUCER_ID, fatal to an idempotent
    # producer). It saves nothing; promoted, it replays the batches from its last
    # snapshot as a master, as every start does.
    slave = broker.replication_position().role is Role.SLAVE
    door.load_state()
    if restored:
        log.info("Kafka group membership restored", extra={"members": restored,
                                                           "groups": len(coordinator.groups)})
    connections = ctx.supervisor("kafka", protocol_errors=(FrameError,))

    async def handler(stream: trio.SocketStream, watch: Watch) -> None:
        await handle_connection(door, stream, watch)

    async def tls_handler(stream: trio.SocketStream, watch: Watch) -> None:
        # Kafka's SSL listener: Metadata and FindCoordinator send its clients back to it.
        await handle_connection(door, stream, watch, port=ctx.bound.get("kafka-tls"))

    try:
        async with trio.open_nursery() as nursery:
            tasks = ctx.tasks(nursery, "kafka")
            await tasks.start(coordinator.run, name="coordinator")
            await txns.recover()
            await tasks.start(txns.run, name="transactions")
            if not slave:
                tasks.start_soon(_persist_loop, broker, producers, name="producer_state")
            await nursery.start(partial(connections.serve, listeners, handler,
                                        tls_handler=tls_handler))
            task_status.started(port)
    finally:
        if not slave:
            with trio.CancelScope(shield=True):
                await _save(broker, producers)


def check_snapshot_log(broker: Broker, producers: ProducerStates) -> bool:
    """Keep the loaded snapshot only if this CommitLog still holds the log it describes
    (producers.py: after a truncation it does not); True if it was kept."""
    if producers.snapshot_log is None:
        return True
    epochs, end = producers.snapshot_log
    if not epochs:  # taken outside a broker group: the queue ends say enough
        return True
    point = broker.truncation_point(epochs, end)
    if point is not None and point >= end:
        return True
    log.warning("the Kafka producer snapshot describes a log this one no longer holds "
                "(truncated at %s, the snapshot ends at %d): producer state is rebuilt "
                "from the queues' starts", point, end)
    producers.forget_snapshot()
    return False


def replay_producer_state(broker: Broker, producers: ProducerStates) -> int:
    """Bring the loaded snapshot up to the queues' ends: forget batches past them
    (lost in a crash), re-read the Kafka batches appended after the snapshot."""
    replayed = 0
    for topic, qid, lo, hi in broker.stored_queues(principal=SYSTEM):
        producers.truncate(topic, qid, hi)
        offset = max(lo, producers.snapshot_ends.get((topic, qid), lo))
        while offset < hi:
            got = broker.read_stored(topic, qid, offset, 1 << 20, REPLAY_BYTES, principal=SYSTEM)
            if not got.records:
                break
            for r in got.records:
                if r.format != rec.FORMAT_KAFKA_BATCH:
                    continue
                h = bh.read_header(r.decode().body)
                if h.producer_id >= 0 and h.base_sequence >= 0:
                    producers.record(h.producer_id, h.producer_epoch, topic, qid,
                                     h.base_sequence, h.records_count, r.queue_offset,
                                     r.store_timestamp)
                    replayed += 1
            offset = got.next_offset
    producers.snapshot_ends = {}
    return replayed


async def _save(broker: Broker, producers: ProducerStates) -> None:
    ends = {(q.topic, q.queue_id): q.max_offset for q in broker.stored_queues(principal=SYSTEM)}
    pos = broker.replication_position()
    data = producers.snapshot(ends, ([(e, o) for e, o in pos.epochs], pos.end))
    try:
        await trio.to_thread.run_sync(producers.save, data)
    except OSError as exc:
        producers.dirty = True
        log.error("cannot save Kafka producer state", exc_info=exc)


async def _persist_loop(broker: Broker, producers: ProducerStates) -> None:
    while True:
        await trio.sleep(PERSIST_INTERVAL_S)
        if producers.dirty:
            await _save(broker, producers)


async def handle_connection(door: KafkaDoor, stream: trio.SocketStream, watch: Watch | None = None,
                            port: int | None = None) -> None:
    """Serve one client until it disconnects or breaks the protocol; ``port``: the one
    to advertise to it (its listener's), if not the door's."""
    try:
        peer = stream.socket.getpeername()
        local = stream.socket.getsockname()
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    except OSError:
        await stream.aclose()
        return
    sasl = door.options.sasl_plain_users is not None or door.options.sasl_required
    session = Session(client_host=str(peer[0]), local_host=str(local[0]), authenticated=not sasl,
                      advertised_port=port)
    conn = ServerConnection(SUPPORTED, max_frame_size=door.options.max_frame_size)
    if watch is not None:
        if not sasl:
            # Nothing to complete: the connection is idle from its accept, as in Kafka
            # (clients may open a connection before they need it).
            watch.handshake_done()
        elif watch.limits.pre_auth_max_bytes:
            conn.max_frame_size = min(conn.max_frame_size, watch.limits.pre_auth_max_bytes)
    metrics = door.metrics
    metrics.connection_opened()
    try:
        async with stream:
            await _serve_connection(door, stream, conn, session, watch)
    except FrameError as exc:
        metrics.error("frame", "invalid_frame")
        log.info("closing Kafka connection from %s: %s", peer, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away, possibly mid-request: nothing to answer
    finally:
        conn.close()
        metrics.connection_closed()


async def _receive(stream: trio.SocketStream, conn: ServerConnection, watch: Watch | None
                   ) -> bool:
    if watch is not None:
        pending = conn.frame_in_progress()
        watch.waiting(pending > 0)
        if pending > RECV_MIN:
            await watch.reserve(pending)  # the rest is read once the budget holds it
    into = conn.frame_buffer()
    if into is not None:  # a large frame under way: straight into its buffer
        n = await stream.socket.recv_into(into)
        if not n:
            return False
        conn.frame_received(n)
        return True
    want = min(max(conn.frame_wanted(), RECV_MIN), RECV_MAX)
    data = await stream.receive_some(want)
    if not data:
        return False
    conn.receive_data(data)
    return True


async def _send(stream: trio.SocketStream, watch: Watch | None, data: bytes) -> None:
    if watch is None:
        await stream.send_all(data)
    else:
        await watch.send_all(stream, data)


async def _send_parts(stream: trio.SocketStream, watch: Watch | None, parts: list[Any]) -> None:
    """Send a response frame given as chunks (``response_bytes``). A large one over a
    plain socket is written by sendmsg(2) of the chunks as they are, stored record
    batches included, as many buffers a call as the kernel takes: joining them first
    copied every fetched byte once more, a sixth of the broker's busy time serving
    1 MiB fetches (docs/kafka.md, "Performance"). The send timeout restarts every
    ``SEND_CHUNK`` bytes, as ``Watch.send_all``'s chunks do. TLS encrypts a copy anyway:
    a TLS stream gets the joined bytes."""
    if len(parts) == 1:
        await _send(stream, watch, parts[0])
        return
    if not isinstance(stream, trio.SocketStream) or sum(len(p) for p in parts) < GATHER_MIN:
        await _send(stream, watch, b"".join(parts))
        return
    views = [memoryview(p) for p in parts if len(p)]
    sock = stream.socket
    i = since = 0
    if watch is not None:
        watch.send_started()
    try:
        while i < len(views):
            try:
                n = await sock.sendmsg(views[i:i + IOV_MAX])
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            since += n
            while n:
                head = views[i]
                if n < len(head):
                    views[i] = head[n:]
                    break
                n -= len(head)
                i += 1
            if watch is not None and since >= SEND_CHUNK:
                watch.send_started()
                since = 0
    finally:
        if watch is not None:
            watch.send_done()


def _authenticated(door: KafkaDoor, conn: ServerConnection, watch: Watch | None) -> None:
    """SASL completed: the frame limit is the door's own, the handshake is over."""
    conn.max_frame_size = door.options.max_frame_size
    if watch is not None:
        watch.handshake_done()


async def _serve_connection(door: KafkaDoor, stream: trio.SocketStream, conn: ServerConnection,
                            session: Session, watch: Watch | None = None) -> None:
    while True:
        if session.raw_sasl:
            token = conn.next_raw_frame()
            if token is NEED_DATA:
                if not await _receive(stream, conn, watch):
                    return
                continue
            done, reply = door.sasl_step(session, bytes(token))  # type: ignore[arg-type]
            if done is False:
                log.info("SASL %s authentication failed for %s", session.sasl_mechanism,
                         session.client_host)
                return
            if done:
                session.raw_sasl = False
                _authenticated(door, conn, watch)
            await _send(stream, watch, len(reply).to_bytes(4, "big") + reply)
            continue
        ev = conn.next_event()
        if ev is NEED_DATA:
            if not await _receive(stream, conn, watch):
                return
            continue
        if watch is not None:
            watch.busy()
        if isinstance(ev, UnsupportedVersion):
            if ev.header.api_key == API_VERSIONS:
                body = door.api_versions_body(ke.UNSUPPORTED_VERSION)
                await _send(stream, watch,
                            b"".join(response_bytes(ev.header, body, version=0)))
                continue
            log.info("closing: %s v%d is not supported", ev.header.api_key, ev.header.api_version)
            return
        if isinstance(ev, UnknownApi):
            door.metrics.error("unknown", "unknown_api")
            log.info("closing: unknown API key %d", ev.header.api_key)
            return
        if isinstance(ev, BadRequest):
            door.metrics.error(API_NAMES.get(ev.header.api_key, "unknown"), "invalid_request")
            log.info("closing: malformed request (api %d v%d): %s", ev.header.api_key,
                     ev.header.api_version, ev.reason)
            return
        assert isinstance(ev, Request)
        h = ev.header
        if not session.authenticated and h.api_key not in _PRE_AUTH:
            log.info("closing: api %d before SASL authentication", h.api_key)
            return
        t0 = perf_counter()
        name = API_NAMES[h.api_key]
        try:
            body = await door.handlers[h.api_key](h, ev.body, session)
        except FerryError as exc:
            door.metrics.error(name, exc.code)
            log.warning("request api %d failed: %s", h.api_key, exc)
            return
        door.metrics.observe(name, perf_counter() - t0)
        if watch is not None:
            if session.authenticated and watch.handshaking:
                _authenticated(door, conn, watch)
            watch.release()
        if body is None:
            continue
        await _send_parts(stream, watch, response_bytes(h, body))
        if session.failed:
            log.info("SASL %s authentication failed for %s", session.sasl_mechanism,
                     session.client_host)
            return  # Kafka closes the connection after SASL_AUTHENTICATION_FAILED


__all__ = ["check_snapshot_log", "handle_connection", "now_ms", "replay_producer_state",
           "serve"]
