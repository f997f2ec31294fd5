"""``ferrymq bench mqtt`` (placeholder until the load generator lands)."""

from __future__ import annotations

import click


@click.command()
def mqtt() -> None:
    """MQTT throughput, fan-out, idle connections and connect rate."""
