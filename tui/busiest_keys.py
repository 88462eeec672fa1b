"""The table of the busiest keys, refreshed from every `/stats` snapshot.

Rows are keyed by key id. While the same keys stay in the same order (the usual case
from one second to the next), cells are updated in place, so the cursor and the scroll
position do not move; when the ranking changes, the rows are rebuilt and the cursor
follows the key it was on.
"""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
from textual.widgets import DataTable

from llmgw.api_types import BusyKey, WindowBudget
from llmgw.keys import KEY_PREFIX

from .metric import rate_text

# (column key, label, right-aligned)
COLUMNS = (
    ("user", "USER", False),
    ("key", "KEY", False),
    ("tier", "TIER", False),
    ("rps", "REQ/S", True),
    ("tps", "TOK/S", True),
    ("errors", "ERR", True),
    ("limited", "429", True),
    ("minute", "LEFT/MIN", True),
    ("hour", "LEFT/HOUR", True),
)
# Below this width the table is made to fit 80 columns: the `sk-internal-` every key
# prefix shares is left off, and long user ids are cut shorter.
WIDE = 100
USER_WIDTH = {False: 12, True: 24}


def _left(window: WindowBudget | None) -> Text:
    """`remaining/limit` of one budget window, in red once it is spent; a deleted key's
    budget is unknown."""
    if window is None:
        return Text("-", justify="right")
    remaining, limit = window["remaining"], window["limit"]
    style = "bold red" if remaining <= 0 else ""
    return Text(f"{remaining}/{limit}", style=style, justify="right")


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
        super().__init__(cursor_type="row", zebra_stripes=True, id=id, classes=classes)
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
                for (column, _, _), cell in zip(COLUMNS, self._cells(k), strict=True):
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
            for key, label, right in COLUMNS:
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
        prefix = k["key_prefix"] or f"#{k['key_id']}"
        if not wide and prefix.startswith(KEY_PREFIX):
            prefix = "…" + prefix[len(KEY_PREFIX) :]
        user, budget = k["user_id"], k["budget"]
        return [
            Text("(deleted)", style="dim italic")
            if user is None
            else Text(_short(user, USER_WIDTH[wide])),
            Text(prefix, style="dim"),
            Text(k["tier"] or "-"),
            Text(rate_text(k["requests_per_s"]), justify="right"),
            Text(rate_text(k["tokens_per_s"]), justify="right"),
            _count(k["errors"], "bold red"),
            _count(k["rate_limited"], "bold yellow"),
            _left(None if budget is None else budget["minute"]),
            _left(None if budget is None else budget["hour"]),
        ]
