"""The message store: append records, read queues, recover after a crash, retain, checkpoint.

The way of one message: ``append`` packs a RocketMQ record straight into the
CommitLog's mapped segment, adds its ConsumeQueue entry (queue offset = the
queue's next offset) and, if it has keys, its index entries. ``get`` binary
searches the ConsumeQueue for an offset and slices the records out of the
CommitLog. Everything here is synchronous and runs on the broker's event-loop
thread, except the methods marked "worker thread" (fsync work), which only
read what the loop thread publishes (``dispatched_pos``, immutable snapshots).
See docs/storage.md for the formats and the recovery argument.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ...protocols import record as rec
from ...protocols.kafka import batch_header as kb
from ..errors import CorruptMessage, FerryError, InvalidMessage, MessageTooLarge, StoreError
from ..filter import TAG_HASH_MIXED, TAG_HASH_NONE, Filter, tag_hash
from ..message import (
    PROPERTY_KEYS,
    PROPERTY_TAGS,
    PROPERTY_UNIQ_KEY,
    ConsumedMessage,
    GetResult,
    GetStatus,
    Message,
    PutResult,
    StoredRecord,
    register_batch_decoder,
)
from .checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from .commitlog import CommitLog, Damage, plausible
from .compaction import DEFAULT_MAX_KEYS, CompactedLog, PassResult, compact
from .consumequeue import LOST_SIZE, ConsumeQueue, PinnedReader
from .filecache import FileCache, FileGone, default_budget
from .files import DirectoryLock
from .index import KeyIndex
from .repair import DamageStats, Hole, Repairs
from .timeindex import TimeIndex, TimeIndexes
from .topicretention import TopicRetention

log = logging.getLogger("ferrymq.store")

_ZERO_HOST = b"\x00" * 8
_HEADER_SIZE = rec.HEADER_SIZE
_MAGIC = rec.MAGIC
_pack_header = rec.HEADER.pack
_pack_u16 = struct.Struct(">H").pack
_pack_i32 = struct.Struct(">i").pack
_pack_member = struct.Struct(">iiiii").pack
_crc32 = zlib.crc32
_time_ns = time.time_ns
_write = CommitLog.write
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_SIZE_MAGIC = struct.Struct(">ii")
_MAX_PROPS = rec.MAX_PROPERTIES_BYTES
_LONG_PROPS = rec.FORMAT_LONG_PROPERTIES
_FORMAT_MASK = rec.FORMAT_MASK & ~rec.FORMAT_LONG_PROPERTIES
_KAFKA = rec.FORMAT_KAFKA_BATCH
# A batch member may not ask for delayed delivery or be a transaction's half: a batch
# is one record, delivered at once (RocketMQ's client refuses these for batches too).
_NOT_IN_BATCH = frozenset(("DELAY", "TIMER_DELIVER_MS", "TIMER_DELAY_MS", "TIMER_DELAY_SEC",
                           "TRAN_MSG"))
_NOT_IN_BATCH_RE = re.compile(b"(?:^|\x02)(?:" + b"|".join(n.encode() for n in _NOT_IN_BATCH)
                              + b")\x01")
# Entries a filtered get may skip before answering (RocketMQ's maxFilterMessageCount).
_MAX_SCAN_ENTRIES = 16_000
# A record's fixed fields as a get checks them against its ConsumeQueue entry: total
# size, magic, body CRC, queue id, queue offset, physical offset, system flags, store
# timestamp (IPv4 born host: a record with an IPv6 one is checked without it).
_GET_CHECK = struct.Struct(">iiii4xqqi16xq")
_TAIL = struct.Struct(">iqi")  # reconsume times, prepared offset, body length (at 72)
_V6_FLAGS = rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG
_LOST = LOST_SIZE


class _Damaged(Exception):
    """A get met a ConsumeQueue entry that does not match its record (``kind`` "entry")
    or a queue whose offsets do not continue ("structure"). Internal."""

    def __init__(self, index: int, kind: str, why: str) -> None:
        super().__init__(why)
        self.index = index
        self.kind = kind
        self.why = why


def _record_ok(data: bytes, crc: int, sys_flag: int, phys: int) -> bool:
    """Whether a whole record read at ``phys`` holds together: its body CRC matches
    ``crc`` (its stored field), its lengths add up to its size, and the fields the CRC
    does not cover are plausible (``CommitLog``'s ``plausible``)."""
    if sys_flag & _V6_FLAGS:
        try:
            r = rec.decode(data, 0)
        except rec.RecordError:
            return False
        return plausible(r.reconsume_times, r.prepared_transaction_offset, phys)
    reconsume, prepared, n = _TAIL.unpack_from(data, 72)
    end = _HEADER_SIZE + n
    if n < 0 or end + 3 > len(data) or not plausible(reconsume, prepared, phys):
        return False
    props_at = end + 1 + data[end]
    if sys_flag & rec.FORMAT_LONG_PROPERTIES:
        if props_at + 4 > len(data) or props_at + 4 + _I32.unpack_from(data, props_at)[0] \
                != len(data):
            return False
    elif props_at + 2 > len(data) or props_at + 2 + _U16.unpack_from(data, props_at)[0] \
            != len(data):
        return False
    return _crc32(memoryview(data)[_HEADER_SIZE:end]) & 0x7FFFFFFF == crc


@dataclass(frozen=True, slots=True)
class StoreConfig:
    directory: str
    segment_size: int = 1 << 30
    cq_entries_per_file: int = 300_000
    index_slots: int = 500_000
    index_entries: int = 2_000_000
    store_host: bytes = rec.host_bytes("127.0.0.1", 10911)
    max_open_files: int = 0  # files held open at once (filecache.py); 0: default_budget()


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    clean_shutdown: bool
    checkpoint: int | None
    scanned_from: int  # re-dispatched from here (the checkpoint)
    end: int
    records_redispatched: int
    discarded_bytes: bool  # garbage after the last valid record was cut away
    seconds: float
    validated_from: int = 0  # every record from here on was validated (CRC included)
    holes: tuple[Hole, ...] = ()  # damaged ranges skipped, later records kept


def _record_keys(props: Mapping[str, str], member: int) -> list[tuple[str, int]]:
    out = [(k, member) for k in (props.get(PROPERTY_KEYS) or "").split(" ") if k]
    uniq = props.get(PROPERTY_UNIQ_KEY)
    if uniq:
        out.append((uniq, member))
    return out


# RocketMQ client ids (MessageClientIDSetter) are ip(4 or 16) pid(2) class loader(4)
# time(4) counter(2) in hex. The members of a batch share everything but the
# counter, so a batch record indexes each distinct id-without-its-counter once,
# as "any member" (ANY_MEMBER), instead of one entry per member; a lookup by id
# also asks for its prefix and finds the member by reading the record.
_CLIENT_ID_LENGTHS = (32, 56)
ANY_MEMBER = -1


def client_id_prefix(uniq: str) -> str | None:
    """The part of a RocketMQ-format client id shared by one producer's batch (an id
    of another form with the same length only costs a lookup extra candidates)."""
    return uniq[:-4] if len(uniq) in _CLIENT_ID_LENGTHS else None


_TAGS_B, _KEYS_B, _UNIQ_B = b"TAGS\x01", b"KEYS\x01", b"UNIQ_KEY\x01"
_TAGS_RE = re.compile(b"TAGS\x01([^\x02]*)")
_KEYS_RE = re.compile(b"KEYS\x01([^\x02]*)")
_UNIQ_RE = re.compile(b"UNIQ_KEY\x01([^\x02]*)")
_find_property = rec.find_property
_unpack_member = struct.Struct(">iiiii").unpack_from
_unpack_u16 = struct.Struct(">H").unpack_from
_unpack_i32 = struct.Struct(">i").unpack_from


def scan_batch(body: bytes | memoryview, long: bool = False
               ) -> tuple[int, int, list[tuple[str, int]], tuple[str | None, ...]]:
    """(message count, tag hash, keys to index, client ids) of a native batch body
    (``long``: of a FORMAT_LONG_PROPERTIES record, 4-byte properties lengths).

    Runs for every batch produced, so only the size walk is per member; the
    properties that matter are found by one regex pass each over the whole body.
    A hit inside a payload is harmless: an extra index candidate (lookups read
    the record to confirm) or a "mixed" tag hash (filters then read the record);
    nothing is ever missed. Keys are indexed as "any member" of the record;
    client ids once per distinct prefix (``client_id_prefix``). Client ids per
    member are not returned (the remoting door answers with offset ids).
    Raises InvalidMessage."""
    end = len(body)
    p = n = 0
    plen, unpack_plen = (4, _unpack_i32) if long else (2, _unpack_u16)
    least = 20 + plen
    while p < end:
        if end - p < least:
            raise InvalidMessage("malformed batch: truncated member")
        total, _magic, _crc, _flag, body_len = _unpack_member(body, p)
        q = p + 20 + body_len
        if total < least or p + total > end or body_len < 0 or q + plen > p + total:
            raise InvalidMessage("malformed batch: member size out of range")
        if q + plen + unpack_plen(body, q)[0] != p + total:
            raise InvalidMessage("malformed batch: member size does not match its fields")
        n += 1
        p += total
    if n == 0:
        raise InvalidMessage("empty batch")
    raw = body if isinstance(body, bytes) else bytes(body)
    if b"DELAY\x01" in raw or b"TIMER_" in raw or b"TRAN_MSG\x01" in raw:
        # Plain substring tests: measured 6 us over a 32-message batch where a
        # regex alternation took 57. Only a hit pays for the precise look.
        for m in rec.iter_members(raw, long=long):  # a precise look, only when the fast one hit
            if m.properties_raw and _NOT_IN_BATCH_RE.search(m.properties_raw):
                raise _batch_member_refused(m.properties)
    h = TAG_HASH_NONE
    if _TAGS_B in raw:
        tags = _TAGS_RE.findall(raw)
        h = (tag_hash(tags[0].decode("utf-8", "replace"))
             if len(tags) == n and len(set(tags)) == 1 else TAG_HASH_MIXED)
    keys: list[tuple[str, int]] = []
    if _KEYS_B in raw:
        for value in _KEYS_RE.findall(raw):
            keys.extend((k, ANY_MEMBER) for k in value.decode("utf-8", "replace").split(" ") if k)
    if _UNIQ_B in raw:
        # Distinct prefixes as bytes first: a batch from one producer has one or two.
        distinct = {v[:-4] if len(v) in _CLIENT_ID_LENGTHS else v
                    for v in _UNIQ_RE.findall(raw)}
        keys.extend((v.decode("utf-8", "replace"), ANY_MEMBER) for v in distinct)
    return n, h, keys, ()


def _long_single(sr: StoredRecord, r: rec.Record) -> Iterator[ConsumedMessage]:
    """The message of a single record with a long property area."""
    yield ConsumedMessage(r.topic, r.queue_id, r.queue_offset, r.body, r.properties,
                          r.born_timestamp, r.store_timestamp, r.physical_offset, r.store_host,
                          r.born_host, r.flag, r.sys_flag & ~rec.FORMAT_MASK, r.reconsume_times)


def _long_batch(sr: StoredRecord, r: rec.Record) -> Iterator[ConsumedMessage]:
    """The messages of a native batch record whose members have long property areas."""
    for i, m in enumerate(rec.iter_members(r.body, long=True)):
        yield ConsumedMessage(r.topic, r.queue_id, r.queue_offset + i, m.body, m.properties,
                              r.born_timestamp, r.store_timestamp, r.physical_offset,
                              r.store_host, r.born_host, m.flag, r.sys_flag & ~rec.FORMAT_MASK,
                              r.reconsume_times, i)


# StoredRecord.messages() decodes the plain formats itself and asks the registry for
# the others: the store's long-property formats are the store's to decode.
register_batch_decoder(rec.FORMAT_SINGLE | rec.FORMAT_LONG_PROPERTIES, _long_single)
register_batch_decoder(rec.FORMAT_NATIVE_BATCH | rec.FORMAT_LONG_PROPERTIES, _long_batch)


class MessageStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        d = config.directory
        # Every segment, ConsumeQueue and index file is opened through this cache.
        self.files = FileCache(config.max_open_files or default_budget())
        self.commitlog = CommitLog(os.path.join(d, "commitlog"), config.segment_size, self.files)
        self.index = KeyIndex(os.path.join(d, "index"), config.index_slots, config.index_entries,
                              self.files)
        self.queues: dict[tuple[str, int], ConsumeQueue] = {}
        self.store_host = config.store_host
        self.dispatched_pos = 0  # every record below is in its ConsumeQueue and the index
        self.failed: FerryError | None = None
        # Set while this store only takes replicated bytes (a slave, a fenced master):
        # every ``append`` raises it; ``append_replicated`` is the way in.
        self.read_only: FerryError | None = None
        self._lock = DirectoryLock(d)
        self.topic_retention = TopicRetention()
        self.times = TimeIndexes(os.path.join(d, "timeindex"))
        self.compacted: dict[tuple[str, int], CompactedLog] = {}
        self._retired_compacted: CompactedLog | None = None
        self._time_indexes = self.times.indexes  # the hot path's lookup
        self._checkpoint_lock = threading.Lock()
        self._topic_tails: dict[str, bytes] = {}
        self._last_ts = 0
        self._open = False
        self._last_checkpoint = 0  # the offsets of the last two distinct checkpoints
        self._previous_checkpoint = 0
        # Topics whose ConsumeQueue tag-hash field carries something else than the
        # tag's hash (the timer topic stores the delivery time there): recovery asks
        # the hook, given the record's properties, what append wrote.
        self.tag_hash_hooks: dict[str, Callable[[Mapping[str, str]], int]] = {}
        self.repairs = Repairs(self)
        # Records below this CommitLog offset were neither written nor validated by
        # this process: a get checks their body CRC too (docs/storage.md, "Damage").
        self.verified_from = 0
        # Damage a worker thread's read met, for the owner thread to repair.
        self._pending_repairs: list[tuple[str, int, int, str]] = []
        self._emptied: set[tuple[str, int]] = set()  # queue directories found without files
        self._bad_index: set[int] = set()  # index entries reported damaged

    @property
    def damage(self) -> DamageStats:
        """What was found damaged since open (a ``repair.DamageStats``)."""
        return self.repairs.stats

    # ================================================================ lifecycle

    def open(self, accept: Callable[[str, int, int], bool] = lambda t, q, p: True,
             before_scan: Callable[[int], None] | None = None,
             live: Callable[[str, int], bool] | None = None) -> RecoveryReport:
        """Lock the directory, map the files, and recover (see docs/storage.md):
        truncate every ConsumeQueue to the checkpoint, re-dispatch the CommitLog
        records from there on, validating each (magic, sizes, CRC, its own offset).
        A damaged range with valid records after it is skipped (a hole: its
        messages are marked lost, the rest kept); the log ends at the first byte
        after which no valid record follows.

        ``accept(topic, queue_id, physical_offset)`` says whether a record belongs
        to a live topic (a deleted topic's records stay in the log until retention);
        it is asked in log order. ``before_scan(checkpoint)`` runs once the
        ConsumeQueues are cut back to the checkpoint, before the first ``accept``
        (the broker's state log replays what its queue holds below it). ``live(topic,
        physical_offset)``, without side effects, answers the same question for a
        repair that walks the log out of order."""
        t0 = time.monotonic()
        if live is not None:
            self.repairs.live = live
        d = self.config.directory
        os.makedirs(d, exist_ok=True)
        self._lock.acquire()
        abort_path = os.path.join(d, "abort")
        clean = not os.path.exists(abort_path)
        with open(abort_path, "wb") as f:
            f.write(b"running\n")
        self.commitlog.open()
        self.index.open()
        self._load_queues()
        cp = read_checkpoint(d)
        cl = self.commitlog
        if not self.index.files and self.index.rebuild_from is None and cl.segments \
                and cp is not None and cp.physical_offset > cl.min_offset:
            # A checkpoint marks the index too (``mark_indexed``): no file under a log
            # that has records means the files were lost.
            log.error("the key index has no file while the CommitLog holds records up to "
                      "%d: it is built again from the CommitLog", cp.physical_offset)
            self.index.rebuild_from = cl.min_offset
        if cp is None:
            start = validate_from = cl.min_offset
        else:
            start = max(cp.physical_offset, cl.min_offset)
            validate_from = max(cp.previous_offset, cl.min_offset)
        if not cl.segments and cp is not None:
            cl.reset(cp.physical_offset)
            validate_from = start = cp.physical_offset
        elif cl.segments and start >= cl.segments[-1].end:
            start = cl.segments[-1].end
            validate_from = min(validate_from, start)
        # The entries recovery cuts are kept as hints: if a damaged range swallowed
        # their records, they say which queue offsets it held (lost, not reused).
        hints: list[tuple[int, tuple[str, int], tuple[int, int, int, int, int, int]]] = []
        cut: set[tuple[str, int]] = set()
        for key, q in self.queues.items():
            entries = q.truncate_physical(start, collect=True)
            self.times.set_bound(q.topic, q.queue_id, q.max_offset)
            if entries:
                cut.add(key)
                hints.extend((e.physical_offset, key, tuple(e)) for e in entries)  # type: ignore[misc]
        hints.sort()
        if before_scan is not None:
            before_scan(start)
        # A lost or damaged index file leaves records below the checkpoint unindexed:
        # the walk starts early enough to index them again.
        index_from = max(self.index.end_phys, cl.min_offset)
        walk_from = validate_from
        if self.index.rebuild_from is not None and cl.segments:
            index_from = max(self.index.rebuild_from, cl.min_offset)
            walk_from = min(validate_from, index_from)
            self.index.rebuild_from = None
        end = walk_from
        count = 0
        holes: list[Hole] = []
        pos = walk_from
        while True:
            damage: Damage | None = None
            for item in cl.walk(pos, resync=False):
                if type(item) is Damage:
                    damage = item
                    break
                r: rec.Record = item  # type: ignore[assignment]
                p = r.physical_offset
                if p >= start:
                    if accept(r.topic, r.queue_id, p):
                        self._redispatch(r, index_from, start if (r.topic, r.queue_id) in cut
                                         else None)
                        count += 1
                elif p >= index_from:
                    self._index_record(r)
                end = p + r.total_size
            if damage is None:
                break
            x = damage.start
            if x >= start and clean and cl.peek(x, 8) == bytes(8):
                break  # a clean shutdown: the zeros after the checkpoint are the end
            nxt = cl.find_next(x)
            if nxt is None:
                break  # nothing valid follows: the end of the log (cut below if torn)
            holes.append(self.repairs.hole(x, nxt, start, hints))
            pos = end = nxt
        if end < start:
            log.error("CommitLog damaged at offset %d, before the checkpoint %d, and no valid "
                      "record follows: cutting it there", end, start)
        discarded = self._bytes_follow(end)
        if discarded or not clean:
            # After a crash the bytes past the last valid record may be a torn
            # write: zero them so that they can never pass for records later.
            cl.truncate(end)
        else:
            cl.write_pos = end
        cl.flush(end)
        # An entry past the end points at data that is gone (lost with the page cache).
        for q in self.queues.values():
            if q.last_physical_end() > end:
                q.truncate_physical(end)
                self.times.cut(q.topic, q.queue_id, q.max_offset)
        self.dispatched_pos = end
        self.verified_from = min(walk_from, end)
        self._load_compacted()
        self._check_queues(start)
        # Everything below the end is validated and on disk now: the checkpoint written
        # here names the one recovered from as the previous one, so the next recovery
        # validates from there (it used to be 0 until this process's second
        # checkpoint: a kill in between meant a scan of the whole log).
        self._last_checkpoint = end
        self._previous_checkpoint = min(start, end)
        self._open = True
        self.mark_indexed()
        self.checkpoint()
        report = RecoveryReport(clean, cp.physical_offset if cp else None, start, end, count,
                                discarded, time.monotonic() - t0, walk_from, tuple(holes))
        if not clean or discarded or holes:
            log.warning("recovered after an unclean shutdown" if not clean
                        else "recovered a damaged store", extra={"report": report})
        return report

    def _check_queues(self, start: int) -> None:
        """After the walk: fill the files found missing, and check each queue's last
        entry against its record (one read of each: a damaged tail would otherwise
        wait for a read to be found)."""
        rp = self.repairs
        for key in self._emptied:
            q = self.queues.get(key)
            if q is not None and q.next_entry == q.first_entry:
                rp.rebuild_queue(q)
        self._emptied = set()
        for q in list(self.queues.values()):
            for first in q.missing:
                a = max(first, q.first_entry)
                b = min(first + q.per_file, q.next_entry) - 1
                if a <= b:
                    rp.repair_run(q, a, b, "a file was missing")
            q.missing = []
            last = q.next_entry - 1
            if last >= q.first_entry and q.last_physical_end() <= start \
                    and q.entry(last).size != LOST_SIZE and not rp.entry_ok(q, last) \
                    and not rp.check_queue(q, "its last entry does not match its record"):
                rp.repair_run(q, last, last, "its last entry does not match its record")

    def _bytes_follow(self, end: int) -> bool:
        head = self.commitlog.peek(end, 8)
        return head != bytes(len(head))

    def _load_queues(self) -> None:
        root = os.path.join(self.config.directory, "consumequeue")
        os.makedirs(root, exist_ok=True)
        for topic in os.listdir(root):
            tdir = os.path.join(root, topic)
            for qid in os.listdir(tdir):
                if qid.isdigit():
                    q = ConsumeQueue(os.path.join(tdir, qid), topic, int(qid),
                                     self.config.cq_entries_per_file, self.files)
                    q.open()
                    if not q.files:
                        # A queue's directory is made just before its first file: one
                        # without files lost them (deleted): rebuilt from the log.
                        self._emptied.add((topic, int(qid)))
                    self.queues[(topic, int(qid))] = q

    def _redispatch(self, r: rec.Record, index_from: int, cut_at: int | None = None) -> None:
        """Recovery: the entry (and index entries) of a record past the checkpoint.
        ``cut_at``: recovery cut this queue's entries from that CommitLog offset on."""
        count, h, keys = self._describe(r)
        q = self._queue(r.topic, r.queue_id)
        if r.queue_offset < q.max_offset:
            # The ConsumeQueue holds entries for offsets the log gives this record and
            # later ones: those entries are wrong (damage), the log is right.
            i = q.find(r.queue_offset)
            keep = i if i is not None else q.first_entry
            log.error("ConsumeQueue %s:%d damaged: it claims queue offsets from %d on that the "
                      "CommitLog gives records from offset %d on; rewritten from the log",
                      r.topic, r.queue_id, r.queue_offset, r.physical_offset)
            self.repairs.stats.entries += q.next_entry - keep
            q.truncate_entries(keep)
            if q.next_entry == q.first_entry and q.max_offset > r.queue_offset:
                q.reset_offsets(r.queue_offset)
        if r.queue_offset > q.max_offset:
            # Offsets missing before this record (a queue's first record has offset 0):
            # entries the ConsumeQueue lost (a file deleted or cut short) or records a
            # damaged range took. The log says which.
            if q.next_entry > q.first_entry:
                frm = q.last_physical_end()
            elif cut_at is not None:
                frm = cut_at
            else:
                frm = self.commitlog.min_offset
            self.repairs.fill_gap(q, frm, r.physical_offset, r.queue_offset)
        if q.next_entry == q.first_entry:
            q.reset_offsets(r.queue_offset)
        q.ready()
        q.append(r.physical_offset, r.total_size, r.queue_offset, count, h, r.store_timestamp)
        self.time_index(r.topic, r.queue_id).note(self._record_time(r), r.queue_offset, count,
                                                  r.total_size)
        if r.physical_offset >= index_from and keys:
            for key, member in keys:
                self.index.put(key, r.physical_offset, member, r.store_timestamp)
            self.index.advance(r.physical_offset + r.total_size, r.store_timestamp)
        self._last_ts = max(self._last_ts, r.store_timestamp)

    def _index_record(self, r: rec.Record) -> None:
        """Recovery: index a record below the checkpoint that the index lost (a damaged
        or missing index file)."""
        try:
            _count, _h, keys = self._describe(r)
        except (InvalidMessage, kb.BatchHeaderError):
            return
        if keys:
            self.index.ready(len(keys), r.physical_offset)
            for key, member in keys:
                self.index.put(key, r.physical_offset, member, r.store_timestamp)
        self.index.advance(r.physical_offset + r.total_size, r.store_timestamp)

    def queue(self, topic: str, queue_id: int) -> ConsumeQueue:
        """The ConsumeQueue of (topic, queue id), created (empty) if it has none."""
        return self._queue(topic, queue_id)

    def describe(self, r: rec.Record) -> tuple[int, int, list[tuple[str, int]]]:
        """(message count, tag hash, keys) of a stored record, as append computed them."""
        return self._describe(r)

    def _describe(self, r: rec.Record) -> tuple[int, int, list[tuple[str, int]]]:
        """(message count, tag hash, keys) of a stored record, as append computed them."""
        fmt = r.sys_flag & rec.FORMAT_MASK & ~rec.FORMAT_LONG_PROPERTIES
        if fmt == rec.FORMAT_SINGLE:
            props = r.properties
            hook = self.tag_hash_hooks.get(r.topic)
            h = hook(props) if hook is not None else tag_hash(props.get(PROPERTY_TAGS))
            return 1, h, _record_keys(props, 0)
        if fmt == rec.FORMAT_NATIVE_BATCH:
            n, h, keys, _uniq = scan_batch(r.body, bool(r.sys_flag & rec.FORMAT_LONG_PROPERTIES))
            return n, h, keys
        header = kb.read_header(r.body)
        return header.last_offset_delta + 1, TAG_HASH_NONE, []

    def close(self) -> None:
        """Flush everything, write the final checkpoint, remove the abort marker.
        After a failed ``open`` it only releases what open acquired."""
        if not self._open:
            for q in self.queues.values():
                q.close()
            self.commitlog.close()
            self.index.close()
            self.files.close_all()
            self._lock.release()
            return
        self._open = False
        try:
            if self.failed is None:
                self.mark_indexed()
                self.checkpoint()
                os.unlink(os.path.join(self.config.directory, "abort"))
        finally:
            for q in self.queues.values():
                q.close()
            self.commitlog.close()
            self.index.close()
            self.files.close_all()
            self._lock.release()

    # ================================================================ writing

    def _queue(self, topic: str, queue_id: int) -> ConsumeQueue:
        q = self.queues.get((topic, queue_id))
        if q is None:
            q = ConsumeQueue(os.path.join(self.config.directory, "consumequeue", topic,
                                          str(queue_id)), topic, queue_id,
                             self.config.cq_entries_per_file, self.files)
            q.open()
            self.queues[(topic, queue_id)] = q
        return q

    def _topic_tail(self, topic: str) -> bytes:
        tail = self._topic_tails.get(topic)
        if tail is None:
            raw = topic.encode()
            if not 0 < len(raw) <= rec.MAX_TOPIC_BYTES:
                raise InvalidMessage("topic name does not fit the record layout")
            tail = self._topic_tails[topic] = bytes((len(raw),)) + raw
        return tail

    def append(self, topic: str, queue_id: int,
               body: bytes | bytearray | tuple[bytes | memoryview, ...],
               properties: bytes,
               flag: int = 0, sys_flag: int = 0, born_timestamp: int = 0,
               born_host: bytes = _ZERO_HOST, reconsume_times: int = 0,
               prepared_offset: int = 0, count: int = 1, tag_hash: int = TAG_HASH_NONE,
               keys: Sequence[tuple[str, int]] = (), uniq_keys: tuple[str | None, ...] = (),
               ) -> PutResult:
        """Append one record holding ``count`` messages (1 unless ``sys_flag`` names a
        batch format) to (topic, queue_id) at the queue's next offset. Raises
        StoreError (store failed or full) or InvalidMessage (does not fit the layout).

        This is the hot path of every put: arguments are positional-friendly and
        the record is built as one bytes object copied into the mapped segment
        with one slice assignment (measured cheaper than three). A large body may
        come as a tuple of pieces (a Kafka batch: its rewritten first bytes and a
        view of the rest), written with the record's other parts by one pwritev.

        Properties past RocketMQ's 32,767 bytes make the record FORMAT_LONG_PROPERTIES
        (4-byte properties lengths; a batch body given with that flag has members
        encoded so). Everything that can fail (rolling the segment, opening or
        creating the ConsumeQueue and index files) happens before the record is
        written: a record is never in the CommitLog without its queue entry."""
        if self.failed is not None:
            raise self.failed
        if self.read_only is not None:
            raise self.read_only
        tail = self._topic_tails.get(topic) or self._topic_tail(topic)
        props_len = len(properties)
        if props_len > _MAX_PROPS or sys_flag & _LONG_PROPS:
            if props_len > rec.MAX_LONG_PROPERTIES_BYTES:
                raise InvalidMessage(f"properties exceed {rec.MAX_LONG_PROPERTIES_BYTES} bytes")
            sys_flag |= _LONG_PROPS
            plen, plen_size = _pack_i32(props_len), 4
        else:
            plen, plen_size = _pack_u16(props_len), 2
        q = self.queues.get((topic, queue_id)) or self._queue(topic, queue_id)
        qoff = q.max_offset
        if isinstance(body, tuple):  # pieces (a large body): written by one pwritev, never joined
            body_len = crc = 0
            for piece in body:
                body_len += len(piece)
                crc = _crc32(piece, crc)
        else:
            body_len = len(body)
            crc = _crc32(body)
        size = _HEADER_SIZE + body_len + len(tail) + plen_size + props_len
        cl = self.commitlog
        seg, local, phys = cl.reserve(size)
        if keys:
            it = self.index.tail  # inlined KeyIndex.ready: room for these keys?
            if it is None or it.entries + len(keys) > it.max_entries:
                self.index.ready(len(keys), phys)
        # Last: nothing after it may close the queue's file before append. Inlined:
        # the tail file is open and has room (ConsumeQueue.ready).
        qt = q.tail
        if qt is None or qt.mm is None or q.next_entry >= qt.limit:
            q.ready()
        ts = _time_ns() // 1_000_000
        if ts < self._last_ts:  # store timestamps never go backwards (time lookups bisect)
            ts = self._last_ts
        self._last_ts = ts
        header = _pack_header(size, _MAGIC, crc & 0x7FFFFFFF, queue_id, flag, qoff, phys,
                              sys_flag, born_timestamp or ts, born_host, ts, self.store_host,
                              reconsume_times, prepared_offset, body_len)
        if isinstance(body, tuple):
            cl.write_parts(seg, local, (header, *body, tail, plen, properties), size)
        else:
            _write(seg, local, b"".join((header, body, tail, plen, properties)))
        cl.write_pos = phys + size
        q.append(phys, size, qoff, count, tag_hash, ts)
        if sys_flag & _FORMAT_MASK != _KAFKA:  # a Kafka batch: noted with its max timestamp
            ti = self._time_indexes.get((topic, queue_id)) or self.time_index(topic, queue_id)
            ti.note(born_timestamp or ts, qoff, count, size)
        if keys:
            index = self.index
            for key, member in keys:
                index.put(key, phys, member, ts)
            index.advance(phys + size, ts)
        self.dispatched_pos = phys + size
        return PutResult(topic, queue_id, qoff, count, phys, ts, self.store_host, uniq_keys)

    def append_message(self, topic: str, queue_id: int, body: bytes,
                       properties: Mapping[str, str], flag: int = 0, sys_flag: int = 0,
                       born_timestamp: int = 0, born_host: bytes = _ZERO_HOST,
                       reconsume_times: int = 0, prepared_offset: int = 0) -> PutResult:
        """Append a single message, deriving its tag hash and keys from its properties."""
        if not properties:
            return self.append(topic, queue_id, body, b"", flag, sys_flag, born_timestamp,
                               born_host, reconsume_times, prepared_offset)
        return self.append(
            topic, queue_id, body, rec.encode_properties(properties), flag, sys_flag,
            born_timestamp, born_host, reconsume_times, prepared_offset, 1,
            tag_hash(properties.get(PROPERTY_TAGS)), _record_keys(properties, 0),
            (properties.get(PROPERTY_UNIQ_KEY),))

    def append_batch(self, topic: str, queue_id: int, messages: Sequence[Message],
                     born_timestamp: int = 0, born_host: bytes = _ZERO_HOST,
                     max_body_bytes: int = 1 << 62) -> PutResult:
        """Append messages (their body, flag and properties) as one native batch record.
        Raises InvalidMessage if a message names another topic, MessageTooLarge if
        the bodies exceed ``max_body_bytes`` together.

        Members are written in RocketMQ's batch encoding with magic set and the
        member CRC left 0, as RocketMQ clients send them: the record's own body
        CRC covers every member, and a member CRC is computed only when a
        RocketMQ pull unpacks the batch."""
        fmt = rec.FORMAT_NATIVE_BATCH
        encoded = _encode_plain_batch(topic, messages)
        keys: list[tuple[str, int]]
        uniq: tuple[str | None, ...]
        if encoded is not None:  # no member has properties: the common case, kept cheap
            body, total = encoded
            n, h, keys, uniq = len(messages), TAG_HASH_NONE, [], ()
        else:
            try:
                body, total, h, keys, uniq = _encode_batch(topic, messages)
            except _LongProperties:  # a member's properties exceed RocketMQ's 32,767 bytes
                body, total, h, keys, uniq = _encode_batch(topic, messages, long=True)
                fmt |= rec.FORMAT_LONG_PROPERTIES
            n = len(messages)
        if total > max_body_bytes:
            raise MessageTooLarge(f"batch bodies total {total} bytes; the maximum is "
                                  f"{max_body_bytes}")
        return self.append(topic, queue_id, body, b"", 0, fmt,
                           born_timestamp, born_host, 0, 0, n, h, keys, uniq)

    def append_encoded_batch(self, topic: str, queue_id: int, body: bytes,
                             born_timestamp: int = 0, born_host: bytes = _ZERO_HOST
                             ) -> PutResult:
        """Append a native batch body already in RocketMQ's batch encoding (what
        SEND_BATCH_MESSAGE carries) as it came, validating every member's sizes."""
        n, h, keys, uniq = scan_batch(body)
        return self.append(topic, queue_id, body, b"", 0, rec.FORMAT_NATIVE_BATCH,
                           born_timestamp, born_host, 0, 0, n, h, keys, uniq)

    def append_kafka_batch(self, topic: str, queue_id: int, batch: bytes | bytearray | memoryview,
                           **kw: object) -> PutResult:
        """Append one Kafka RecordBatch (magic 2) verbatim but for its base offset,
        which becomes the queue offset of its first record."""
        try:
            h = kb.read_header(batch)
        except kb.BatchHeaderError as exc:
            raise CorruptMessage(str(exc)) from exc
        if h.size != len(batch):
            raise CorruptMessage("RecordBatch length does not match the bytes given")
        if h.records_count != h.last_offset_delta + 1:
            raise InvalidMessage("a producer batch must have lastOffsetDelta == count - 1")
        q = self.queues.get((topic, queue_id)) or self._queue(topic, queue_id)
        body = kb.with_base_offset_parts(batch, q.max_offset)
        result = self.append(topic, queue_id, body, b"", sys_flag=rec.FORMAT_KAFKA_BATCH,
                             count=h.records_count, born_timestamp=h.base_timestamp or 0, **kw)  # type: ignore[arg-type]
        ti = self._time_indexes.get((topic, queue_id)) or self.time_index(topic, queue_id)
        ti.note(h.max_timestamp, result.queue_offset, result.count,
                self.dispatched_pos - result.physical_offset)
        return result

    # ================================================================ replication

    def append_replicated(self, offset: int, data: bytes | memoryview,
                          accept: Callable[[str, int, int], bool]) -> list[rec.Record]:
        """A slave's write (docs/cluster.md, "The stream"): whole records copied from the
        master's CommitLog, appended verbatim at the same physical offset (this log's
        end), then dispatched record by record exactly as recovery re-dispatches:
        ``accept(topic, queue_id, physical_offset)`` (the broker's, which applies
        state records) and the ConsumeQueue and index entries. Every record is
        validated (magic, sizes, CRC, its own offset) before a byte is written; the
        bytes may end with the blank record that closes a segment. Returns the
        records appended. Raises CorruptMessage (nothing written) or StoreError."""
        if self.failed is not None:
            raise self.failed
        cl = self.commitlog
        if offset != cl.write_pos:
            raise StoreError(f"replicated bytes start at {offset}; this log ends at {cl.write_pos}")
        tail = cl.segments[-1] if cl.segments else None
        seg_end = tail.end if tail is not None and offset < tail.end else offset + cl.segment_size
        records: list[rec.Record] = []
        pos, n = 0, len(data)
        while pos < n:
            if n - pos < rec.BLANK_SIZE:
                raise CorruptMessage(f"replicated bytes end inside a record at {offset + pos}")
            total, magic = rec.peek_size(data, pos)
            if magic == rec.BLANK_MAGIC:
                if pos + total != n or offset + n != seg_end:
                    raise CorruptMessage(f"a blank record at {offset + pos} does not close "
                                         "its segment")
                break
            try:
                r = rec.decode(data, pos)
            except rec.RecordError as exc:
                raise CorruptMessage(f"replicated record at {offset + pos}: {exc}") from None
            if r.physical_offset != offset + pos:
                raise CorruptMessage(f"the record at {offset + pos} says it is at "
                                     f"{r.physical_offset}")
            records.append(r)
            pos += total
        cl.append_raw(offset, data)
        for r in records:
            if accept(r.topic, r.queue_id, r.physical_offset):
                self._redispatch(r, 0)
        self.dispatched_pos = cl.write_pos
        return records

    def truncate(self, phys: int) -> None:
        """Replication: make ``phys`` (a record boundary) the end of the log — the
        CommitLog, every ConsumeQueue and the key index forget what lies at or past
        it — and checkpoint there (docs/cluster.md, "Truncation")."""
        if phys >= self.commitlog.write_pos:
            return
        self.commitlog.truncate(phys)
        for q in self.queues.values():
            q.truncate_physical(phys)
        self.index.truncate(phys)
        self.dispatched_pos = phys
        self._last_checkpoint = min(self._last_checkpoint, phys)
        self._previous_checkpoint = min(self._previous_checkpoint, phys)
        self.checkpoint()

    # ================================================================ reading

    def queue_bounds(self, topic: str, queue_id: int) -> tuple[int, int]:
        q = self.queues.get((topic, queue_id))
        if q is None:
            return 0, 0
        if self.compacted:
            comp = self.compacted.get((topic, queue_id))
            if comp is not None:
                return comp.start, q.max_offset
        return q.min_offset, q.max_offset

    # ---------------------------------------------------------------- compaction

    def _compacted_dir(self, topic: str, queue_id: int) -> str:
        return os.path.join(self.config.directory, "compacted", topic, str(queue_id))

    def _load_compacted(self) -> None:
        root = os.path.join(self.config.directory, "compacted")
        if not os.path.isdir(root):
            return
        for topic in os.listdir(root):
            for qid in os.listdir(os.path.join(root, topic)):
                q = self.queues.get((topic, int(qid))) if qid.isdigit() else None
                if q is None:
                    continue
                comp = CompactedLog(self._compacted_dir(topic, q.queue_id), topic, q.queue_id)
                if comp.load():
                    self.compacted[(topic, q.queue_id)] = comp
                    self._drop_compacted_entries(q, comp.end)

    @staticmethod
    def _drop_compacted_entries(q: ConsumeQueue, end: int) -> None:
        """The queue's entries below ``end`` are in the compacted log now."""
        index = q.find(end)
        q.delete_before_index(q.next_entry if index is None and end >= q.max_offset
                              else index if index is not None else q.first_entry)

    def compaction_range(self, topic: str, queue_id: int, now_ms: int, min_lag_ms: int
                         ) -> tuple[CompactedLog | None, int, int] | None:
        """(old compacted log, start, end) of the next pass over the queue: from where
        the last one ended to the first record younger than ``min_lag_ms`` or not yet
        flushed; None when there is nothing to compact."""
        q = self.queues.get((topic, queue_id))
        if q is None or q.next_entry == q.first_entry:
            return None
        old = self.compacted.get((topic, queue_id))
        start = max(q.min_offset, old.end if old is not None else 0)
        stop = min(q.first_stored_at_or_after(now_ms - min_lag_ms + 1),
                   q.first_at_or_past(self.commitlog.flushed_pos))
        end = q.entry(stop).base_offset if stop < q.next_entry else q.max_offset
        return (old, start, end) if end > start else None

    def read_records(self, topic: str, queue_id: int, offset: int, n: int) -> list[rec.Record]:
        """Decoded records of the queue from ``offset`` (a worker thread: pread)."""
        got = self.get(topic, queue_id, offset, n, 1 << 24, pread=True)
        return [rec.decode(r.data, 0, check_crc=False) for r in got.records]

    def compact_queue(self, topic: str, queue_id: int, old: CompactedLog | None, start: int,
                      end: int, now_ms: int, delete_retention_ms: int,
                      max_keys: int = DEFAULT_MAX_KEYS) -> PassResult:
        """A compaction pass (compaction.py), in a worker thread; ``switch_compacted``
        puts its result in use on the owner thread."""
        return compact(old, self._compacted_dir(topic, queue_id), topic, queue_id, start, end,
                       lambda offset, n: self.read_records(topic, queue_id, offset, n),
                       now_ms, delete_retention_ms, max_keys)

    def discard_compacted(self, topic: str, queue_id: int, new: CompactedLog) -> None:
        """A pass whose topic was deleted (or deleted and created again) meanwhile: its
        files must not outlive it, or a later incarnation would load them."""
        new.close()
        old = self.compacted.pop((topic, queue_id), None)
        if old is not None:
            old.close()
        shutil.rmtree(self._compacted_dir(topic, queue_id), ignore_errors=True)

    def switch_compacted(self, topic: str, queue_id: int, new: CompactedLog) -> None:
        q = self.queues.get((topic, queue_id))
        if q is None:  # the topic went meanwhile
            self.discard_compacted(topic, queue_id, new)
            return
        old = self.compacted.get((topic, queue_id))
        self.compacted[(topic, queue_id)] = new
        self._drop_compacted_entries(q, new.end)
        if old is not None:
            # A worker thread's read may still hold the old file: it is closed at the
            # next switch (its name is unlinked now; the open descriptor keeps the data).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old.path)
            if self._retired_compacted is not None:
                self._retired_compacted.close()
            self._retired_compacted = old

    def get(self, topic: str, queue_id: int, offset: int, max_messages: int, max_bytes: int,
            filt: Filter | None = None, visible_limit: int | None = None,
            pread: bool = False, _again: bool = True) -> GetResult:
        """Up to ``max_messages`` messages (whole records; at least one record even if
        it exceeds ``max_bytes``) from queue ``offset`` on. Records at or past
        ``visible_limit`` (a CommitLog offset: unflushed data under sync flush) are
        not returned. ``pread`` reads with pread(2): use it from a worker thread; the
        ConsumeQueue is then read through a pinned reader (the owner thread cannot
        close a file under it) and, if retention deleted a file the read needed,
        the read starts over once from the queue's new bounds.

        Every entry read is checked against its record (size, magic, queue id, queue
        offset, physical offset) and against the queue's numbering, and a record
        below ``verified_from`` has its CRC checked too: lost entries are skipped; an
        entry that does not match is written again from the CommitLog (``repairs``)
        and the read done again; a record whose CRC fails is marked lost and skipped.
        A worker thread's read stops before damage it meets and leaves the repair to
        the owner thread (``repair_pending``)."""
        tries = 3
        while True:
            try:
                return self._get(topic, queue_id, offset, max_messages, max_bytes, filt,
                                 visible_limit, pread, _again)
            except _Damaged as d:
                cq = self.queues[(topic, queue_id)]
                tries -= 1
                if d.kind == "structure":
                    if not self.repairs.check_queue(cq, d.why) or tries <= 0:
                        raise StoreError(f"ConsumeQueue {topic}:{queue_id} is damaged at "
                                         f"offset {offset} and could not be repaired") from None
                elif tries > 0:
                    self.repairs.repair_run(cq, d.index, d.index, d.why)
                else:
                    cq.mark_lost(d.index)  # repaired and still wrong: never loop on it

    def repair_pending(self) -> None:
        """Repair what worker threads' reads found damaged (owner thread; the broker
        calls it once a checkpoint interval)."""
        pending, self._pending_repairs = self._pending_repairs, []
        for topic, queue_id, index, why in pending:
            q = self.queues.get((topic, queue_id))
            if q is None or not q.first_entry <= index < q.next_entry:
                continue
            if why == "structure":
                self.repairs.check_queue(q, "its offsets do not continue")
            elif q.entry(index).size >= 0 and not self.repairs.entry_ok(q, index):
                self.repairs.repair_run(q, index, index, why)

    def _get(self, topic: str, queue_id: int, offset: int, max_messages: int, max_bytes: int,
             filt: Filter | None, visible_limit: int | None, pread: bool, _again: bool
             ) -> GetResult:
        cq = self.queues.get((topic, queue_id))
        if cq is None:
            return GetResult(GetStatus.NO_MESSAGE_IN_QUEUE, (), 0, 0, 0)
        if self.compacted:
            comp = self.compacted.get((topic, queue_id))
            if comp is not None and offset < comp.end:  # the compacted range (compaction.py)
                if offset < comp.start:
                    return GetResult(GetStatus.OFFSET_TOO_SMALL, (), comp.start, comp.start,
                                     cq.max_offset)
                got = comp.get(offset, max_messages, max_bytes, cq.max_offset)
                if got.records:
                    return got
                offset = comp.end
        q: ConsumeQueue | PinnedReader = cq
        read = self.commitlog.read
        reader = None
        if pread:
            q = reader = cq.reader()
            read = self.commitlog.pread
        try:
            lo, hi = q.min_offset, q.max_offset
            if offset < lo:
                return GetResult(GetStatus.OFFSET_TOO_SMALL, (), lo, lo, hi)
            if offset == hi:
                return GetResult(GetStatus.NO_NEW_MESSAGE, (), offset, lo, hi)
            if offset > hi:
                return GetResult(GetStatus.OFFSET_OVERFLOW_BADLY, (), hi, lo, hi)
            i = q.find(offset)
            if i is None:
                return GetResult(GetStatus.NO_NEW_MESSAGE, (), offset, lo, hi)
            limit = self.dispatched_pos if visible_limit is None else visible_limit
            verified = self.verified_from
            records: list[StoredRecord] = []
            msgs = nbytes = scanned = 0
            next_off = offset
            # Each entry holds at least one message: without a filter, max_messages
            # entries are enough; with one, up to _MAX_SCAN_ENTRIES more may be skipped.
            end = min(q.next_entry,
                      i + max(max_messages, 1) + (_MAX_SCAN_ENTRIES if filt is not None else 0))
            new = tuple.__new__
            j = i - 1
            expect = -1
            for phys, size, base, count, th, ts in q.iter_entries(i, end):
                j += 1
                if expect < 0:
                    if not base <= offset < base + count:
                        raise _Damaged(j, "structure", "its offsets do not lead to the one read")
                elif base != expect:
                    raise _Damaged(j, "structure", "its offsets do not continue")
                expect = base + count
                if size == _LOST:  # lost with a damaged range: skipped
                    next_off = expect
                    scanned += 1
                    if scanned >= _MAX_SCAN_ENTRIES:
                        break
                    continue
                if phys + size > limit or (records and nbytes + size > max_bytes):
                    if phys + size > self.dispatched_pos:
                        raise _Damaged(j, "entry", "it points past the CommitLog's end")
                    break
                scanned += 1
                if filt is not None and not filt.may_match_tag_hash(th):
                    next_off = base + count
                    if scanned >= _MAX_SCAN_ENTRIES:
                        break
                    continue
                if size < _HEADER_SIZE or count < 1 or phys < 0:
                    raise _Damaged(j, "entry", "its size or count cannot be a record's")
                data = read(phys, size)
                if data is None:
                    if phys + size <= self.commitlog.min_offset:
                        break  # removed under us by retention; the next get sees the new minimum
                    raise _Damaged(j, "entry", "it points past the CommitLog's end")
                total, magic, crc, qid, qoff, rphys, sys_flag, rts = _GET_CHECK.unpack_from(data)
                if total != size or magic != _MAGIC or qid != queue_id or qoff != base \
                        or rphys != phys or (rts != ts and not sys_flag & _V6_FLAGS):
                    raise _Damaged(j, "entry", "it does not match the record where it points")
                if phys < verified and not _record_ok(data, crc, sys_flag, phys):
                    if reader is not None:
                        self._pending_repairs.append((topic, queue_id, j, "crc"))
                        break
                    self._record_lost(cq, j, phys, size, count)
                    next_off = expect
                    continue
                sr = new(StoredRecord, (topic, queue_id, base, count, phys,  # NamedTuple, fast
                                        sys_flag, ts, data, filt))
                if filt is not None and next(sr.messages(offset), None) is None:
                    next_off = base + count
                    if scanned >= _MAX_SCAN_ENTRIES:
                        break
                    continue
                records.append(sr)
                nbytes += size
                msgs += base + count - (offset if base < offset else base)
                next_off = base + count
                if msgs >= max_messages:
                    break
            if records:
                status = GetStatus.FOUND
            elif next_off > offset:
                status = GetStatus.NO_MATCHED_MESSAGE
            else:
                status = GetStatus.NO_NEW_MESSAGE
            return GetResult(status, tuple(records), next_off, lo, hi)
        except _Damaged as d:
            if reader is None:
                raise
            # A worker thread does not repair: it answers what it read before the damage
            # and leaves the repair to the owner thread.
            self._pending_repairs.append((topic, queue_id, d.index,
                                          "structure" if d.kind == "structure" else d.why))
            return GetResult(GetStatus.FOUND if records else GetStatus.NO_NEW_MESSAGE,
                             tuple(records), next_off, lo, hi)
        except FileGone:
            if reader is None or not _again:
                raise
            reader.release()
            reader = None
            return self._get(topic, queue_id, offset, max_messages, max_bytes, filt,
                             visible_limit, True, False)
        finally:
            if reader is not None:
                reader.release()

    def _record_lost(self, q: ConsumeQueue, index: int, phys: int, size: int, count: int) -> None:
        """A record a get read fails its CRC: its messages are lost, never served."""
        if q.mark_lost(index):
            st = self.repairs.stats
            st.ranges += 1
            st.bytes += size
            st.messages += count
            log.error("CommitLog record at %d (%d bytes, %s:%d offsets %d..) fails its CRC: its "
                      "%d message(s) are lost (its ConsumeQueue entry is marked lost)",
                      phys, size, q.topic, q.queue_id, q.entry(index).base_offset, count)

    def offset_for_time(self, topic: str, queue_id: int, timestamp_ms: int) -> int:
        """The first offset stored at or after ``timestamp_ms`` (store time, the
        ConsumeQueue's): LogAppendTime semantics. The max offset if none."""
        q = self.queues.get((topic, queue_id))
        return q.offset_for_time(timestamp_ms) if q else 0

    # ---------------------------------------------------------------- the time index

    def time_index(self, topic: str, queue_id: int) -> TimeIndex:
        """The queue's time index (core/store/timeindex.py), loaded on first use and
        brought up to the queue's end: records below the end that the file does not
        cover (appended after its last entry, before the last checkpoint) are read
        and noted, so that its maximum is every record's."""
        ti = self._time_indexes.get((topic, queue_id))
        if ti is not None:
            return ti
        q = self.queues.get((topic, queue_id)) or self._queue(topic, queue_id)
        ti = self.times.get(topic, queue_id, q.min_offset, q.max_offset)
        if ti.complete:
            start = max(ti.next_offset, q.min_offset)
            index = q.find(start)
            if index is not None:
                for phys, size, base, count, _h, _ts in q.iter_entries(index, q.next_entry):
                    ts = self._time_at(phys)
                    if ts is not None:
                        ti.note(ts, base, count, size)
        return ti

    def _record_time(self, r: rec.Record) -> int:
        """A record's timestamp for the time index: a Kafka batch's maxTimestamp, else
        the born timestamp."""
        if r.sys_flag & _FORMAT_MASK == _KAFKA:
            return kb.max_timestamp(r.body)
        return r.born_timestamp or r.store_timestamp

    def _time_at(self, phys: int) -> int | None:
        data = self.read_record(phys)
        if data is None:
            return None
        try:
            return self._record_time(rec.decode(data, 0, check_crc=False))
        except (rec.RecordError, struct.error):
            return None

    def offset_for_create_time(self, topic: str, queue_id: int, timestamp_ms: int
                               ) -> tuple[int, int]:
        """Kafka's lookup by timestamp: (the first offset whose record's timestamp is
        >= ``timestamp_ms``, that timestamp); (max offset, -1) if there is none. A
        record's timestamp is its CreateTime (a Kafka record's own, a native
        message's born time). Found through the time index, then by reading the
        records from where it points (at most about one index interval), then inside
        the record found (a batch holds many)."""
        q = self.queues.get((topic, queue_id))
        if q is None or q.next_entry == q.first_entry:
            return (q.max_offset if q else 0), -1
        ti = self.time_index(topic, queue_id)
        start = ti.scan_from(timestamp_ms) if ti.complete else None
        start = q.min_offset if start is None else max(start, q.min_offset)
        index = q.find(start)
        if index is None:
            return q.max_offset, -1
        for phys, _size, base, _count, _h, _ts in q.iter_entries(index, q.next_entry):
            if (self._time_at(phys) or -1) < timestamp_ms:
                continue
            for m in self.messages_at(phys):
                if m.queue_offset >= start and m.born_timestamp >= timestamp_ms:
                    return m.queue_offset, m.born_timestamp
            return base, timestamp_ms  # unreadable members: the record's first offset
        return q.max_offset, -1

    def max_timestamp(self, topic: str, queue_id: int) -> tuple[int, int]:
        """(offset, timestamp) of the record with the largest timestamp (its first
        message), (-1, -1) for an empty queue: ListOffsets' MAX_TIMESTAMP."""
        q = self.queues.get((topic, queue_id))
        if q is None or q.next_entry == q.first_entry:
            return -1, -1
        ti = self.time_index(topic, queue_id)
        if ti.complete and ti.max_offset >= q.min_offset:
            return ti.max_offset, ti.max_ts
        best = (-1, -1)
        for phys, _size, base, _count, _h, _ts in q.iter_entries(q.first_entry, q.next_entry):
            ts = self._time_at(phys)
            if ts is not None and ts > best[1]:
                best = (base, ts)
        return best

    def read_record(self, phys: int) -> bytes | None:
        """The whole record starting at CommitLog offset ``phys``, or None."""
        head = self.commitlog.read(phys, 8)
        if head is None:
            return None
        size, magic = _SIZE_MAGIC.unpack(head)
        if magic != rec.MAGIC or size < rec.HEADER_SIZE:
            return None
        return self.commitlog.read(phys, size)

    def messages_at(self, phys: int) -> list[ConsumedMessage]:
        """Every message of the record at CommitLog offset ``phys`` (none if gone)."""
        data = self.read_record(phys)
        if data is None:
            return []
        try:
            # The CRC too where this process has not validated the record itself.
            r = rec.decode(data, 0, check_crc=phys < self.verified_from)
        except rec.RecordError:
            return []
        if r.physical_offset != phys:
            return []
        return list(StoredRecord(r.topic, r.queue_id, r.queue_offset, 1, phys, r.sys_flag,
                                 r.store_timestamp, data).messages())

    def message_at(self, phys: int, member: int = 0) -> ConsumedMessage | None:
        """The message stored at (CommitLog offset, batch member), or None."""
        for m in self.messages_at(phys):
            if m.batch_index == member:
                return m
        return None

    def lookup_key(self, key: str, topic: str | None = None, limit: int = 32
                   ) -> list[ConsumedMessage]:
        """Messages whose KEYS or UNIQ_KEY include ``key``, newest first. A
        RocketMQ-format client id is also looked up by its prefix, which is how
        batch records index their members' ids (see ``client_id_prefix``)."""
        candidates = self.index.lookup(key, limit * 4)
        prefix = client_id_prefix(key)
        if prefix is not None:
            candidates += [c for c in self.index.lookup(prefix, limit * 4)
                           if c not in candidates]
            # Newest first across both lookups: an id's newer copy in a batch (indexed
            # by prefix) must come before its older copy stored alone (indexed exactly).
            candidates.sort(key=lambda c: c[0], reverse=True)
        out: list[ConsumedMessage] = []
        seen: set[tuple[int, int]] = set()
        for phys, member in candidates:
            found = (self.messages_at(phys) if member == ANY_MEMBER
                     else [m for m in [self.message_at(phys, member)] if m is not None])
            if not found and phys >= self.commitlog.min_offset:
                self._bad_index_entry(key, phys)
            for m in found:
                if (m.physical_offset, m.batch_index) in seen:
                    continue
                if topic is not None and m.topic != topic:
                    continue
                if key in m.keys or m.properties.get(PROPERTY_UNIQ_KEY) == key:
                    seen.add((m.physical_offset, m.batch_index))
                    out.append(m)
            if len(out) >= limit:
                break
        return out[:limit]

    def _bad_index_entry(self, key: str, phys: int) -> None:
        """An index entry points at no valid record (its record was in a damaged range,
        or the entry itself is damaged): counted and logged once. ``ferrymq store
        check`` reports such entries, ``--repair`` builds the index again."""
        if phys in self._bad_index or len(self._bad_index) >= 10_000:
            return
        self._bad_index.add(phys)
        self.repairs.stats.index_entries += 1
        log.error("the key index points at CommitLog offset %d (key %r), where no valid record "
                  "starts: damaged; `ferrymq store check --repair` builds the index again",
                  phys, key)

    # ================================================================ admin

    def drop_topic(self, topic: str) -> None:
        """Forget a topic's ConsumeQueues (its records age out of the CommitLog)."""
        for key in [k for k in self.queues if k[0] == topic]:
            self.queues.pop(key).remove_files()
        tdir = os.path.join(self.config.directory, "consumequeue", topic)
        if os.path.isdir(tdir):
            shutil.rmtree(tdir, ignore_errors=True)
        self._topic_tails.pop(topic, None)
        self.topic_retention.forget(topic)
        self.times.drop_topic(topic)
        for key in [k for k in self.compacted if k[0] == topic]:
            self.compacted.pop(key).close()
        shutil.rmtree(os.path.join(self.config.directory, "compacted", topic), ignore_errors=True)

    def topic_queue_ids(self, topic: str) -> list[int]:
        return sorted(q for t, q in self.queues if t == topic)

    # ================================================================ durability

    def flush(self, upto: int | None = None) -> int:
        """fsync the CommitLog up to ``upto`` (worker thread). See CommitLog.flush."""
        return self.commitlog.flush(upto)

    def mark_indexed(self) -> None:
        """Owner thread, before a checkpoint: the key index's end mark follows the log
        even when the last records had no keys, and the index has a file as soon as the
        log has a record. So an index found without a file under a log that has records
        was lost, and recovery builds it again from the log (``open``); and a store whose
        records carry no keys never walks back to its last keyed record."""
        pos = self.dispatched_pos
        if pos <= self.commitlog.min_offset:
            return
        index = self.index
        if not index.files:
            index.ready(0, pos)
        if index.end_phys < pos:
            index.advance(pos, self._last_ts)

    def checkpoint(self) -> int:
        """Make the ConsumeQueues and the index durable up to the CommitLog offset
        dispatched now, and record it (worker thread). Returns that offset. Two
        callers at once (the broker's periodic checkpoint and an explicit one) take
        turns: both write the same temporary file before renaming it."""
        with self._checkpoint_lock:
            pos = self.dispatched_pos
            self.commitlog.flush(pos)
            for q in list(self.queues.values()):
                if q.dirty and q.files:
                    try:
                        q.flush()
                    except (OSError, ValueError):
                        if q.files:  # a queue dropped meanwhile closes its files: fine
                            raise
            self.index.flush()
            self.times.flush()
            last = self._last_checkpoint
            if pos != last:
                self._previous_checkpoint, self._last_checkpoint = last, pos
            write_checkpoint(self.config.directory, Checkpoint(
                pos, min(self._previous_checkpoint, pos), int(time.time() * 1000)))
            return pos

    # ================================================================ retention

    def retain_topic(self, topic: str, cutoff_ms: int | None, max_bytes: int | None) -> None:
        """A topic's own retention (core/store/topicretention.py): its queues forget
        the entries stored before ``cutoff_ms`` and beyond the newest ``max_bytes``."""
        for qid in self.topic_queue_ids(topic):
            self.topic_retention.trim(self.queues[(topic, qid)], cutoff_ms, max_bytes)

    def oldest_physical(self, topic: str) -> int | None:
        """The CommitLog offset of the topic's oldest live record (None: no records)."""
        out = None
        for qid in self.topic_queue_ids(topic):
            q = self.queues[(topic, qid)]
            if q.next_entry > q.first_entry:
                phys = q.entry(q.first_entry).physical_offset
                out = phys if out is None else min(out, phys)
        return out

    def retain(self, now_ms: int, retention_ms: int, max_disk_ratio: float,
               disk_usage: Callable[[], tuple[int, int]] | None = None,
               protect_from: int | None = None, hold_from: int | None = None,
               on_space_delete: Callable[[int, int], None] | None = None) -> list[int]:
        """Delete CommitLog segments older than ``retention_ms`` and, while the disk
        is fuller than ``max_disk_ratio`` (1.0 or more: never), enough of the oldest
        ones to get under it regardless of age; never the active segment. Queue
        minimum offsets and the index follow. ``disk_usage`` returns (used, total)
        bytes (default: the file system of the data directory). A segment holding
        bytes at or past ``protect_from`` is kept whatever its age (the broker's state
        records no snapshot holds yet). A segment holding bytes at or past
        ``hold_from`` is kept whatever its age but not against disk pressure (topics
        whose own retention is longer than the broker's). Each deleted segment is
        logged: at INFO when its age let it go; one deleted for space is given to
        ``on_space_delete(start, end)`` before it goes (the broker logs what it held),
        or logged at WARNING. Returns the deleted segments' bases."""
        cl = self.commitlog
        old = cl.segments[:-1]
        keep_from = by_age = cl.min_offset
        mtimes = {}
        for base, mtime in cl.segment_mtimes():
            if mtime * 1000 >= now_ms - retention_ms:
                break
            mtimes[base] = mtime
            keep_from = by_age = base + cl.segment_size
        if hold_from is not None:
            keep_from = by_age = max(cl.min_offset, min(keep_from, hold_from))
        if max_disk_ratio < 1.0 and old:
            used, total = (disk_usage or (lambda: _disk_usage(self.config.directory)))()
            excess = used - max_disk_ratio * total
            if excess > 0:
                n = min(len(old), max(1, -(-int(excess) // cl.segment_size)))
                keep_from = max(keep_from, old[n - 1].end)
        if protect_from is not None:
            keep_from = min(keep_from, protect_from)
        for seg in old:
            if seg.end > keep_from:
                break
            if seg.end <= by_age:
                log.info("retention deleted CommitLog segment %s (bytes %d..%d): last written "
                         "%s, older than the retention time", os.path.basename(seg.path),
                         seg.base, seg.end, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime(mtimes[seg.base])))
            elif on_space_delete is not None:
                on_space_delete(seg.base, seg.end)
            else:
                log.warning("disk above max_disk_ratio: deleted CommitLog segment %s (bytes "
                            "%d..%d) before its retention time", os.path.basename(seg.path),
                            seg.base, seg.end)
        deleted = cl.delete_segments(keep_from)
        if deleted:
            floor = cl.min_offset
            for q in self.queues.values():
                q.delete_before_physical(floor)
            self.index.delete_before(floor)
        self.files.trim()  # give back what worker threads' reads opened past the budget
        return deleted

    def queue_span(self, topic: str, queue_id: int, start: int, end: int) -> tuple[int, int]:
        """The queue offsets ``[lo, hi)`` of the queue's records that lie in CommitLog
        bytes ``[start, end)`` (``lo == hi``: none)."""
        q = self.queues.get((topic, queue_id))
        if q is None or q.next_entry == q.first_entry:
            return 0, 0
        i0, i1 = q.first_at_or_past(start), q.first_at_or_past(end)
        if i0 >= i1:
            return 0, 0
        last = q.entry(i1 - 1)
        return q.entry(i0).base_offset, last.base_offset + last.count


def _encode_plain_batch(topic: str, messages: Sequence[Message]) -> tuple[bytes, int] | None:
    """(batch body, body bytes) of messages without properties, or None as soon as
    one has some. The hot path of a batch put: tuple indexing (0 topic, 1 body,
    2 properties, 4 flag) and one extend per member measured a third cheaper than
    attribute access and three appends."""
    parts: list[bytes] = []
    extend = parts.extend
    total = 0
    for m in messages:
        if m[2]:
            return None
        if m[0] != topic:
            raise InvalidMessage("every message of a batch must go to the same topic")
        body = m[1]
        n = len(body)
        total += n
        extend((_pack_member(22 + n, _MAGIC, 0, m[4], n), body, b"\x00\x00"))
    return b"".join(parts), total


class _LongProperties(Exception):
    """A batch member's properties need the 4-byte length: encode the batch again so."""


def _encode_batch(topic: str, messages: Sequence[Message], long: bool = False
                  ) -> tuple[bytes, int, int, list[tuple[str, int]], tuple[str | None, ...]]:
    """(batch body, body bytes, tag hash, keys to index, client ids) of any messages;
    ``long``: members with 4-byte properties lengths (raises _LongProperties without
    it when a member needs them)."""
    head, pack_plen, no_props = (24, _pack_i32, b"\x00" * 4) if long else (22, _pack_u16, b"\x00\x00")
    parts: list[bytes] = []
    add = parts.append
    tags: set[str | None] = set()
    keys: list[tuple[str, int]] = []
    uniq: list[str | None] = []
    prefixes: set[str] = set()
    total = 0
    for i, m in enumerate(messages):
        if m.topic != topic:
            raise InvalidMessage("every message of a batch must go to the same topic")
        body = m.body
        total += len(body)
        props = m.properties
        if not props:
            tags.add(None)
            uniq.append(None)
            parts += (_pack_member(head + len(body), _MAGIC, 0, m.flag, len(body)), body,
                      no_props)
            continue
        pb = rec.encode_properties(props)
        if len(pb) > _MAX_PROPS:
            if not long:
                raise _LongProperties
            if len(pb) > rec.MAX_LONG_PROPERTIES_BYTES:
                raise InvalidMessage(f"properties exceed {rec.MAX_LONG_PROPERTIES_BYTES} bytes")
        if not _NOT_IN_BATCH.isdisjoint(props):
            raise _batch_member_refused(props)
        tags.add(props.get(PROPERTY_TAGS))
        k = props.get(PROPERTY_KEYS)
        if k:
            keys.extend((key, i) for key in k.split(" ") if key)
        u = props.get(PROPERTY_UNIQ_KEY)
        uniq.append(u)
        if u:
            prefix = client_id_prefix(u)
            if prefix is None:
                keys.append((u, i))
            elif prefix not in prefixes:
                prefixes.add(prefix)
                keys.append((prefix, ANY_MEMBER))
        add(_pack_member(head + len(body) + len(pb), _MAGIC, 0, m.flag, len(body)))
        add(body)
        add(pack_plen(len(pb)))
        add(pb)
    return (b"".join(parts), total, _batch_tag_hash(tags), keys,
            tuple(uniq) if any(uniq) else ())


def _batch_member_refused(props: Mapping[str, str]) -> InvalidMessage:
    names = ", ".join(sorted(_NOT_IN_BATCH.intersection(props)))
    return InvalidMessage(f"a batch member cannot carry {names}: delayed and transactional "
                          "messages are sent one by one")


def _batch_tag_hash(tags: Iterable[str | None]) -> int:
    distinct = set(tags)
    if len(distinct) == 1:
        return tag_hash(next(iter(distinct)))
    return TAG_HASH_MIXED


def _disk_usage(path: str) -> tuple[int, int]:
    usage = shutil.disk_usage(path)
    return usage.used, usage.total
