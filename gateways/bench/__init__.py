"""``ferrymq bench ...``: benchmarks are commands that print figures, never timed tests.

Each door's benchmark lives in a module of this package and adds itself to the
``bench`` group through its ``register(group)``.
"""

from __future__ import annotations

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def bench() -> None:
    """Measure FerryMQ (and peers) on this machine."""


def register(main: click.Group) -> None:
    from . import kafka

    kafka.register(bench)
    main.add_command(bench)
