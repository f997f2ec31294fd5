"""``ferrymq bench produce`` / ``bench consume``: the native door measured (placeholder)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    pass
