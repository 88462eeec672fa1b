"""The table of the busiest keys, refreshed from every `/stats` snapshot.

Rows are keyed by key id. While the same keys stay in the same order (the usual case
from one second to the next), cells are updated in place, so the cursor and the scroll
position do not move; when the ranking changes, the rows are rebuilt and the cursor
follows the key it was on.

Beside the traffic, what is left of each limit: the request windows, tokens this minute
(when the key has that limit), requests in flight and the token budget. A limit that is
off shows a faint — ; a key whose limits are unknown (deleted, or Redis gone) a -.
In flight is `current/limit`; a key without that limit shows its open streams, faint:
the gateway reports in-flight counts only for a limit, and streams are what stays open.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.events import Resize
from textual.widgets import DataTable

from llmgw.api_types import BudgetView, BusyKey, InFlightView, LimitsView, WindowBudget

from .fit import Column, short_prefix, shown
from .metric import rate_text

# Headers of two lines: what the limit columns show is what is LEFT of each.
COLUMNS = (
    Column("user", "\nUSER", "\nUSER", right=False),
    Column("key", "\nKEY", "\nKEY", right=False),
    Column("tier", "\nTIER", None, right=False),
    Column("rps", "\nREQ/S", "\nREQ/S"),
    Column("tps", "\nTOK/S", "\nTOK/S"),
    Column("errors", "\nERR", None),
    Column("limited", "\n429", "\n429"),
    Column("flight", "IN\nFLIGHT", "IN\nFLIGHT"),
    Column("minute", "LEFT\nREQ/MIN", "LEFT\nREQ/M"),
    Column("hour", "LEFT\nREQ/HOUR", "LEFT\nREQ/H"),
    Column("tokens", "LEFT\nTOK/MIN", "LEFT\nTOK/M"),
    Column("budget", "BUDGET\nLEFT", "BUDGET\nLEFT"),
)
# Below this width the table is made to fit 80 columns: the tier and the errors (the
# keys tab and the errors panel have them) are left out, long user ids are cut
# shorter, and the limit columns show what is left without the limit.
WIDE = 116
USER_WIDTH = {False: 10, True: 20}
PERIOD_SHORT = {"day": "d", "week": "wk", "month": "mo"}


def _unknown() -> Text:
    """A deleted key's limit, or one that cannot be read (Redis gone)."""
    return Text("-", justify="right")


def _off() -> Text:
    """A limit the key does not have."""
    return Text("—", style="dim", justify="right")


def columns(wide: bool) -> list[tuple[str, str, bool]]:
    """(key, header, right-aligned) of each column the layout shows."""
    return shown(COLUMNS, wide)


def compact(n: int) -> str:
    """A count of tokens in at most four characters, rounded down (what is left is
    never shown as more than it is): 950, 1.2k, 12k, 999k, 1.5M."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            tenths = n * 10 // size
            return f"{tenths // 10}{unit}" if tenths >= 100 else f"{tenths / 10:g}{unit}"
    return str(n)


def _left(remaining: int, limit: int, wide: bool, figure: Callable[[int], str] = str) -> Text:
    """What is left (and in the wide layout of how much), in red once it is spent."""
    text = f"{figure(remaining)}/{figure(limit)}" if wide else figure(remaining)
    return Text(text, style="bold red" if remaining <= 0 else "", justify="right")


def window_cell(window: WindowBudget | None, wide: bool, tokens: bool = False) -> Text:
    if window is None:
        return _off()
    return _left(window["remaining"], window["limit"], wide, compact if tokens else str)


def in_flight_cell(in_flight: InFlightView | None, streams: int) -> Text:
    """`current/limit`; with no limit, the key's open streams, faint: the gateway counts
    a key's requests in flight only for a limit, and its streams are the long ones."""
    if in_flight is None:
        return Text(str(streams), style="dim", justify="right")
    current, limit = in_flight["current"], in_flight["limit"]
    style = "bold red" if current >= limit else ""
    return Text(f"{current}/{limit}", style=style, justify="right")


def budget_cell(limits: LimitsView, wide: bool) -> Text:
    """The budget nearer its end, the key's or its user's, and its period."""
    budgets = [b for b in (limits["key_budget"], limits["user_budget"]) if b is not None]
    if not budgets:
        return _off()
    budget: BudgetView = min(budgets, key=lambda b: b["remaining"])  # the key's on a tie
    period = budget["period"] if wide else PERIOD_SHORT[budget["period"]]
    left = _left(budget["remaining"], budget["limit"], wide, compact)
    return left.append(f" {period}")


def _count(value: int, style: str) -> Text:
    if not value:
        return Text("0", style="dim", justify="right")
    return Text(str(value), style=style, justify="right")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


class BusiestKeys(DataTable[Text]):
    DEFAULT_CSS = """
    BusiestKeys {
        height: 1fr;
        min-height: 3;
        background: $surface;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            cursor_type="row", zebra_stripes=True, header_height=2, id=id, classes=classes
        )
        self._keys: list[BusyKey] = []
        self._wide: bool | None = None

    def show(self, keys: list[BusyKey]) -> None:
        """The `keys` of a `/stats` snapshot (busiest first)."""
        self._keys = keys
        # Hidden (another tab is showing), the table has no width: keep its layout.
        wide = self.size.width >= WIDE if self.size.width else bool(self._wide)
        order = [str(k["key_id"]) for k in keys]
        if wide == self._wide and order == [r.value for r in self.rows]:
            for row_key, k in zip(order, keys, strict=True):
                for (column, _, _), cell in zip(columns(wide), self._cells(k), strict=True):
                    old = self.get_cell(row_key, column)
                    # (Text's == looks at the characters and spans, not the style)
                    if old != cell or old.style != cell.style:
                        self.update_cell(row_key, column, cell, update_width=True)
            return
        self._rebuild(wide)

    def on_resize(self, event: Resize) -> None:
        if event.size.width and (event.size.width >= WIDE) != self._wide:
            self.show(self._keys)

    def _rebuild(self, wide: bool) -> None:
        cursor_key = None
        if self.row_count and self.is_valid_row_index(self.cursor_row):
            cursor_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        scroll_y = self.scroll_y
        # Columns only ever widen as rows come; a change of layout starts them afresh.
        self.clear(columns=wide != self._wide)
        if wide != self._wide:
            for key, label, right in columns(wide):
                self.add_column(Text(label, justify="right" if right else "left"), key=key)
        self._wide = wide
        for k in self._keys:
            self.add_row(*self._cells(k), key=str(k["key_id"]))
        # The new rows are measured on the next refresh: only then can the view go back
        # where it was, and then (if need be) to the row of the cursor.
        self.call_after_refresh(self.scroll_to, y=scroll_y, animate=False)
        if cursor_key is not None and cursor_key in self.rows:
            self.move_cursor(row=self.get_row_index(cursor_key), animate=False)

    def _cells(self, k: BusyKey) -> list[Text]:
        wide = bool(self._wide)
        # The `sk-internal-` every key shares is left off: the rest tells keys apart.
        prefix = short_prefix(k["key_prefix"]) if k["key_prefix"] else f"#{k['key_id']}"
        user, limits = k["user_id"], k["limits"]
        cells = {
            "user": Text("(deleted)", style="dim italic")
            if user is None
            else Text(_short(user, USER_WIDTH[wide])),
            "key": Text(prefix, style="dim"),
            "tier": Text(k["tier"] or "-"),
            "rps": Text(rate_text(k["requests_per_s"]), justify="right"),
            "tps": Text(rate_text(k["tokens_per_s"]), justify="right"),
            "errors": _count(k["errors"], "bold red"),
            "limited": _count(k["rate_limited"], "bold yellow"),
        }
        if limits is None:
            cells |= {c: _unknown() for c in ("flight", "minute", "hour", "tokens", "budget")}
        else:
            cells |= {
                "flight": in_flight_cell(limits["in_flight"], k["streams"]),
                "minute": window_cell(limits["requests_per_minute"], wide),
                "hour": window_cell(limits["requests_per_hour"], wide),
                "tokens": window_cell(limits["tokens_per_minute"], wide, tokens=True),
                "budget": budget_cell(limits, wide),
            }
        return [cells[key] for key, _, _ in columns(wide)]
