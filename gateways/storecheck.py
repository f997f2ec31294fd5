"""``ferrymq store check [--repair]``: verify a stopped broker's store offline, and rebuild what
is derived from the CommitLog.

What is checked (docs/storage.md, "Damage"; docs/operations.md, "Checking a store"):

- every CommitLog record: magic, sizes, body CRC, its own offset. A range where no
  valid record starts, with valid records after it, is a *hole*: what it held is
  lost. A range with nothing valid after it is the unsynced end a crash leaves
  (the broker cuts it at its next start): a note, not damage.
- every ConsumeQueue entry against the record where it points (size, magic, queue
  id and offset, physical offset, store time) and against its neighbours (offsets
  that continue), and every record of a queue against its entry: an entry missing,
  wrong or pointing nowhere is damage, except past the checkpoint after an unclean
  stop (recovery re-dispatches those). Entries marked lost are reported with the
  hole they stand for.
- every key index entry: it must point at a valid record holding a key with its
  hash; and the index files' headers.
- the checkpoint (a missing or damaged one only costs a longer recovery: a note)
  and the state snapshots (the broker falls back to an older one, then the log).

The check reads; it refuses politely to run while a broker holds the directory's
lock. ``--repair`` then rebuilds the derived files from the CommitLog: the key
index and the checkpoint are removed and the broker's own recovery is run offline
(it re-dispatches the whole log, rebuilding every ConsumeQueue entry, finding the
holes again and marking what they held lost), then the check runs again. The
CommitLog itself is never changed: it is the truth.

Exit codes: 0 nothing damaged; 1 damage found (with ``--repair``: and repaired:
the report lists what was lost); 3 damage remains after ``--repair``; 4 the store
cannot be checked (a broker holds it, it is not a data directory).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import click
import trio
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..core.broker import Broker
from ..core.config import BrokerConfig
from ..core.errors import FerryError, StoreError
from ..core.statelog import StateLog
from ..core.store.checkpoint import read_checkpoint
from ..core.store.commitlog import CommitLog, Damage
from ..core.store.consumequeue import ENTRY, ENTRY_SIZE, LOST_SIZE
from ..core.store.filecache import FileCache
from ..core.store.files import DirectoryLock
from ..core.store.index import ENTRY as INDEX_ENTRY
from ..core.store.index import HEADER as INDEX_HEADER
from ..core.store.index import key_hash
from ..core.store.store import client_id_prefix
from ..protocols import record as rec
from .config import ConfigError, load_config
from .logs import setup_logging

EXIT_CLEAN, EXIT_DAMAGE, EXIT_REMAINS, EXIT_CANNOT = 0, 1, 3, 4
_NAME_DIGITS = 20


class CannotCheck(Exception):
    """The store cannot be checked (locked by a broker, not a data directory)."""


@dataclass
class Finding:
    """One thing the check found. ``damage`` False: a note (nothing lost, nothing wrong
    that the broker does not mend at its next start)."""

    kind: str  # commitlog | consumequeue | index | checkpoint | snapshot | store
    where: str  # a file, a queue, a byte range
    detail: str
    damage: bool = True
    messages: int = 0  # messages lost with it (when known)
    repairable: bool = True  # False: nothing a repair can do (a recorded hole: it is lost)


@dataclass
class Report:
    data_dir: str
    segment_size: int
    log_start: int = 0
    log_end: int = 0
    records: int = 0
    queues: int = 0
    entries: int = 0
    index_entries: int = 0
    clean_shutdown: bool = True
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    repaired: bool = False

    @property
    def damaged(self) -> bool:
        return any(f.damage for f in self.findings)

    def add(self, kind: str, where: str, detail: str, damage: bool = True,
            messages: int = 0) -> None:
        self.findings.append(Finding(kind, where, detail, damage, messages))


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """The store's file layout, as the files say it is."""

    store: str
    segment_size: int
    cq_entries_per_file: int
    index_slots: int
    index_entries: int


def _digits(names: list[str]) -> list[str]:
    return sorted(n for n in names if len(n) == _NAME_DIGITS and n.isdigit())


def read_layout(data_dir: str, defaults: BrokerConfig) -> Layout:
    """Infer the segment size, ConsumeQueue file size and index sizes from the files
    (a broker's own configuration may differ from the defaults). Raises CannotCheck."""
    store = os.path.join(data_dir, "store")
    cl_dir = os.path.join(store, "commitlog")
    if not os.path.isdir(cl_dir):
        raise CannotCheck(f"{data_dir} is not a FerryMQ data directory (no store/commitlog)")
    names = _digits(os.listdir(cl_dir))
    segment = defaults.segment_size
    if len(names) >= 2:
        segment = int(names[1]) - int(names[0])
    elif names:
        segment = os.path.getsize(os.path.join(cl_dir, names[0])) or segment
    per_file = defaults.cq_entries_per_file
    sizes: Counter[int] = Counter()
    cq_root = os.path.join(store, "consumequeue")
    for dirpath, _dirs, files in os.walk(cq_root):
        for n in _digits(files):
            sizes[os.path.getsize(os.path.join(dirpath, n))] += 1
        if sum(sizes.values()) >= 64:
            break
    if sizes:
        per_file = max(1, sizes.most_common(1)[0][0] // ENTRY_SIZE)
    slots, entries = defaults.index_slots, defaults.index_entries
    idx = os.path.join(store, "index")
    for n in reversed(_digits(os.listdir(idx)) if os.path.isdir(idx) else []):
        path = os.path.join(idx, n)
        with open(path, "rb") as f:
            head = f.read(INDEX_HEADER.size)
        if len(head) == INDEX_HEADER.size:
            s = INDEX_HEADER.unpack(head)[4]
            size = os.path.getsize(path)
            if s > 0 and size > INDEX_HEADER.size + s * 4:
                slots, entries = s, (size - INDEX_HEADER.size - s * 4) // INDEX_ENTRY.size
                break
    return Layout(store, segment, per_file, slots, entries)


# ---------------------------------------------------------------------------- the check


class _Queue:
    """One ConsumeQueue read from its files (read-only) for the check: the entries' raw
    bytes (40 an entry: the check's memory), unpacked as the walk reaches them."""

    def __init__(self, directory: str, topic: str, qid: int, per_file: int) -> None:
        self.topic, self.qid = topic, qid
        names = _digits(os.listdir(directory))
        self.files = names
        self.gaps: list[int] = []
        self.first = int(names[0]) // ENTRY_SIZE if names else 0
        raw = bytearray()
        expected = None
        for n in names:
            first = int(n) // ENTRY_SIZE
            if expected is not None and first != expected:
                self.gaps.append(expected)
                raw += bytes((first - expected) * ENTRY_SIZE)  # keeps the numbering
            expected = first + per_file
            with open(os.path.join(directory, n), "rb") as f:
                data = f.read()
            if n == names[-1]:
                data = data[:-(-len(data.rstrip(b"\x00")) // ENTRY_SIZE) * ENTRY_SIZE]
            raw += data
        self.raw = bytes(raw)
        self.count = len(self.raw) // ENTRY_SIZE
        # Leading entries never written (retention kept a file whose first ones were
        # older) are zero: skipped.
        self.cursor = 0
        while self.cursor < self.count and self.entry(self.cursor)[1] == 0:
            self.cursor += 1
        self.start = self.cursor

    def entry(self, i: int) -> tuple[int, int, int, int, int, int]:
        return ENTRY.unpack_from(self.raw, i * ENTRY_SIZE)

    def number(self, i: int) -> int:
        return self.first + i

    def lost_between(self, start: int, stop: int) -> tuple[int, bool]:
        """(messages whose entries point into CommitLog [start, stop), all marked lost?)"""
        lo, hi = self.start, self.count
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid)[0] < start:
                lo = mid + 1
            else:
                hi = mid
        n, recorded = 0, True
        while lo < self.count:
            e = self.entry(lo)
            if e[0] >= stop:
                break
            n += e[3]
            recorded = recorded and e[1] == LOST_SIZE
            lo += 1
        return n, recorded


def check_store(data_dir: str, *, progress: Callable[[int, int], None] | None = None,
                defaults: BrokerConfig | None = None) -> Report:
    """Check the store of ``data_dir`` (see the module docstring). Raises CannotCheck.
    ``progress(done, total)`` is called with CommitLog bytes walked."""
    t0 = time.monotonic()
    layout = read_layout(data_dir, defaults or BrokerConfig())
    lock = DirectoryLock(layout.store)
    try:
        lock.acquire()
    except StoreError:
        raise CannotCheck(f"a broker is running on {data_dir} (it holds store/lock): stop it "
                          "first; the check reads the files as a stopped broker leaves them"
                          ) from None
    try:
        return _check(data_dir, layout, progress, t0)
    finally:
        lock.release()


def _check(data_dir: str, layout: Layout, progress: Callable[[int, int], None] | None,
           t0: float) -> Report:
    store = layout.store
    report = Report(data_dir, layout.segment_size)
    report.clean_shutdown = not os.path.exists(os.path.join(store, "abort"))
    if not report.clean_shutdown:
        report.add("store", "abort", "the broker did not stop cleanly: its next start "
                   "re-dispatches the log from the checkpoint", damage=False)
    cp = read_checkpoint(store)
    checkpoint = cp.physical_offset if cp is not None else 0
    if cp is None:
        report.add("checkpoint", "store/checkpoint", "missing or damaged: the next start "
                   "re-dispatches the whole log (nothing is lost; it takes longer)",
                   damage=False)
    _check_snapshots(data_dir, report)
    queues: dict[tuple[bytes, int], _Queue] = {}
    cq_root = os.path.join(store, "consumequeue")
    if os.path.isdir(cq_root):
        for topic in sorted(os.listdir(cq_root)):
            for qid in sorted(os.listdir(os.path.join(cq_root, topic))):
                if not qid.isdigit():
                    continue
                q = _Queue(os.path.join(cq_root, topic, qid), topic, int(qid),
                           layout.cq_entries_per_file)
                queues[(topic.encode(), int(qid))] = q
                for gap in q.gaps:
                    report.add("consumequeue", f"{topic}:{qid}", f"the file of entries "
                               f"{gap}..{gap + layout.cq_entries_per_file - 1} is missing")
                if not q.files:
                    report.add("consumequeue", f"{topic}:{qid}", "its files are gone")
    report.queues = len(queues)
    report.entries = sum(q.count - q.start for q in queues.values())
    cl = CommitLog(os.path.join(store, "commitlog"), layout.segment_size, FileCache(64))
    try:
        cl.open(readonly=True)
    except StoreError as exc:
        report.add("commitlog", "segments", f"{exc}: the broker cannot start on it")
        report.seconds = time.monotonic() - t0
        return report
    try:
        if cl.skipped is not None:
            report.add("commitlog", os.path.basename(cl.skipped), "the newest segment is not "
                       "the segment size (cut short or grown): the broker gives it its size "
                       "back at start and validates what it holds", damage=False)
        if cl.segments:
            _walk_log(cl, queues, checkpoint, report, progress)
        for q in queues.values():
            _leftover_entries(q, report, checkpoint)
        _check_index(layout, report, cl)
    finally:
        cl.close()
        cl.files.close_all()
    report.seconds = time.monotonic() - t0
    return report


def _check_snapshots(data_dir: str, report: Report) -> None:
    sdir = os.path.join(data_dir, "state")
    if not os.path.isdir(sdir):
        return
    snaps = sorted(n for n in os.listdir(sdir) if n.startswith("snapshot-") and n[9:].isdigit())
    good = 0
    for n in snaps:
        try:
            StateLog.read_snapshot(os.path.join(sdir, n))
            good += 1
        except ValueError as exc:
            report.add("snapshot", f"state/{n}", f"damaged ({exc}): the broker uses an older "
                       "snapshot, or replays the state records from the log", damage=True)
    if snaps and not good:
        report.add("snapshot", "state", "no valid state snapshot: the state is replayed from "
                   "the log's state records (those retention removed are lost)")


def _walk_log(cl: CommitLog, queues: dict[tuple[bytes, int], _Queue], checkpoint: int,
              report: Report, progress: Callable[[int, int], None] | None) -> None:
    start, end = cl.min_offset, cl.segments[-1].end
    report.log_start = report.log_end = start
    last_report = 0.0
    pos = start
    try:
        while True:
            damage = None
            for item in cl.walk(pos, resync=False):
                if type(item) is Damage:
                    damage = item
                    break
                r: rec.Record = item  # type: ignore[assignment]
                report.records += 1
                report.log_end = r.physical_offset + r.total_size
                _match_record(r, queues, checkpoint, report)
                if progress is not None and time.monotonic() - last_report > 0.1:
                    last_report = time.monotonic()
                    progress(report.log_end - start, end - start)
            if damage is None:
                break
            x = damage.start
            nxt = cl.find_next(x)
            if nxt is None:
                if not cl.zeros_from(x):
                    report.add("commitlog", f"bytes {x}..", "a torn end (bytes that are not a "
                               "record, nothing valid after them): the broker cuts it at its "
                               "next start", damage=x < checkpoint)
                break
            lost, recorded = _entries_in(queues, x, nxt)
            report.findings.append(Finding(
                "commitlog", f"bytes {x}..{nxt}", f"{nxt - x} bytes hold no valid record "
                f"(records after them are intact): {lost} message(s) lost, "
                + ("recorded: their entries are marked lost" if recorded
                   else "not recorded yet (a read, a restart or --repair records them)"),
                True, lost, not recorded))
            pos = report.log_end = nxt
    finally:
        if progress is not None:
            progress(end - start, end - start)


def _entries_in(queues: dict[tuple[bytes, int], _Queue], start: int, stop: int
                ) -> tuple[int, bool]:
    """(messages whose entries point into [start, stop), whether all are marked lost)."""
    n = 0
    recorded = True
    for q in queues.values():
        k, r = q.lost_between(start, stop)
        n += k
        recorded = recorded and r
    return n, recorded


def _match_record(r: rec.Record, queues: dict[tuple[bytes, int], _Queue], checkpoint: int,
                  report: Report) -> None:
    q = queues.get((r.topic.encode(), r.queue_id))
    if q is None or q.start >= q.count:
        return  # a deleted topic's records (kept until retention), or a queue with no files
    if r.physical_offset < q.entry(q.start)[0]:
        return  # before the queue's first retained entry (or an earlier life of the topic)
    where = f"{q.topic}:{q.qid}"
    while q.cursor < q.count and q.entry(q.cursor)[0] < r.physical_offset:
        e = q.entry(q.cursor)
        i = q.cursor
        q.cursor += 1
        if e[1] != LOST_SIZE:
            report.add("consumequeue", where, f"entry {q.number(i)} (offset {e[2]}) points at "
                       f"CommitLog offset {e[0]}, where no record of the queue starts")
    if q.cursor >= q.count or q.entry(q.cursor)[0] != r.physical_offset:
        if r.physical_offset >= checkpoint:
            return  # past the checkpoint: re-dispatched at the next start
        report.add("consumequeue", where, f"the record at CommitLog offset {r.physical_offset} "
                   f"(offset {r.queue_offset}) has no entry")
        return
    i = q.cursor
    phys, size, base, count, _th, ts = q.entry(i)
    q.cursor += 1
    if size == LOST_SIZE:
        report.add("consumequeue", where, f"entry {q.number(i)} (offset {base}) is marked lost "
                   f"but its record at {phys} is intact")
        return
    want = (r.total_size, r.queue_offset, r.store_timestamp)
    if (size, base, ts) != want or count < 1:
        report.add("consumequeue", where, f"entry {q.number(i)} (offset {base}) does not match "
                   f"its record at {phys}: size/offset/time {size}/{base}/{ts}, the record says "
                   f"{want[0]}/{want[1]}/{want[2]}")
    elif i > q.start:
        prev = q.entry(i - 1)
        if prev[2] + prev[3] != base:
            report.add("consumequeue", where, f"entry {q.number(i)}: offset {base} does not "
                       f"follow the entry before it ({prev[2]} + {prev[3]})")


def _leftover_entries(q: _Queue, report: Report, checkpoint: int) -> None:
    where = f"{q.topic}:{q.qid}"
    for i in range(q.cursor, q.count):
        e = q.entry(i)
        if e[1] == LOST_SIZE:
            continue
        if e[0] >= checkpoint:
            report.add("consumequeue", where, f"entry {q.number(i)} points past the valid log "
                       "(after the checkpoint: dropped at the next start)", damage=False)
            continue
        report.add("consumequeue", where, f"entry {q.number(i)} (offset {e[2]}) points at "
                   f"CommitLog offset {e[0]}, where no record of the queue starts")
    lost = sum(q.entry(i)[3] for i in range(q.start, q.count) if q.entry(i)[1] == LOST_SIZE)
    if lost:
        report.add("consumequeue", where, f"{lost} message(s) marked lost (their records were "
                   "in a damaged range)", damage=False, messages=lost)


def _check_index(layout: Layout, report: Report, cl: CommitLog) -> None:
    idx = os.path.join(layout.store, "index")
    if not os.path.isdir(idx):
        return
    for n in _digits(os.listdir(idx)):
        path = os.path.join(idx, n)
        with open(path, "rb") as f:
            raw = f.read()
        if len(raw) < INDEX_HEADER.size:
            report.add("index", f"index/{n}", "shorter than its header: the broker builds it "
                       "again at start")
            continue
        _b, _e, _bp, _ep, slots, count = INDEX_HEADER.unpack_from(raw)
        max_entries = (len(raw) - INDEX_HEADER.size - slots * 4) // INDEX_ENTRY.size \
            if slots > 0 else 0
        if slots <= 0 or not 0 <= count <= max_entries:
            report.add("index", f"index/{n}", "its header does not describe the file: the "
                       "broker builds it again at start")
            continue
        base = INDEX_HEADER.size + slots * 4
        bad = 0
        for k in range(count):
            h, phys, _member, prev = INDEX_ENTRY.unpack_from(raw, base + k * INDEX_ENTRY.size)
            report.index_entries += 1
            if prev > k or not _index_entry_ok(cl, h, phys):
                bad += 1
        if bad:
            report.add("index", f"index/{n}", f"{bad} of {count} entries point at no record "
                       "holding their key (a damaged index, or records in a damaged range)")


def _index_entry_ok(cl: CommitLog, h: int, phys: int) -> bool:
    if phys < cl.min_offset:
        return True  # the record left with retention (the index outlives it a while)
    head = cl.peek(phys, 8)
    if len(head) < 8:
        return False
    size, magic = rec.peek_size(head, 0)
    if magic != rec.MAGIC or size < rec.HEADER_SIZE:
        return False
    try:
        r = rec.decode(cl.peek(phys, size), 0)
    except rec.RecordError:
        return False
    if r.physical_offset != phys:
        return False
    keys: set[str] = set()
    raw = r.properties_raw
    if r.sys_flag & rec.FORMAT_NATIVE_BATCH:
        long = bool(r.sys_flag & rec.FORMAT_LONG_PROPERTIES)
        props = [m.properties for m in rec.iter_members(r.body, long=long)]
    else:
        props = [r.properties] if raw else []
    for p in props:
        keys.update(k for k in (p.get("KEYS") or "").split(" ") if k)
        u = p.get("UNIQ_KEY")
        if u:
            keys.add(u)
            prefix = client_id_prefix(u)
            if prefix is not None:
                keys.add(prefix)
    return any(key_hash(k) == h for k in keys)


# ---------------------------------------------------------------------------- repair


def repair_store(data_dir: str, layout: Layout, base: BrokerConfig) -> None:
    """Rebuild what is derived from the CommitLog: remove the key index and the
    checkpoint and run the broker's recovery offline (it re-dispatches the whole log,
    rebuilding every ConsumeQueue entry and the index, marking what holes held lost),
    then stop it cleanly. Blocking."""
    store = layout.store
    idx = os.path.join(store, "index")
    if os.path.isdir(idx):
        for n in os.listdir(idx):
            os.unlink(os.path.join(idx, n))
    cp = os.path.join(store, "checkpoint")
    if os.path.exists(cp):
        os.unlink(cp)
    cfg = replace(base, data_dir=data_dir, segment_size=layout.segment_size,
                  cq_entries_per_file=layout.cq_entries_per_file,
                  index_slots=layout.index_slots, index_entries=layout.index_entries,
                  max_message_size=min(base.max_message_size,
                                       layout.segment_size - (64 << 10)))

    async def run() -> None:
        async with Broker.open(cfg):
            pass

    trio.run(run)


# ---------------------------------------------------------------------------- the command


def _print(report: Report, console: Console, as_json: bool) -> None:
    if as_json:
        doc = asdict(report)
        doc["damaged"] = report.damaged
        print(json.dumps(doc, indent=2))
        return
    damage = [f for f in report.findings if f.damage]
    notes = [f for f in report.findings if not f.damage]
    console.print(f"[bold]{report.data_dir}[/]: CommitLog {report.log_start:,}..{report.log_end:,}"
                  f" ({report.records:,} records), {report.queues:,} queues "
                  f"({report.entries:,} entries), {report.index_entries:,} index entries; "
                  f"{report.seconds:.1f} s")
    for title, rows, style in (("damage", damage, "red"), ("notes", notes, "yellow")):
        if not rows:
            continue
        table = Table(title=title, title_style=style)
        for col in ("kind", "where", "messages", "detail"):
            table.add_column(col, overflow="fold")
        for f in rows[:200]:
            table.add_row(f.kind, f.where, f"{f.messages:,}" if f.messages else "", f.detail)
        if len(rows) > 200:
            table.caption = f"... and {len(rows) - 200} more"
        console.print(table)
    if report.repaired:
        console.print("[bold]repaired[/]: derived files rebuilt from the CommitLog")
    console.print("[green]no damage[/]" if not report.damaged else
                  f"[red]{len(damage)} damaged item(s)[/]")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def store() -> None:
    """The store of a stopped broker: check it, rebuild what is derived from the log."""


@store.command("check")
@click.option("--data-dir", default=None, help="The broker's data directory (default: as `serve` "
              "would use: ./ferrymq-data, FERRYMQ_DATA_DIR, --config).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="The broker's TOML configuration.")
@click.option("--repair", is_flag=True, help="Rebuild the ConsumeQueues, the key index and the "
              "checkpoint from the CommitLog (the log itself is never changed).")
@click.option("--json", "as_json", is_flag=True, help="A JSON document on stdout.")
def check_command(data_dir: str | None, config_file: str | None, repair: bool,
                  as_json: bool) -> None:
    """Verify CommitLog CRCs and the ConsumeQueues and key index against the log, offline.

    Exit code 0: nothing damaged; 1: damage found (and repaired, with --repair);
    3: damage remains after --repair; 4: the store cannot be checked (a broker runs
    on it, or it is not a data directory)."""
    try:
        cfg = load_config(config_file, overrides={"data_dir": data_dir})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    directory = cfg.broker.data_dir
    err = Console(file=sys.stderr)
    out = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    tty = sys.stderr.isatty() and not as_json

    def run() -> Report:
        if not tty:
            return check_store(directory, defaults=cfg.broker)
        with Progress(TextColumn("checking the CommitLog"), BarColumn(), DownloadColumn(),
                      TimeRemainingColumn(), console=err, transient=True) as bar:
            task = bar.add_task("check", total=None)
            return check_store(directory, defaults=cfg.broker,
                               progress=lambda done, total: bar.update(task, completed=done,
                                                                       total=total))

    try:
        report = run()
        if repair and any(f.damage and f.repairable for f in report.findings):
            if tty:
                err.print("repairing: rebuilding derived files from the CommitLog ...")
            setup_logging("WARNING", "text")
            repair_store(directory, read_layout(directory, cfg.broker), cfg.broker)
            report = run()
            report.repaired = True
    except (CannotCheck, OSError, FerryError) as exc:
        click.echo(f"ferrymq store check: {exc}", err=True)
        sys.exit(EXIT_CANNOT)
    _print(report, out, as_json)
    if report.repaired and any(f.damage and f.repairable for f in report.findings):
        sys.exit(EXIT_REMAINS)
    sys.exit(EXIT_DAMAGE if report.damaged or report.repaired else EXIT_CLEAN)


def register(main: click.Group) -> None:
    main.add_command(store)


__all__ = ["CannotCheck", "Finding", "Report", "check_store", "register", "repair_store"]
