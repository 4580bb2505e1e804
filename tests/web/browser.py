"""Headless Chromium from Debian (/usr/bin/chromium) driven by Playwright's Python client.

No browser is downloaded: Playwright launches the system's Chromium through
`executable_path`, with a fresh profile, no network services of its own (no component
updates, sync, QUIC) and no sandbox (CI runs as root). Screenshots go under the test's
tmp dir: `shot(page, tmp_path, "inbox-list")` writes inbox-list-1280.png and -420.png.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import BrowserContext, Page, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 420, "height": 860}


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as driver:
        context = await driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport=WIDE,
        )
        try:
            yield context
        finally:
            await context.close()


async def shot(page: Page, out: Path, name: str) -> list[Path]:
    """Screenshots of the page as it is, wide then narrow (the viewport is put back)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, size in (("1280", WIDE), ("420", NARROW)):
        await page.set_viewport_size(size)
        await page.wait_for_timeout(150)  # let the layout finish; not an assertion
        path = out / f"{name}-{label}.png"
        await page.screenshot(path=str(path))
        paths.append(path)
    await page.set_viewport_size(WIDE)
    return paths
