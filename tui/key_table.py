"""The table of keys: filtered by a search, ordered by any column, never a secret.

It holds the admin API's public view of each key. The cursor is a cell, not a row:
its row is the selected key, and its column is the one a sort applies to. It fits its
width: the description gives way first, then the prefix loses the part every key shares.
"""

from __future__ import annotations

from typing import Literal

from rich.text import Text
from textual import on
from textual.events import Resize
from textual.widgets import DataTable

from llmgw.api_types import KeyView

from .fit import cut_to_fit, short_prefix

Column = Literal[
    "id",
    "key_prefix",
    "user_id",
    "tier",
    "is_active",
    "expires_at",
    "last_used_at",
    "description",
]
COLUMNS: tuple[tuple[Column, str], ...] = (
    ("id", "id"),
    ("key_prefix", "prefix"),
    ("user_id", "user"),
    ("tier", "tier"),
    ("is_active", "active"),
    ("expires_at", "expires"),
    ("last_used_at", "last used"),
    ("description", "description"),
)
DESCRIPTION = [name for name, _ in COLUMNS].index("description")
DESCRIPTION_ROOM = 20  # cells the description keeps before the prefix is shortened


def describe(key: KeyView) -> str:
    """How a confirmation or a notice names a key: id, prefix and user."""
    return f"key {key['id']} ({key['key_prefix']}, {key['user_id']})"


def cell(key: KeyView, name: Column, *, short: bool = False) -> str:
    value = key[name]
    if name == "key_prefix" and short:
        return short_prefix(str(value))
    if name == "is_active":
        return "yes" if value else "no"
    if name in ("expires_at", "last_used_at"):
        # The API's UTC text to the minute: the data's own time, never the clock's.
        # An expiry given as a date is midnight; the date alone says it.
        if value is None:
            return "never"
        return str(value)[:16].replace("T", " ").removesuffix(" 00:00")
    return "" if value is None else str(value)


def matching(keys: list[KeyView], search: str) -> list[KeyView]:
    """The keys whose user, prefix, tier or description hold every word of `search`."""
    words = search.casefold().split()

    def searched(key: KeyView) -> str:
        return " ".join((key["user_id"], key["key_prefix"], key["tier"], key["description"]))

    return [key for key in keys if all(w in searched(key).casefold() for w in words)]


def ordered(keys: list[KeyView], column: Column, reverse: bool) -> list[KeyView]:
    """Sorted by `column` (text without case); keys without a value last either way."""
    values = [(key[column], key) for key in keys]
    present = [(v.casefold() if isinstance(v, str) else v, k) for v, k in values if v is not None]
    absent = [k for v, k in values if v is None]
    return [k for _, k in sorted(present, key=lambda p: p[0], reverse=reverse)] + absent


class KeyTable(DataTable[Text]):
    # The columns leave room for the vertical scrollbar (`_refill`), should there be
    # more keys than lines: it must not take much.
    DEFAULT_CSS = """
    KeyTable {
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="cell", zebra_stripes=True)
        self.keys: dict[int, KeyView] = {}
        self.shown = 0  # how many keys match the search
        self._search = ""
        self._sort: tuple[Column, bool] = ("id", False)

    def show(
        self,
        keys: list[KeyView] | None = None,
        search: str | None = None,
        select: int | None = None,
    ) -> None:
        """Show these keys (or the same), matching this search (or the same), the
        cursor on the key `select` (or on the one it was on)."""
        if keys is not None:
            self.keys = {key["id"]: key for key in keys}
        if search is not None:
            self._search = search
        self._refill(select)

    def sort_by(self, column: Column | None = None) -> None:
        """Sort by `column` (the cursor's if None); again on the same one reverses."""
        column = column or COLUMNS[self.cursor_column][0]
        by, reverse = self._sort
        self._sort = (column, not reverse if column == by else False)
        self._refill()

    def selected(self) -> KeyView | None:
        """The key in the cursor's row, if any."""
        key_id = self._selected_id()
        return None if key_id is None else self.keys.get(key_id)

    def _selected_id(self) -> int | None:
        if not self.row_count:
            return None
        row_key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return None if row_key.value is None else int(row_key.value)

    def on_resize(self, event: Resize) -> None:
        self._refill()

    @on(DataTable.HeaderSelected)
    def header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(COLUMNS[event.column_index][0])

    def _refill(self, select: int | None = None) -> None:
        """Rebuild the rows, the cursor kept in its column and on its key."""
        select = select or self._selected_id()
        column = self.cursor_column
        shown = ordered(matching(list(self.keys.values()), self._search), *self._sort)
        by, reverse = self._sort
        room = self.size.width - self.styles.scrollbar_size_vertical
        for short in (False, True):
            headers = [
                Text(label + ((" ▼" if reverse else " ▲") if name == by else ""))
                for name, label in COLUMNS
            ]
            # Text, not str: a str cell is read as markup, and users and descriptions
            # are free text.
            rows = [
                [Text(cell(key, name, short=short), no_wrap=True) for name, _ in COLUMNS]
                for key in shown
            ]
            if room <= 0:
                break  # before the first layout there is no width to fit: a resize follows
            # The whole prefix while the description keeps some room, else the short one.
            least = 1 if short else DESCRIPTION_ROOM
            if cut_to_fit(headers, rows, room, self.cell_padding, [DESCRIPTION], least) or short:
                break
        self.clear(columns=True)
        for (name, _), header in zip(COLUMNS, headers, strict=True):
            self.add_column(header, key=name)
        for key, row in zip(shown, rows, strict=True):
            self.add_row(*row, key=str(key["id"]))
        ids = [key["id"] for key in shown]
        at = ids.index(select) if select in ids else 0
        self.move_cursor(row=at, column=column, animate=False)
        self.shown = len(shown)
