"""The seed's admin page (`/admin/index.html`), served, and driven in a real Chromium."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from .conftest import Gateway, GatewayFactory, with_secret

PASSWORD = "correct horse battery staple"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium(config: pytest.Config) -> str:
    """`--chromium PATH`, else the `chromium` on PATH."""
    path: str | None = config.getoption("chromium") or shutil.which("chromium")
    if not path:
        pytest.fail("The admin page test needs Chromium: run scripts/test (it installs it).")
    return path


@pytest.fixture
async def browser(pytestconfig: pytest.Config) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium(pytestconfig), args=CHROMIUM_FLAGS
        )
        yield browser
        await browser.close()


@pytest.fixture
async def site(gateway_factory: GatewayFactory) -> Gateway:
    gateway: Gateway = await gateway_factory(admin=with_secret("s" * 32))
    async with gateway.admin() as admin:
        await admin.add_admin("ops", PASSWORD)
    return gateway


async def test_the_page_is_served_with_a_strict_policy(site: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{site.url}/admin/", allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == "/admin/index.html"
        async with http.get(f"{site.url}/admin/index.html") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            policy = resp.headers["Content-Security-Policy"]
            page = await resp.text()
        for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            async with http.get(f"{site.url}/admin/{asset}") as resp:
                assert (resp.status, resp.content_type) == (200, kind)
        async with http.get(f"{site.url}/admin/../llmgw.db") as resp:
            assert resp.status == 404
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in page  # no inline script: the policy would block it


async def login(page: Page, site: Gateway, password: str = PASSWORD) -> None:
    await page.goto(f"{site.url}/admin/index.html")
    await page.fill("input[name=username]", "ops")
    await page.fill("input[name=password]", password)
    await page.click("#login-form button")


async def test_an_admin_manages_keys_in_the_browser(site: Gateway, browser: Browser) -> None:
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())

    await login(page, site, "wrong password!!")
    await page.wait_for_selector("#notice:not([hidden])")
    assert "Wrong username or password" in await page.inner_text("#notice")

    await login(page, site)
    await page.wait_for_selector("#main-view:not([hidden])")
    assert await page.input_value("#tier") == "free"  # the configured default tier

    await page.fill("input[name=user_id]", "<img src=x onerror=alert(1)>")
    await page.select_option("#tier", "premium")
    await page.fill("input[name=description]", "made in the browser")
    await page.click("#create-form button")
    await page.wait_for_selector("#new-key:not([hidden])")
    key = (await page.inner_text("#new-key-value")).strip()
    assert key.startswith("sk-internal-")
    row = page.locator("#keys tbody tr").first
    await row.wait_for()
    cells = await row.locator("td").all_inner_texts()
    assert cells[2] == "<img src=x onerror=alert(1)>"  # shown as text, never as HTML
    assert cells[3] == "premium"

    async with site.admin() as admin:
        [listed] = await admin.list_keys()
    assert (listed["user_id"], listed["description"]) == (
        "<img src=x onerror=alert(1)>",
        "made in the browser",
    )

    await row.get_by_role("button", name="Rotate").click()
    # Locator assertions: page.wait_for_function would eval, which the page's CSP forbids.
    await expect(page.locator("#new-key-value")).not_to_have_text(key)
    rotated = (await page.inner_text("#new-key-value")).strip()
    assert rotated.startswith("sk-internal-")
    await row.get_by_role("button", name="Revoke").click()
    await page.wait_for_selector("#keys tbody tr.inactive")
    async with site.admin() as admin:
        assert (await admin.get_key(listed["id"]))["is_active"] is False
    await page.locator("#keys tbody tr").first.get_by_role("button", name="Delete").click()
    await expect(page.locator("#keys tbody tr")).to_have_count(0)
    assert await page.locator("#usage tbody tr").count() >= 1  # at least the total row
    assert errors == []
