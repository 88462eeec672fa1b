"""`llmgw-tui`: the live admin dashboard, on the gateway's admin socket.

One app, four tabs (dashboard, keys, usage, recent requests). Every call to the gateway
runs in a worker; workers post messages and only `@on` handlers change widgets, so the
screen never waits for the socket. `/stats/stream` doubles as the connection monitor:
when it breaks, a banner says so and the app retries until the gateway is back.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from llmgw.admin_client import AdminApiError, AdminClient, GatewayUnreachable
from llmgw.config import ConfigError, find_config_file, load_settings

from .banner import ConnectionBanner
from .dashboard import DashboardPane
from .keys import KeysPane
from .messages import ConnectionChanged, StatsTick
from .requests import RequestsPane
from .usage import UsagePane

TABS = ("dashboard", "keys", "usage", "requests")
# Each tab's title, with the key that shows it in the footer's key colour.
TAB_TITLES = {
    tab: f"[b $footer-key-foreground]{key}[/] {title}"
    for tab, key, title in zip(
        TABS, "dkut", ("Dashboard", "Keys", "Usage", "Requests"), strict=True
    )
}


class LlmgwTui(App[None]):
    TITLE = "llmgw"
    # Absolute: Textual resolves a relative path from the file of the (sub)class.
    CSS_PATH = Path(__file__).with_name("llmgw.tcss")
    # The tab bar shows each tab's key (TAB_TITLES), so the footer has the room, even at
    # 80 columns, for the keys of the tab shown, help and quit.
    BINDINGS = [
        Binding("d", "show_tab('dashboard')", "Dashboard", show=False),
        Binding("k", "show_tab('keys')", "Keys", show=False),
        Binding("u", "show_tab('usage')", "Usage", show=False),
        Binding("t", "show_tab('requests')", "Requests", show=False),
        Binding("question_mark", "toggle_help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]
    RECONNECT_EVERY = 2.0
    STATS_SECONDS = 300

    def __init__(self, socket_path: Path, *, live: bool = True) -> None:
        """`live=False` starts no worker: the look tests fill the panes themselves."""
        super().__init__()
        self.socket_path = socket_path
        self.client = AdminClient(socket_path)
        self.connected: bool | None = None
        self._live = live
        self._help_shown = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner()
        with TabbedContent(initial="dashboard"):
            with TabPane(TAB_TITLES["dashboard"], id="dashboard"):
                yield DashboardPane()
            with TabPane(TAB_TITLES["keys"], id="keys"):
                yield KeysPane()
            with TabPane(TAB_TITLES["usage"], id="usage"):
                yield UsagePane()
            with TabPane(TAB_TITLES["requests"], id="requests"):
                yield RequestsPane()
        # The palette (ctrl+p) still works; its footer label would crowd out the keys at 80 columns.
        yield Footer(show_command_palette=False)

    async def on_mount(self) -> None:
        self.sub_title = str(self.socket_path)
        await self.client.__aenter__()
        if self._live:
            self.follow_gateway()

    async def on_unmount(self) -> None:
        await self.client.close()

    @work(exclusive=True, group="stats", exit_on_error=False)
    async def follow_gateway(self) -> None:
        """Relay `/stats/stream`; when it breaks, say so and try again."""
        while True:
            try:
                async for snapshot in self.client.stream_stats(self.STATS_SECONDS):
                    if self.connected is not True:
                        self.post_message(ConnectionChanged(True))
                    self.post_message(StatsTick(snapshot))
                detail = "the gateway closed the connection"
            except GatewayUnreachable as exc:
                detail = str(exc)
            except AdminApiError as exc:
                detail = exc.message
            if self.connected is not False:
                self.post_message(ConnectionChanged(False, detail))
            await asyncio.sleep(self.RECONNECT_EVERY)

    @on(ConnectionChanged)
    def connection_changed(self, event: ConnectionChanged) -> None:
        was, self.connected = self.connected, event.connected
        banner = self.query_one(ConnectionBanner)
        if not event.connected:
            banner.lost(event.detail, self.RECONNECT_EVERY)
            return
        banner.restored()
        if was is not True:  # first contact, or back after a loss: fetch everything anew
            self.query_one(KeysPane).reload()
            self.query_one(UsagePane).reload()
            self.query_one(RequestsPane).reload()

    @on(StatsTick)
    def stats_tick(self, event: StatsTick) -> None:
        if not self.is_running:
            return  # shutting down: the panes may already be gone (a tick raced the exit)
        # The live figures are one replica's: the header says which.
        self.sub_title = f"{self.socket_path} · replica {event.snapshot['replica']}"
        self.query_one(DashboardPane).show(event.snapshot)
        self.query_one(KeysPane).tick()
        self.query_one(UsagePane).tick()
        self.query_one(RequestsPane).tick()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker becomes a visible notice."""
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        if isinstance(error, AdminApiError):
            # markup=False: messages quote what the admin typed.
            self.notify(error.message, title="The gateway refused", severity="error", markup=False)
        elif isinstance(error, GatewayUnreachable):
            self.notify(str(error), title="Gateway not reachable", severity="error", markup=False)
        else:
            message = f"{type(error).__name__}: {error}"
            self.notify(message, title="Failed", severity="error", markup=False)

    def action_show_tab(self, tab: str) -> None:
        # Let go of the focus first: Textual would hand it to a hidden sibling in the pane
        # being left, and TabbedContent would switch right back to that pane.
        self.set_focus(None)
        tabbed = self.query_one(TabbedContent)
        tabbed.active = tab
        # Into the pane's table, so its bindings work (and the footer shows them) at once.
        tables = tabbed.get_pane(tab).query(DataTable)
        if tables:
            tables.first().focus()

    def action_toggle_help(self) -> None:
        if self._help_shown:
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()
        self._help_shown = not self._help_shown


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    envvar="LLMGW_ADMIN_SOCKET",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's admin socket (default: from the config, else the standard path).",
)
@click.option(
    "--config",
    envvar="LLMGW_CONFIG",
    type=click.Path(dir_okay=False),
    help="The llmgw.toml to read for the socket path.",
)
def main(socket: Path | None, config: str | None) -> None:
    """llmgw-tui: live dashboard, keys, usage and requests of a running llmgw gateway."""
    if socket is None:
        try:
            socket = load_settings(find_config_file(config, os.environ)).socket_path
        except ConfigError as exc:
            raise click.ClickException(f"{exc} (fix the setting, or pass --socket)") from None
    LlmgwTui(socket).run()
