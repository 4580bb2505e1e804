"""The operator console and the inbox's chaos panel in headless Chromium, against a real MTA
delivering to a real simulation: a suspension made in the page holds the site's mail and
shows in the timeline and the events, a refused write says why, chaos changes replies."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from playwright.async_api import Page, expect

from tests.sim.test_inbox import TOKEN, base
from tests.web.browser import chromium, shot
from tests.web.test_operator import admin, admin_stack, held


async def give_token(page: Page) -> None:
    """Type the token into the page's prompt, as a person would."""
    page.once("dialog", lambda dialog: dialog.accept(TOKEN))
    await page.click("#token-button")


async def test_console_suspends_a_site_and_shows_it(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path)
    shots = tmp_path / "screenshots"
    try:
        await stack.submit(["ann@isp.test"], subject="Before")
        await stack.quiet()
        async with chromium(tmp_path / "profile") as browser:
            page = await browser.new_page()
            await page.goto(admin(stack) + "/")
            await page.wait_for_selector("#sites tr[data-site] >> text=isp.test")
            await page.wait_for_selector("#events tr.delivered >> text=ann@isp.test")
            await page.click("#sites tr[data-site] button")
            await expect(page.locator("#control-target")).to_have_value("mx.isp.test")  # the site
            await page.fill("#control-reason", "maintenance window")
            await page.fill("#control-duration", "1h")

            # without the token the write is refused, and the page says why
            await page.click("#control-form button[data-action=suspend]")
            await expect(page.locator("#toast")).to_contain_text("Refused (401)")

            await give_token(page)
            await page.click("#control-form button[data-action=suspend]")
            await expect(page.locator("#toast")).to_contain_text("suspended")
            await expect(page.locator("#sites tr[data-site] .badge")).to_contain_text("suspended")
            await expect(page.locator("#timeline li.operator").first).to_contain_text(
                "suspend by token@127."
            )
            await expect(page.locator("#timeline li.operator").first).to_contain_text(
                "maintenance window"
            )

            await stack.submit(["ben@isp.test"], subject="During")
            async with aiohttp.ClientSession() as http:
                await held(stack, http, admin(stack))
            await page.wait_for_selector("#events tr.relayed >> text=ben@isp.test")
            assert await page.locator("#events tr.delivered >> text=ben@isp.test").count() == 0
            assert stack.rows()["ben@isp.test"].attempts == 0
            await shot(page, shots, "console-suspended")

            # filters: only ben's events
            await page.fill("#filter-recipient", "ben@")
            await expect(page.locator("#events tbody tr")).to_have_count(1)
            await page.select_option("#filter-kind", "delivered")
            await expect(page.locator("#events tbody")).to_contain_text("No event matches")
            await page.fill("#filter-recipient", "")
            await page.select_option("#filter-kind", "")

            await page.click("#control-form button[data-action=resume]")
            await page.wait_for_selector("#events tr.delivered >> text=ben@isp.test")
            assert stack.rows()["ben@isp.test"].state == "delivered"

            # one message: its recipients and attempts, from an event's link
            await page.click("#events tr.delivered >> text=ben@isp.test")
            await expect(page.locator("#attempts tbody")).to_contain_text("ben@isp.test")
            await expect(page.locator("#attempts tbody")).to_contain_text("delivered")
            await shot(page, shots, "console-message")
    finally:
        await stack.stop()


async def test_chaos_set_in_the_inbox_changes_replies(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path)
    shots = tmp_path / "screenshots"
    try:
        async with chromium(tmp_path / "profile") as browser:
            page = await browser.new_page()
            await page.goto(base(stack) + "/")
            await page.click("#chaos summary")
            await expect(page.locator("#chaos-persona")).to_have_value("isp")
            await page.fill("#chaos-reply", "451 4.7.1 Chaos from the page")
            await page.fill("#chaos-share", "1")
            await page.click("#chaos-apply")
            await expect(page.locator("#toast")).to_contain_text("Refused (401)")
            await give_token(page)
            await page.click("#chaos-apply")
            await expect(page.locator("#chaos-state")).to_contain_text(
                'answers "451 4.7.1 Chaos from the page" at rcpt'
            )
            await shot(page, shots, "inbox-chaos")
            await stack.submit(["dan@isp.test"])
            await stack.quiet()
            dan = stack.rows()["dan@isp.test"]
            assert (dan.state, dan.code, dan.text) == ("queued", 451, "Chaos from the page")
            await page.click("#chaos-clear")
            await expect(page.locator("#chaos-state")).to_contain_text("no injected answer")
    finally:
        await stack.stop()
