"""The recent-requests pane: a live tail of the ledger, newest first, filterable by user
and by status.

The gateway filters (`GET /requests?user_id=&status=`), so a filter finds old matches
too, not just the rows already shown. Each tick asks only for rows newer than the newest
one shown (`after_id`), which is cheap enough to do every second.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select
from textual.worker import Worker

from llmgw.api_types import RequestRow

from .gateway import client, connected, relay_failure

# "errors" are what the usage tab and the dashboard count: 400 and up except the 429s.
STATUSES = (
    ("all", "all"),
    ("errors (no 429)", "error"),
    ("4xx", "4xx"),
    ("5xx", "5xx"),
    ("429", "429"),
)
COLUMNS = ("time UTC", "user", "model", "status", "prompt", "completion", "duration ms")
NUMERIC = {"prompt", "completion", "duration ms"}


@dataclass
class RequestsLoaded(Message):
    """Ledger rows (newest first) with an id above `after_id` (0: the newest rows),
    fetched with the filters `user` and `status`."""

    rows: list[RequestRow]
    after_id: int = 0
    user: str | None = None
    status: str | None = None


class RequestsPane(Vertical):
    DEFAULT_CSS = """
    RequestsPane {
        height: 1fr;
    }
    RequestsPane > #requests-filters {
        height: auto;
        padding: 0 1;
    }
    RequestsPane > #requests-filters > Label {
        padding: 0 1;
    }
    RequestsPane > #requests-filters > Input {
        width: 20;
    }
    RequestsPane > #requests-filters > Select {
        width: 19;
    }
    RequestsPane > #requests-filters > #requests-state {
        color: $success;
    }
    RequestsPane > #requests-filters > #requests-state.-paused {
        color: $warning;
        text-style: bold;
    }
    RequestsPane > DataTable {
        height: 1fr;
    }
    """
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("p", "resume", "Resume"),
        Binding("slash", "focus_user", "Filter user", key_display="/"),
        Binding("s", "next_status", "Status filter"),
        Binding("c", "clear_filters", "Clear filters"),
        Binding("escape", "focus_table", "To the table", show=False),
    ]
    CAP = 500  # rows kept; the full ledger is `llmgw usage` / the database's business

    def __init__(self) -> None:
        super().__init__()
        self._rows: list[RequestRow] = []  # newest first, as shown
        self._user: str | None = None  # the filters the rows were fetched with
        self._status: str | None = None
        self._paused = False
        self._fetching: Worker[None] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="requests-filters"):
            yield Label("User")
            yield Input(placeholder="any (Enter)", compact=True, id="requests-user")
            yield Label("Status")
            yield Select(
                STATUSES, value="all", allow_blank=False, compact=True, id="requests-status"
            )
            yield Label(id="requests-state")
        table: DataTable[str | Text] = DataTable(id="requests-table", cursor_type="row")
        for heading in COLUMNS:
            table.add_column(Text(heading, justify="right") if heading in NUMERIC else heading)
        yield table

    def on_mount(self) -> None:
        self._show_state()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        relay_failure(self, event)

    def reload(self) -> None:
        """Show the newest rows with the current filters, from scratch."""
        self._rows = []
        self._show_rows()
        # Before the app has reached the gateway a fetch could only fail; the app reloads
        # every pane as soon as it connects.
        if connected(self):
            self._fetching = self.fetch_rows(0, self._user, self._status)

    def tick(self) -> None:
        """Called every second while the gateway is connected: fetch what is new."""
        if self._paused or (self._fetching is not None and not self._fetching.is_finished):
            return  # a tick must not cancel a reload, which is the same fetch from scratch
        newest = self._rows[0]["id"] if self._rows else 0
        self._fetching = self.fetch_rows(newest, self._user, self._status)

    @work(exclusive=True, group="requests", exit_on_error=False)
    async def fetch_rows(self, after_id: int, user: str | None, status: str | None) -> None:
        rows = await client(self).requests(
            limit=self.CAP, after_id=after_id, user_id=user, status=status
        )
        self.post_message(RequestsLoaded(rows, after_id, user, status))

    # --- handlers ---------------------------------------------------------------------

    @on(RequestsLoaded)
    def rows_loaded(self, event: RequestsLoaded) -> None:
        event.stop()
        if (event.user, event.status) != (self._user, self._status):
            return  # fetched for filters the user has changed since
        if event.after_id == 0:
            self._rows = event.rows[: self.CAP]
        else:
            if self._paused:
                return  # fetched just before the pause; the resumed tail picks them up
            newest = self._rows[0]["id"] if self._rows else 0
            fresh = [row for row in event.rows if row["id"] > newest]
            if not fresh:
                return
            self._rows = (fresh + self._rows)[: self.CAP]
        self._show_rows()

    @on(Input.Submitted, "#requests-user")
    def user_submitted(self) -> None:
        self.query_one("#requests-table", DataTable).focus()  # blurring applies the filter

    @on(Input.Blurred, "#requests-user")
    @on(Select.Changed, "#requests-status")
    def filters_changed(self) -> None:
        user = self.query_one("#requests-user", Input).value.strip() or None
        chosen = self.query_one("#requests-status", Select).selection
        status = None if chosen in (None, "all") else str(chosen)
        if (user, status) != (self._user, self._status):
            self._user, self._status = user, status
            self.reload()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # "p" is Pause or Resume: the footer shows the one that applies.
        if action == "pause":
            return not self._paused
        if action == "resume":
            return self._paused
        return True

    def action_pause(self) -> None:
        self._set_paused(True)

    def action_resume(self) -> None:
        self._set_paused(False)

    def action_focus_user(self) -> None:
        self.query_one("#requests-user", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#requests-table", DataTable).focus()

    def action_next_status(self) -> None:
        select = self.query_one("#requests-status", Select)
        values = [value for _, value in STATUSES]
        select.value = values[(values.index(str(select.selection)) + 1) % len(values)]

    def action_clear_filters(self) -> None:
        with self.prevent(Select.Changed):
            self.query_one("#requests-status", Select).value = "all"
        self.query_one("#requests-user", Input).value = ""
        self.filters_changed()

    # --- layout -----------------------------------------------------------------------

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        self.refresh_bindings()
        self._show_state()

    def _show_state(self) -> None:
        state = self.query_one("#requests-state", Label)
        state.set_class(self._paused, "-paused")
        shown = f"{len(self._rows)} row" + "s" * (len(self._rows) != 1)
        state.update(f"{'PAUSED' if self._paused else 'live'} · {shown}")

    def _show_rows(self) -> None:
        """Rebuild the table from `_rows`. A cursor on the top row stays there and so
        follows the tail; a cursor further down stays on its request."""
        table = self.query_one("#requests-table", DataTable)
        kept = None
        if table.cursor_row > 0:
            kept = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        table.clear()
        for row in self._rows:
            table.add_row(*_cells(row), key=str(row["id"]))
        if kept is not None and kept in table.rows:
            table.move_cursor(row=table.get_row_index(kept), animate=False)
        self._show_state()


def _cells(row: RequestRow) -> tuple[str | Text, ...]:
    status = row["status_code"]
    return (
        _clock(row["timestamp"]),
        row["user_id"],
        row["model"] or "–",
        Text(str(status), style=_status_style(status)),
        Text(f"{row['prompt_tokens']:,}", justify="right"),
        Text(f"{row['completion_tokens']:,}", justify="right"),
        Text(_milliseconds(row["duration_ms"]), justify="right"),
    )


def _clock(timestamp: str) -> str:
    """HH:MM:SS of the ledger's ISO text, in UTC as it stores it."""
    return timestamp[11:19]


def _milliseconds(ms: float) -> str:
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"  # a 429 takes well under 1 ms


def _status_style(status: int) -> str:
    # ANSI names, not theme colours: they keep their meaning on a 16-colour terminal.
    # 429 apart from the other 4xx: throttling is the gateway at work, not a failure.
    if status == 429:
        return "cyan"
    if status >= 500:
        return "bold red"
    if status >= 400:
        return "yellow"
    return "green"
