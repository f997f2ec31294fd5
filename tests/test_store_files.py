"""The store's files under a descriptor limit: thousands of queues hold data without
running the process out of descriptors, reads in worker threads survive the cache
closing files, and an append that cannot open its queue's file leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest
from ferrymq.core.errors import StoreError
from ferrymq.core.store.store import MessageStore, StoreConfig

SEGMENT = 1 << 20


def config(path, **kw) -> StoreConfig:
    base = dict(directory=str(path), segment_size=SEGMENT, cq_entries_per_file=64,
                index_slots=64, index_entries=256)
    base.update(kw)
    return StoreConfig(**base)  # type: ignore[arg-type]


def run_limited(code: str, nofile: int, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter whose descriptor limit is ``nofile``
    (soft and hard); it prints one JSON line last, returned here."""
    prelude = textwrap.dedent(f"""
        import json, os, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))
        def open_fds():
            return len(os.listdir("/proc/self/fd")) - 1
    """)
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


TOPICS = 1500  # x 4 queues, each with data: far past the 256 descriptors allowed


def test_thousands_of_queues_hold_data_under_a_low_descriptor_limit(tmp_path) -> None:
    got = run_limited(f"""
        from ferrymq.core.store.store import MessageStore, StoreConfig
        cfg = StoreConfig(directory={str(tmp_path / "s")!r}, segment_size=1 << 20,
                          cq_entries_per_file=64, index_slots=64, index_entries=256)
        most = 0
        s = MessageStore(cfg)
        s.open()
        for rnd in range(3):  # three messages per queue: every queue file reopened twice
            for t in range({TOPICS}):
                for q in range(4):
                    s.append_message(f"dev{{t}}", q, f"{{t}}/{{q}}/{{rnd}}".encode(),
                                     {{"KEYS": f"k{{t}}-{{q}}-{{rnd}}"}})
            s.checkpoint()
            most = max(most, open_fds())
        bad = [(t, q) for t in range({TOPICS}) for q in range(4)
               if [m.body for m in s.get(f"dev{{t}}", q, 0, 10, 1 << 20).messages()]
               != [f"{{t}}/{{q}}/{{r}}".encode() for r in range(3)]]
        found = len(s.lookup_key("k7-3-2"))
        budget = s.files.budget
        s.close()
        os.unlink(os.path.join(cfg.directory, "checkpoint"))  # recover everything again
        s = MessageStore(cfg)
        report = s.open()
        most = max(most, open_fds())
        bad += [(t, q) for t in range({TOPICS}) for q in range(4)
                if s.queue_bounds(f"dev{{t}}", q) != (0, 3)]
        bad += [(t, q) for t in range(0, {TOPICS}, 97) for q in range(4)
                if len(list(s.get(f"dev{{t}}", q, 0, 10, 1 << 20, pread=True).messages())) != 3]
        s.close()
        print(json.dumps({{"bad": bad[:5], "most": most, "found": found, "budget": budget,
                          "redispatched": report.records_redispatched}}))
    """, nofile=256)
    assert got["bad"] == [], "every queue serves all its messages"
    assert got["found"] == 1
    assert got["redispatched"] == 3 * 4 * TOPICS
    assert got["budget"] == 64, "a quarter of the soft limit"
    assert got["most"] < 256


def test_an_append_that_cannot_open_its_queue_file_stores_nothing(tmp_path, monkeypatch) -> None:
    """The process is out of descriptors when a ConsumeQueue file must be created: the
    put fails (StoreError), no record is left in the CommitLog without its entry, the
    next put takes the next offset, and recovery finds the queue's offsets in order."""
    s = MessageStore(config(tmp_path, cq_entries_per_file=4))
    s.open()
    for i in range(4):
        s.append_message("t", 0, b"ok%d" % i, {})
    real_open = os.open

    def out_of_descriptors(path, flags, mode=0o777, **kw):
        if "consumequeue" in str(path):
            raise OSError(errno.EMFILE, "Too many open files", path)
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", out_of_descriptors)
    for _ in range(2):
        with pytest.raises(StoreError):
            s.append_message("t", 0, b"lost", {})
    monkeypatch.setattr(os, "open", real_open)
    assert s.append_message("t", 0, b"ok4", {}).queue_offset == 4
    s.close()
    os.unlink(tmp_path / "checkpoint")  # re-dispatch the whole log, as after a crash
    s = MessageStore(config(tmp_path, cq_entries_per_file=4))
    s.open()
    bodies = [m.body for m in s.get("t", 0, 0, 10, 1 << 20).messages()]
    assert bodies == [b"ok0", b"ok1", b"ok2", b"ok3", b"ok4"]
    s.close()


def test_reads_in_worker_threads_while_appends_close_their_files(tmp_path) -> None:
    """get(pread=True) runs in worker threads (Broker.get_large) while the owner thread
    appends to hundreds of queues through a 16-file budget: every read sees exactly
    the messages of its queue."""
    s = MessageStore(config(tmp_path, max_open_files=16, cq_entries_per_file=16))
    s.open()
    queues = [(f"q{i}", 0) for i in range(200)]
    counts = dict.fromkeys(queues, 0)
    for key in queues:
        s.append_message(key[0], 0, f"{key[0]}:0".encode(), {})
        counts[key] = 1
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                topic, qid = rnd.choice(queues)
                n = counts[(topic, qid)]  # at least this many are there
                got = [m.body for m in s.get(topic, qid, 0, 1000, 1 << 30, pread=True).messages()]
                assert got[:n] == [f"{topic}:{i}".encode() for i in range(n)], (topic, got[:3])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    rnd = random.Random(1)
    try:
        for _ in range(6000):
            key = rnd.choice(queues)
            s.append_message(key[0], 0, f"{key[0]}:{counts[key]}".encode(), {})
            counts[key] += 1
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not errors, errors[0]
    assert s.files.evictions["consumequeue"] > 1000
    s.checkpoint()  # syncs queues whose files are closed through descriptors of their own
    assert s.files.transient["consumequeue"] > 0
    s.retain(0, 1 << 62, 1.0)  # the owner's trim: back under the budget
    assert s.files.used <= 16
    s.close()


def test_retention_deletes_a_segment_while_a_worker_reads_it(tmp_path) -> None:
    s = MessageStore(config(tmp_path, segment_size=64 * 1024))
    s.open()
    for i in range(300):
        s.append_message("t", 0, b"x" * 1000, {"i": str(i)})
    old = s.commitlog.segments[0]
    assert s.files.pin(old)  # a worker thread's pread in progress
    deleted = s.retain(10**15, 0, 1.0)
    assert old.base in deleted and not os.path.exists(old.path)
    assert old.mm is not None and s.commitlog.pread(old.base, 8) is None, \
        "no new read of a deleted segment"
    s.files.unpin(old)
    assert old.mm is None, "closed when the last reader let go"
    s.close()


def test_the_queue_file_a_get_reads_is_not_closed_by_the_reads_of_records(tmp_path) -> None:
    """The owner's get walks a queue's entries while reading records from segments the
    cache must reopen: those opens may close other files, never the entries' mapping in
    use (it is read anew each chunk)."""
    s = MessageStore(config(tmp_path, max_open_files=16, segment_size=8192,
                            cq_entries_per_file=2048))
    s.open()
    for i in range(400):
        s.append_message("t", 0, b"%04d" % i + b"." * 400, {})
    got = [m.body[:4] for m in s.get("t", 0, 0, 400, 1 << 30).messages()]
    assert got == [b"%04d" % i for i in range(400)]
    assert s.files.evictions["commitlog"] > 0
    s.close()


async def test_the_broker_reports_its_open_files_against_the_budget(tmp_path) -> None:
    from ferrymq.core import Broker, BrokerConfig, Message

    cfg = BrokerConfig(data_dir=str(tmp_path / "b"), segment_size=8 << 20, max_open_files=32,
                       cq_entries_per_file=64, index_slots=64, index_entries=256)
    async with Broker.open(cfg) as b:
        for t in range(40):
            await b.put(Message(f"t{t}", b"x", queue_id=0))
        text = b.metrics.render()
    assert "ferrymq_store_open_files_budget 32\n" in text
    open_cq = int(text.split('ferrymq_store_open_files{kind="consumequeue"} ')[1].split("\n")[0])
    assert 0 < open_cq <= 32
    assert 'ferrymq_store_open_files{kind="commitlog"} 1\n' in text
    evicted = text.split('ferrymq_store_file_evictions_total{kind="consumequeue"} ')[1]
    assert int(evicted.split("\n")[0]) > 0, "40 queues through a 32-file budget"
    assert "ferrymq_store_file_opens_total{kind=\"consumequeue\"}" in text
    assert "# TYPE ferrymq_store_file_descriptors gauge" in text


def test_max_open_files_is_checked_where_the_configuration_is() -> None:
    from ferrymq.core import BrokerConfig
    from ferrymq.gateways.config import ConfigError, load_config

    assert BrokerConfig(max_open_files=0).max_open_files == 0  # automatic
    with pytest.raises(ValueError, match="max_open_files"):
        BrokerConfig(max_open_files=3)
    with pytest.raises(ConfigError, match="max_open_files"):
        load_config(env={"FERRYMQ_MAX_OPEN_FILES": "3"})
    assert load_config(env={"FERRYMQ_MAX_OPEN_FILES": "500"}).broker.max_open_files == 500


def test_a_queues_end_is_found_without_touching_its_files_holes(tmp_path) -> None:
    """A ConsumeQueue file is sparse (12 MB by default, one page written here): finding
    the end of each queue at start must not fault in its holes page by page (a broker
    with thousands of queues paid about 20 faults a queue, thousands of ms cold)."""
    import resource

    cfg = StoreConfig(directory=str(tmp_path / "s"), segment_size=SEGMENT)
    s = MessageStore(cfg)
    s.open()
    for t in range(200):
        s.append_message(f"t{t}", 0, b"x", {})
    s.close()
    s = MessageStore(cfg)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    s.open()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert all(s.queue_bounds(f"t{t}", 0) == (0, 1) for t in range(200))
    s.close()
    assert faults < 5 * 200, faults  # measured: 1 a queue; 8 before


def resident_pages(path: str) -> int:
    """Pages of ``path`` in the page cache: mincore(2) on a mapping of it."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, size)
    os.close(fd)
    try:
        first = ctypes.c_char.from_buffer(mm)
        vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(first)), ctypes.c_size_t(size), vec)
        del first
        assert rc == 0, os.strerror(ctypes.get_errno())
        return sum(v & 1 for v in vec)
    finally:
        mm.close()


def test_a_new_queue_costs_one_page_not_the_read_ahead_window(tmp_path) -> None:
    """A ConsumeQueue file is sparse (12 MB by default). Its first entry's fault must
    not read around it: on a disk with read_ahead_kb = 8192 each new queue put 8 MB of
    zeroed holes in the page cache (2 ms of kernel time a queue)."""
    s = MessageStore(StoreConfig(directory=str(tmp_path / "s"), segment_size=SEGMENT))
    s.open()
    for t in range(5):
        s.append_message(f"t{t}", 0, b"x", {})
    files = [f.path for q in s.queues.values() for f in q.files]
    s.close()
    assert len(files) == 5
    assert max(resident_pages(p) for p in files) <= 2
