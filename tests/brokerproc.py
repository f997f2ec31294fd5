"""Real broker processes for integration and compat tests: ``BrokerProcess`` (a
``ferrymq serve`` child on loopback with its own data directory) and ``free_port``.

A module of its own, not conftest.py: several test folders have a conftest.py,
and ``from conftest import ...`` reaches whichever pytest loaded last."""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DOOR_NAMES = ("namesrv", "remoting", "kafka", "mqtt", "http")
TEST_SEGMENT_SIZE = 8 << 20


def free_port() -> int:
    """A TCP port that was free a moment ago (the broker binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """The broker could not bind a port picked for it: another process took it first."""


@dataclass
class BrokerProcess:
    """A `ferrymq serve` child process on loopback with its own data directory."""

    data_dir: Path
    doors: tuple[str, ...]
    extra_args: tuple[str, ...] = ()
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    nofile: tuple[int, int] | None = None  # RLIMIT_NOFILE (soft, hard) of the process
    # Called before each first start (e.g. to write a config file naming ports of its own):
    # a port picked free a moment ago may be taken by another process before the broker
    # binds it, and then the start is tried again with new ports and a new prepare().
    prepare: Callable[[], object] | None = None
    _log_start: int = 0  # where this start's lines begin in the log file

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        if self.ports:  # a restart: the same ports, which this broker held
            return self._start(timeout)
        for attempt in range(5):
            self.ports = {d: free_port() for d in self.doors}
            if self.prepare is not None:
                self.prepare()
            try:
                return self._start(timeout)
            except PortTaken:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> BrokerProcess:
        ready = self.data_dir.parent / f"{self.data_dir.name}.ready.json"
        ready.unlink(missing_ok=True)
        args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--data-dir",
                str(self.data_dir), "--host", "127.0.0.1", "--ready-file", str(ready)]
        for d in DOOR_NAMES:
            args += [f"--{d}-port", str(self.ports.get(d, 0))]
        # Segments are preallocated in full: at the 1 GiB default every test broker
        # would take 1 GiB of disk. A test's own --segment-size comes later and wins.
        args += ["--segment-size", str(TEST_SEGMENT_SIZE), *self.extra_args]
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        limit = self.nofile
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, preexec_fn=None if limit is None
                                     else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                assert self.log_path is not None
                with open(self.log_path, "rb") as f:
                    f.seek(self._log_start)
                    if b"Address already in use" in f.read():
                        raise PortTaken(self.log())
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            if ready.exists():
                info = json.loads(ready.read_text())
                if info.get("pid") == self.proc.pid:
                    return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"broker did not become ready in {timeout}s:\n{self.log()}")

    def port(self, door: str) -> int:
        return self.ports[door]

    def address(self, door: str) -> str:
        return f"127.0.0.1:{self.ports[door]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:] if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL: the crash tests' way of stopping a broker."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: a clean shutdown; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
