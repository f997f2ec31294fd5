"""``ferrymq bench ...``: benchmarks that print figures beside a peer or a ceiling measured in the same run.

Each door adds a module here with a click command and lists it in ``COMMANDS``.
Benchmarks are commands, never timed tests.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

COMMANDS = ("store", "kafka", "mqtt", "http", "native", "timers")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Measure FerryMQ beside a peer or a ceiling, in one run."""


def register(main: click.Group) -> None:
    for name in COMMANDS:
        full = f"{__package__}.{name}"
        if importlib.util.find_spec(full) is not None:
            module = importlib.import_module(full)
            for command in getattr(module, "COMMANDS", ()):
                bench.add_command(command)
    main.add_command(bench)
