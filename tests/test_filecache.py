"""The store's file cache: a budget of open files held under any load, the coldest closed,
any reopened on demand, and nothing closed under a worker thread that reads it."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest
from ferrymq.core.errors import StoreError
from ferrymq.core.store import filecache as fc
from ferrymq.core.store.filecache import CachedFile, FileCache, map_file

SIZE = 4096


class Mapped(CachedFile):
    """A file kind that keeps no descriptor of its own (as ConsumeQueue files)."""

    __slots__ = ()
    KIND = "consumequeue"


class WithFd(CachedFile):
    """A file kind that keeps its descriptor (as CommitLog segments)."""

    __slots__ = ()
    KIND = "commitlog"
    KEEPS_FD = True


def make(cache: FileCache, path: str, kind: type[CachedFile] = Mapped, fill: int = 0) -> CachedFile:
    f = kind(path, SIZE)

    def create() -> tuple[int, object]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, SIZE)
        mm = map_file(fd, SIZE)
        mm[:8] = fill.to_bytes(8, "big")
        return fd, mm

    cache.create(f, create)  # type: ignore[arg-type]
    return f


def value(cache: FileCache, f: CachedFile) -> int:
    return int.from_bytes(cache.open(f)[:8], "big")


def own_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_budget_holds_however_many_files_are_used(tmp_path) -> None:
    cache = FileCache(16)
    files = [make(cache, str(tmp_path / f"f{i}"), fill=i) for i in range(500)]
    assert cache.used <= 16
    for _ in range(3):
        for i, f in enumerate(files):
            assert value(cache, f) == i
            assert cache.used <= 16
    opens, evictions = cache.opens["consumequeue"], cache.evictions["consumequeue"]
    assert opens >= 500 + 3 * 500 - 16, "every reopen is counted (round robin: all miss)"
    assert opens - evictions == len(cache) == sum(cache.open_by_kind().values()) <= 16


def test_a_closed_file_reopens_with_what_was_written_through_its_mapping(tmp_path) -> None:
    cache = FileCache(16)
    first = make(cache, str(tmp_path / "first"))
    cache.open(first)[100:105] = b"hello"
    for i in range(40):  # push it out
        make(cache, str(tmp_path / f"other{i}"))
    assert first.mm is None, "evicted"
    assert cache.open(first)[100:105] == b"hello"


def test_a_file_in_use_gets_a_second_chance(tmp_path) -> None:
    cache = FileCache(16)
    hot = make(cache, str(tmp_path / "hot"))
    for i in range(200):
        make(cache, str(tmp_path / f"cold{i}"))
        cache.open(hot)  # used between every two new files
    assert hot.mm is not None, "the clock passed it by while it was in use"
    assert cache.evictions["consumequeue"] >= 180


def test_pinned_files_are_never_closed_and_trim_restores_the_budget(tmp_path) -> None:
    cache = FileCache(16)
    pinned = [make(cache, str(tmp_path / f"p{i}")) for i in range(16)]
    for f in pinned:
        assert cache.pin(f)
    extra = [make(cache, str(tmp_path / f"x{i}")) for i in range(4)]
    assert all(f.mm is not None for f in pinned), "over budget rather than close a pinned file"
    assert [f.mm is not None for f in extra] == [False, False, False, True], \
        "only unpinned files make room"
    assert cache.used == 17
    for f in pinned:
        cache.unpin(f)
    cache.trim()
    assert cache.used == 16


def test_a_file_deleted_while_a_worker_holds_it_closes_when_the_worker_lets_go(tmp_path) -> None:
    cache = FileCache(16)
    f = make(cache, str(tmp_path / "doomed"), fill=7)
    assert cache.pin(f)
    cache.discard(f, unlink=True)
    assert not os.path.exists(f.path)
    assert f.mm is not None and int.from_bytes(f.mm[:8], "big") == 7, "still readable"
    assert not cache.pin(f), "no new reader gets a discarded file"
    cache.unpin(f)
    assert f.mm is None and len(cache) == 0
    with pytest.raises(StoreError):
        cache.open(f)


def test_descriptors_are_counted_as_they_are_held(tmp_path) -> None:
    cache = FileCache(64)
    before = own_descriptors()
    mapped = [make(cache, str(tmp_path / f"m{i}")) for i in range(10)]
    segments = [make(cache, str(tmp_path / f"s{i}"), WithFd) for i in range(5)]
    per_mapping = int(fc.MAPPING_KEEPS_FD)
    assert cache.descriptors() == 10 * per_mapping + 5 * (1 + per_mapping)
    assert own_descriptors() - before == cache.descriptors()
    assert cache.used == 10 * fc.slots_of(Mapped) + 5 * fc.slots_of(WithFd)
    for f in mapped + segments:
        cache.discard(f)
    assert own_descriptors() == before and cache.used == 0


def test_worker_threads_read_while_the_owner_evicts(tmp_path) -> None:
    """Workers pread and sync files at random while the owner keeps opening others (each
    open closes a cold file): no read ever sees a closed file or another file's bytes."""
    cache = FileCache(16)
    files = [make(cache, str(tmp_path / f"f{i}"), WithFd if i % 3 == 0 else Mapped, fill=i)
             for i in range(120)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                i = rnd.randrange(len(files))
                data = cache.pread(files[i], 8, 0)
                assert data is not None and int.from_bytes(data, "big") == i
                if rnd.random() < 0.1:
                    cache.sync(files[i])
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for w in workers:
        w.start()
    rnd = random.Random(99)
    try:
        for _ in range(20_000):
            i = rnd.randrange(len(files))
            assert value(cache, files[i]) == i
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not errors, errors[0]
    assert cache.evictions["consumequeue"] + cache.evictions["commitlog"] > 1000
    cache.trim()
    assert cache.used <= 16
    assert all(f.pins == 0 for f in files)


def test_a_closed_file_is_synced_through_a_descriptor_of_its_own(tmp_path) -> None:
    cache = FileCache(16)
    f = make(cache, str(tmp_path / "cold"))
    cache.open(f)[:5] = b"dirty"
    for i in range(40):
        make(cache, str(tmp_path / f"o{i}"))
    assert f.mm is None
    cache.sync(f)
    assert cache.transient["consumequeue"] == 1
    cache.discard(f, unlink=True)
    cache.sync(f)  # deleted: nothing to do
    assert cache.transient["consumequeue"] == 1


def test_running_out_of_descriptors_gives_back_half_the_cache(tmp_path, monkeypatch) -> None:
    """Connections took the process's descriptors: the cache closes half of what it
    holds and tries again rather than fail the store."""
    cache = FileCache(64)
    files = [make(cache, str(tmp_path / f"f{i}"), WithFd) for i in range(20)]
    late = WithFd(str(tmp_path / "f0"), SIZE)  # a second object for an existing file
    real_open = os.open
    calls = []

    def emfile_once(path, flags, mode=0o777):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, mode)

    monkeypatch.setattr(fc.os, "open", emfile_once)
    cache.open(late)
    monkeypatch.setattr(fc.os, "open", real_open)
    assert len(calls) == 2
    assert sum(f.mm is not None for f in files) <= 11
    assert late.mm is not None


def test_the_default_budget_is_a_share_of_the_descriptor_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = fc.default_budget()
    assert fc.MIN_BUDGET <= budget <= max(fc.MIN_BUDGET, soft // 4)
    assert budget <= fc.max_map_count() // 4
    with pytest.raises(ValueError):
        FileCache(fc.MIN_BUDGET - 1)
