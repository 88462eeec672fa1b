"""`llmgw-tui` as a whole: tabs, help, the connection banner, and a real run in tmux."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from textual.widgets import Footer, TabbedContent
from textual.widgets._footer import FooterKey
from textual.widgets._tabbed_content import ContentTab

from llmgw.admin_client import AdminClient
from llmgw.config import load_settings
from tui.app import LlmgwTui
from tui.banner import ConnectionBanner

from .conftest import (
    LLMGW,
    Gateway,
    GatewayFactory,
    Served,
    run_llmgw,
    start_gateway,
    wait_for,
)


class QuickTui(LlmgwTui):
    RECONNECT_EVERY = 0.1


async def test_tabs_and_help_are_a_key_away(gateway: Gateway) -> None:
    app = QuickTui(gateway.socket_path)
    async with app.run_test(size=(100, 30)) as pilot:
        tabs = app.query_one(TabbedContent)
        for key, tab in (("k", "keys"), ("u", "usage"), ("t", "requests"), ("d", "dashboard")):
            await pilot.press(key)
            assert tabs.active == tab
        await pilot.press("question_mark")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")


@pytest.mark.parametrize("tab", ["dashboard", "keys", "usage", "requests"])
async def test_at_80_columns_every_tab_shows_its_keys_help_and_quit(
    tmp_path: Path, tab: str
) -> None:
    app = LlmgwTui(tmp_path / "no.sock", live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(tab[0] if tab != "requests" else "t")
        await pilot.pause()
        footer = app.query_one(Footer)
        keys = {key.key: key for key in footer.query(FooterKey)}
        assert {"question_mark", "q"} <= set(keys)
        for key in keys.values():  # every key whole on the screen, none scrolled away
            assert key.region.right <= footer.region.right, key.key
        # The tab bar teaches the keys that switch tabs.
        labels = [str(t.label) for t in app.query(ContentTab)]
        assert labels == ["d Dashboard", "k Keys", "u Usage", "t Requests"]


async def test_the_banner_comes_when_the_gateway_stops_and_goes_when_it_returns(
    gateway: Gateway,
) -> None:
    app = QuickTui(gateway.socket_path)
    async with app.run_test(size=(100, 30)) as pilot:
        banner = app.query_one(ConnectionBanner)
        await wait_for(lambda: app.connected is True)
        assert not banner.has_class("-lost")

        await gateway.runner.cleanup()  # the gateway stops; its socket goes away
        await wait_for(lambda: banner.has_class("-lost"))
        assert "not reachable" in str(banner.render())
        await pilot.press("k")  # the screen still answers while the gateway is away
        assert app.query_one(TabbedContent).active == "keys"

        restarted = await start_gateway(gateway.settings)
        try:
            await wait_for(lambda: not banner.has_class("-lost"))
            assert app.connected is True
        finally:
            await restarted.runner.cleanup()


async def test_without_a_gateway_the_banner_says_how_to_start_one(tmp_path: Path) -> None:
    app = QuickTui(tmp_path / "missing.sock")
    async with app.run_test(size=(80, 24)):
        banner = app.query_one(ConnectionBanner)
        await wait_for(lambda: banner.has_class("-lost"))
        assert "llmgw serve" in str(banner.render())


async def test_the_command_line() -> None:
    tui = str(Path(LLMGW).with_name("llmgw-tui"))
    process = await asyncio.create_subprocess_exec(
        tui, "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert b"--socket" in out
    bad = Path("bad.toml")
    bad.write_text("[server]\nport = 'x'\n")
    # Without LLMGW_ADMIN_SOCKET (the test fixture sets it), the socket comes from --config.
    env = {k: v for k, v in os.environ.items() if k != "LLMGW_ADMIN_SOCKET"}
    process = await asyncio.create_subprocess_exec(
        tui,
        "--config",
        str(bad),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 1
    assert b"port" in err
    assert b"Traceback" not in err


async def test_a_real_terminal_in_tmux_shows_the_dashboard(
    served: Served, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """As over SSH: the real program in a real terminal (tmux), screen read back."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.fail("tmux is needed for this test: run scripts/test (it installs it).")
    key = (
        await run_llmgw("--socket", str(served.socket), "key", "add", "--user", "tmux-user")
    ).stdout
    async with AdminClient(served.socket) as admin:
        assert (await admin.health())["status"] == "ok"
    session = f"llmgw-tui-{os.getpid()}"
    tui = str(Path(LLMGW).with_name("llmgw-tui"))
    env = {**os.environ, "TERM": "xterm-256color", "TMUX_TMPDIR": str(tmp_path)}
    start = await asyncio.create_subprocess_exec(
        tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "40",
        f"{tui} --socket {served.socket}", env=env,
    )  # fmt: skip
    assert await start.wait() == 0
    try:
        screen = ""
        async with asyncio.timeout(20):
            while "Dashboard" not in screen or "tmux-user" not in screen:
                # Traffic for the busiest-keys table, then read the pane back.
                await run_llmgw("--socket", str(served.socket), "key", "list")
                async with http.post(
                    f"{served.url}/v1/chat/completions",
                    json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": f"Bearer {key.strip()}"},
                ) as response:
                    await response.read()
                capture = await asyncio.create_subprocess_exec(
                    tmux, "capture-pane", "-p", "-t", session,
                    stdout=asyncio.subprocess.PIPE, env=env,
                )  # fmt: skip
                screen = (await capture.communicate())[0].decode()
                await asyncio.sleep(0.2)
        for label in ("Keys", "Usage", "Requests", "Quit"):
            assert label in screen
        assert key.strip() not in screen
    finally:
        stop = await asyncio.create_subprocess_exec(tmux, "kill-server", env=env)
        await stop.wait()


async def test_the_header_names_the_replica_whose_live_figures_it_shows(
    gateway_factory: GatewayFactory,
) -> None:
    base = load_settings(None).server
    gateway: Gateway = await gateway_factory(
        server=dataclasses.replace(base, host="127.0.0.1", port=0, replica_name="gw-b")
    )
    app = QuickTui(gateway.socket_path)
    async with app.run_test(size=(100, 30)):
        await wait_for(lambda: "replica gw-b" in app.sub_title)
        assert app.sub_title == f"{gateway.socket_path} · replica gw-b"
