"""``ferrymq bench``: benchmark commands, one module per door (figures, never pass/fail).

Each door's module adds its commands to the ``bench`` group here; every
benchmark prints JSON lines ({"name", "value", "unit", ...}) on stdout.
"""

from __future__ import annotations

import importlib

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Modules that add commands to the group: each has ``register(group)``.
BENCH_MODULES = ("native",)


@click.group(context_settings=CONTEXT)
def bench() -> None:
    """Measure throughput and latency (prints JSON lines)."""


def register(main: click.Group) -> None:
    for name in BENCH_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(bench)
    main.add_command(bench)
