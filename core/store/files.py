"""File-system helpers the store and the metadata share: atomic replace, directory fsync, the lock."""

from __future__ import annotations

import fcntl
import json
import os

from ..errors import StoreError


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new
    content, never a mix: write a temporary file, fsync it, rename it over the old
    one, fsync the directory. Blocking."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_json_state(path: str, required_ints: tuple[str, ...]) -> dict[str, object] | None:
    """A JSON state file written by ``atomic_write``: None if absent. Raises ValueError
    if it does not parse or lacks one of ``required_ints`` as an integer."""
    raw = read_file(path)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        for k in required_ints:
            int(doc[k])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    return doc


class DirectoryLock:
    """An exclusive flock on ``<dir>/lock``: two brokers must never share a data directory."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"another broker is using the data directory "
                             f"{os.path.dirname(self.path)}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
