"""``ferrymq bench``: load generators and comparisons with peer brokers, one module per door."""

from __future__ import annotations

import click

from . import mqtt as _mqtt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Measure a door against its peers (figures on stdout; no timed assertions)."""


bench.add_command(_mqtt.mqtt)


def register(main: click.Group) -> None:
    main.add_command(bench)
