"""Type-check the four code folders as the package they install as: `ferrymq.*`.

The repository keeps `core/`, `protocols/`, `gateways/` and `clients/` at its root and
pyproject.toml maps them onto `ferrymq.core` ... (DESIGN.md, "Layout"). mypy resolves
modules from folders, so it cannot see `core/broker.py` as `ferrymq.core.broker` and the
relative imports between folders (`from ..core import ...`) do not resolve. This script
builds that package in a temporary folder out of four symbolic links,
`ferrymq/{core,protocols,gateways,clients}` -> the real folders, runs `mypy -p ferrymq`
there with the repository's `[tool.mypy]` settings, and prints mypy's report with the
paths turned back into repository paths. It reads and writes nothing else (mypy's cache
goes to `.mypy_cache/` here). docs/architecture.md, "Gates", says why this way.

    python scripts/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ("core", "protocols", "gateways", "clients")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="ferrymq-typecheck-") as tmp:
        package = pathlib.Path(tmp) / "ferrymq"
        package.mkdir()
        for folder in FOLDERS:
            (package / folder).symlink_to(ROOT / folder, target_is_directory=True)
        cmd = [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(ROOT / ".mypy_cache"),
            "-p", "ferrymq", *argv,
        ]
        # mypy must not find the installed (editable) ferrymq before the link tree.
        env = {**os.environ, "MYPYPATH": tmp}
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("ferrymq/"):
            line = line.removeprefix("ferrymq/")
        print(line)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
