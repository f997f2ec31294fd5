"""Headless Chromium for the console's and CORS's browser tests (docs/console.md).

Imported by tests/browser/conftest.py (the fixture) and the tests (``screenshot``).

Debian's ``chromium`` (``bash scripts/test`` installs it) driven by Playwright's
driver, which ships in the PyPI wheel: never ``playwright install``. A missing
browser or driver fails the tests, it never skips them. Each test gets a fresh
profile directory. Screenshots go to ``test-artifacts/console/`` (git-ignored);
with ``FERRYMQ_SCREENSHOTS=docs`` they are also copied into ``docs/console/``,
the pictures of docs/console.md.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
DOCS = ROOT / "docs" / "console"
VIEWPORT = {"width": 1280, "height": 860}


@dataclass
class Browser:
    """A browser context with a fresh profile; ``problems`` collects every page's console
    errors and uncaught exceptions."""

    context: Any
    problems: list[str] = field(default_factory=list)

    def new_page(self) -> Any:
        return self.context.new_page()


def chromium(tmp_path: Path) -> Iterator[Browser]:
    """The ``browser`` fixture's body (tests/browser/conftest.py)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is required: `apt-get install chromium` (bash scripts/test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is required: pip install -e '.[test]'")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=list(ARGS),
            viewport=VIEWPORT)
        browser = Browser(context)

        def watch(page: Any) -> None:
            page.on("console", lambda msg: msg.type == "error" and browser.problems.append(
                f"console: {msg.text} at {page.url}"))
            page.on("pageerror", lambda exc: browser.problems.append(f"pageerror: {exc}"))

        context.on("page", watch)
        for page in context.pages:
            watch(page)
        try:
            yield browser
        finally:
            context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save ``page`` as test-artifacts/console/<name>.png (and into docs/console/ when
    FERRYMQ_SCREENSHOTS=docs); returns the artifact's path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 5000, "a screenshot of a drawn page"
    if os.environ.get("FERRYMQ_SCREENSHOTS") == "docs":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / path.name)
    return path
