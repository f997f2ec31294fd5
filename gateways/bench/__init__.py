"""``ferrymq bench ...``: benchmarks that print figures beside a peer or a ceiling measured in the same run.

Each benchmark is a module of this package named in ``MODULES``; it adds its
commands to the ``bench`` group through ``register(group)``. A module that is
not part of this build is skipped. Benchmarks are commands, never timed tests.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

MODULES = ("store", "kafka", "mqtt", "http", "native", "timers", "admin", "conns", "replication",
           "compaction", "tls", "auth")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def bench() -> None:
    """Measure FerryMQ beside a peer or a ceiling, in one run."""


def register(main: click.Group) -> None:
    for name in MODULES:
        full = f"{__package__}.{name}"
        if importlib.util.find_spec(full) is None:
            continue
        module = importlib.import_module(full)
        if hasattr(module, "register"):
            module.register(bench)
        for command in getattr(module, "COMMANDS", ()):
            bench.add_command(command)
    main.add_command(bench)
