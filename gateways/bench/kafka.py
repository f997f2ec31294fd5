"""``ferrymq bench kafka``: placeholder replaced below."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    pass
