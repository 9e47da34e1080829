"""Headless Chromium (Debian's `chromium` package, installed by scripts/setup.sh) driven by
Playwright, for the viewer's browser tests, its benchmark and its screenshots.

Playwright's own browser download is not used: it launches the system Chromium. The flags keep
Chromium off the network (no background connections, updates or sync) and in a fresh profile.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A fresh page in a fresh profile; raises if Chromium or Playwright is missing."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no chromium on PATH: run scripts/setup.sh (apt-get install chromium)")
    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="contrail-chromium-") as d:
        ctx = pw.chromium.launch_persistent_context(
            d,
            executable_path=exe,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
            accept_downloads=True,
        )
        try:
            yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally:
            ctx.close()
