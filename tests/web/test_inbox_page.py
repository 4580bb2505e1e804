"""The inbox page in headless Chromium: live arrival, search, the message view, a refused write."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from tests.sim.test_inbox import base, start
from tests.web.browser import chromium, shot


async def test_inbox_in_a_browser(net: str, tmp_path: Path) -> None:
    stack = await start(net, tmp_path)
    shots = tmp_path / "screenshots"
    try:
        async with chromium(tmp_path / "profile") as browser:
            page = await browser.new_page()
            await page.goto(base(stack) + "/")
            await page.wait_for_selector("#live.on")  # the live stream is open
            await page.wait_for_selector("text=No message yet")
            await shot(page, shots, "inbox-empty")

            await stack.submit(["ann@isp.test"], subject="Spring sale")
            await stack.quiet()
            await stack.submit(["ben@isp.test"], subject="Autumn news")
            await stack.quiet()
            # no reload: the page learns of the arrivals from the stream
            await page.wait_for_selector("#messages tr[data-id] >> text=Autumn news", timeout=2000)
            assert await page.locator("#messages tr[data-id]").count() == 2
            await shot(page, shots, "inbox-list")

            await page.fill("#query", "to:ann@isp.test")
            await page.press("#query", "Enter")
            # (the page's CSP forbids eval, so no wait_for_function: a locator assertion)
            await expect(page.locator("#messages tr[data-id]")).to_have_count(1)
            assert await page.inner_text("#messages tbody") == await page.inner_text(
                "#messages tr[data-id]"
            )
            assert "Spring sale" in await page.inner_text("#messages tbody")

            await page.click("#messages tr[data-id]")
            await page.wait_for_selector(".verdict >> text=DKIM")
            verdicts = await page.inner_text("#verdicts")
            assert "DKIM: pass" in verdicts and "DMARC: pass" in verdicts
            assert "Spring sale" in await page.inner_text("#subject")
            await shot(page, shots, "inbox-message")
            await page.click(".tabs button[data-tab=smtp]")
            smtp = await page.inner_text("#tab-smtp")
            assert "RCPT TO:<ann@isp.test>" in smtp and "250" in smtp
            await shot(page, shots, "inbox-smtp")

            # deleting without the token is refused, and the page says so
            await page.click("#delete-one")
            await page.wait_for_selector("#toast:not([hidden])")
            assert "Refused (401)" in await page.inner_text("#toast")
            assert stack.sim is not None
            assert stack.sim.stats()["personas"]["isp"]["stored"] == 2
    finally:
        await stack.stop()
