"""The ``browser`` fixture: headless Chromium with a fresh profile (browser_tools.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_tools import Browser, chromium


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    yield from chromium(tmp_path)
