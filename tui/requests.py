"""The recent-requests pane: a live tail of the ledger, newest first, filterable by user
and by status; each row names its route (the ledger's endpoint).

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

from .fit import cut_to_fit
from .gateway import client, connected, relay_failure

# "errors" are what the usage tab and the dashboard count: 400 and up except the 429s.
STATUSES = (
    ("all", "all"),
    ("errors (no 429)", "error"),
    ("4xx", "4xx"),
    ("5xx", "5xx"),
    ("429", "429"),
)
COLUMNS = (
    "time UTC", "user", "model", "endpoint", "status", "prompt", "completion", "duration ms",
)  # fmt: skip
NUMERIC = {"prompt", "completion", "duration ms"}
# What gives way, in turn, when the table is wider than the pane (at 80 columns): the
# endpoint loses the `/v1/` most routes share, then the free text is cut with an
# ellipsis, each column down to the cells it keeps at least (the figures stay whole):
# (column, least cells). At 120 columns every route is shown whole.
_USER, _MODEL, _ENDPOINT = 1, 2, 3
_GIVE_WAY = ((_ENDPOINT, 11), (_MODEL, 8), (_USER, 6), (_ENDPOINT, 8))


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
        yield DataTable[str | Text](id="requests-table", cursor_type="row")

    def on_mount(self) -> None:
        self._show_rows()

    def on_resize(self) -> None:
        self._show_rows()

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
        """Rebuild the table from `_rows`, fitted to the pane's width. A cursor on the top
        row stays there and so follows the tail; a cursor further down stays on its
        request."""
        table = self.query_one("#requests-table", DataTable)
        kept = None
        if table.cursor_row > 0:
            kept = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        # Room for the vertical scrollbar too, should the rows outgrow the table's height.
        room = table.size.width - table.styles.scrollbar_size_vertical
        for short in (False, True):
            headers = [Text(h, justify="right" if h in NUMERIC else "left") for h in COLUMNS]
            rows = [_cells(row, short) for row in self._rows]
            # Before the first layout there is no width to fit: a resize follows.
            if room <= 0 or cut_to_fit(headers, rows, room, table.cell_padding, ()):
                break
        if room > 0:
            for column, least in _GIVE_WAY:
                if cut_to_fit(headers, rows, room, table.cell_padding, (column,), least):
                    break
        # Columns and all: a column only ever widens to its cells, and the cut ones shrink.
        table.clear(columns=True)
        for heading in headers:
            table.add_column(heading)
        for row, cells in zip(self._rows, rows, strict=True):
            table.add_row(*cells, key=str(row["id"]))
        if kept is not None and kept in table.rows:
            table.move_cursor(row=table.get_row_index(kept), animate=False)
        self._show_state()


def _cells(row: RequestRow, short: bool = False) -> list[Text]:
    status = row["status_code"]
    return [
        Text(_clock(row["timestamp"])),
        # Text, not str: a str cell is read as markup, and names are free text.
        Text(row["user_id"]),
        Text(row["model"] or "–"),
        Text(_route(row["endpoint"]) if short else row["endpoint"]),
        Text(str(status), style=_status_style(status)),
        Text(f"{row['prompt_tokens']:,}", justify="right"),
        Text(f"{row['completion_tokens']:,}", justify="right"),
        Text(_milliseconds(row["duration_ms"]), justify="right"),
    ]


def _route(endpoint: str) -> str:
    """The endpoint without the `/v1/` of OpenAI's routes: `chat/completions`; others
    (`/tokenize`, `/v2/rerank`) as they are."""
    return endpoint.removeprefix("/v1/")


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
