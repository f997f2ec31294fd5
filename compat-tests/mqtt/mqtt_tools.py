"""Helpers the MQTT compat tests import (by a module name no other folder uses)."""

from __future__ import annotations

import shutil


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian mosquitto-clients; scripts/test installs it)"
    return path
