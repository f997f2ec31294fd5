"""One life of a crash-test writer process: started, read line by line, SIGKILLed.

The writer scripts (``crash_writer.py``, ``timer_crash_writer.py``) print ``READY``
once their broker is open, then one line per acknowledgement; only whole lines
count (the last one may be torn by the kill)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class WriterProcess:
    def __init__(self, script: str, data_dir: Path, run: str) -> None:
        self.proc = subprocess.Popen([sys.executable, script, str(data_dir), run],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[list[str]] = []  # each printed line, split into words
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.ready.wait(30):
            self.proc.kill()
            raise RuntimeError(f"writer did not start: {self.proc.stderr.read().decode()}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line == b"READY\n":
                self.ready.set()
            elif line.endswith(b"\n"):
                self.lines.append(line.decode().split())

    def of_kind(self, kind: str) -> list[list[str]]:
        """The lines whose first word is ``kind``, without it."""
        return [p[1:] for p in list(self.lines) if p and p[0] == kind]

    def wait_for(self, kind: str, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.of_kind(kind)) < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"writer printed too few {kind}: "
                                   f"{self.proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.005)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)
