"""The keys pane: every API key, searchable and sortable, and its whole life: create,
edit, revoke, rotate, delete.

A secret appears on screen only in `NewKeyScreen`, once, right after a create or a
rotate; the table and every notice name a key by id, prefix and user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static
from textual.worker import Worker

from llmgw.api_types import CreatedKey, KeyView

from .confirm import ConfirmScreen
from .gateway import client, relay_failure
from .key_form import KeyFormScreen, SavedKey
from .key_table import KeyTable, describe
from .limit_fields import describe_limits
from .new_key import NewKeyScreen

REFRESH_TICKS = 10  # "last used" moves with traffic; a refetch every 10 s keeps up


@dataclass
class KeysLoaded(Message):
    """Every key, as `GET /keys` lists it (never a secret)."""

    keys: list[KeyView]


@dataclass
class KeyChanged(Message):
    """A revoke or delete went through; `done` is the sentence for the notice."""

    done: str


@dataclass
class KeyRotated(Message):
    """A rotate went through; `key` carries the new secret, to be shown once."""

    key: CreatedKey = field(repr=False)  # never in a log


def rotated(key: KeyView) -> str:
    """What the new-secret screen says after a rotate."""
    heading = f"New secret for {describe(key)}; the old one no longer works."
    if not key["is_active"]:  # else the new secret's 401 would puzzle
        heading += " The key is still revoked: edit it (e) and switch it to active to use it."
    return heading


class KeysPane(Vertical):
    DEFAULT_CSS = """
    KeysPane > Input {
        margin: 0 1 1 1;
    }
    KeysPane > KeyTable {
        height: 1fr;
    }
    KeysPane > #keys-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    KeysPane > #key-limits {
        height: auto;
        padding: 0 1;
    }
    """
    BINDINGS = [
        # Short, and refresh (the table refreshes itself) only in the help: so that the
        # footer holds these, help and quit at 80 columns.
        Binding("n", "new", "New"),
        Binding("e", "edit", "Edit"),
        Binding("v", "revoke", "Revoke"),
        Binding("o", "rotate", "Rotate"),
        Binding("x", "delete", "Delete"),
        Binding("r", "reload", "Refresh", show=False),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("s", "sort", "Sort"),
        # Out of the search, keeping its filter (as enter does), so the keys act again.
        Binding("escape", "to_table", "To the table", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._selected: KeyView | None = None  # the key under the cursor, for check_action
        self._select_next: int | None = None  # a key just created: put the cursor on it
        self._ticks = 0

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="Search user, prefix, tier or description  (/)",
            id="keys-search",
            compact=True,
        )
        yield KeyTable(id="keys-table")
        # The selected key's limits: too many to be columns beside the rest.
        yield Static(id="key-limits", markup=False)
        yield Static(id="keys-status", markup=False)

    def on_show(self) -> None:
        # Switching to the tab should make its keys work at once, not after a click.
        self.query_one(KeyTable).focus()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # When a tab switch hides the focused widget, Textual hands the focus to a
        # sibling that is hidden as well (visible_siblings ignores the ancestors), and
        # the TabPane, told of it, switches back to this tab. Refuse that focus here.
        if not all(node.display for node in self.ancestors_with_self if isinstance(node, Widget)):
            event.stop()
            self.screen.set_focus(None)

    def reload(self) -> None:
        """Fetch every key anew (after connecting, and after every change)."""
        self.load_keys()

    def tick(self) -> None:
        """Called every second while the gateway is connected."""
        self._ticks += 1
        if self._ticks % REFRESH_TICKS == 0:
            self.load_keys()

    # --- gateway: workers post, handlers show ---------------------------------------

    @work(exclusive=True, group="keys-load", exit_on_error=False)
    async def load_keys(self) -> None:
        self.post_message(KeysLoaded(await client(self).list_keys()))

    @work(exclusive=True, group="key-revoke", exit_on_error=False)
    async def revoke(self, key_id: int, name: str) -> None:
        await client(self).revoke_key(key_id)
        self.post_message(KeyChanged(f"Revoked {name}: refused from the next request on."))

    @work(exclusive=True, group="key-rotate", exit_on_error=False)
    async def rotate(self, key_id: int) -> None:
        self.post_message(KeyRotated(await client(self).rotate_key(key_id)))

    @work(exclusive=True, group="key-delete", exit_on_error=False)
    async def delete(self, key_id: int, name: str) -> None:
        await client(self).delete_key(key_id)
        self.post_message(KeyChanged(f"Deleted {name}."))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        relay_failure(self, event)

    @on(KeysLoaded)
    def keys_loaded(self, event: KeysLoaded) -> None:
        self.query_one(KeyTable).show(event.keys, select=self._select_next)
        self._select_next = None
        self._selection_changed()

    @on(KeyChanged)
    def key_changed(self, event: KeyChanged) -> None:
        self.notify(event.done, markup=False)
        self.reload()

    @on(KeyRotated)
    def key_rotated(self, event: KeyRotated) -> None:
        self.app.push_screen(NewKeyScreen(event.key["key"], rotated(event.key)))
        self.reload()

    @on(Input.Changed, "#keys-search")
    def search_changed(self, event: Input.Changed) -> None:
        self.query_one(KeyTable).show(search=event.value)
        self._selection_changed()

    @on(Input.Submitted, "#keys-search")
    def search_submitted(self) -> None:
        self.query_one(KeyTable).focus()

    @on(DataTable.CellHighlighted)
    def cell_highlighted(self) -> None:
        self._selection_changed()

    @on(DataTable.CellSelected)
    def cell_selected(self) -> None:
        self.action_edit()  # enter, or a click on the highlighted cell

    def _selection_changed(self) -> None:
        table = self.query_one(KeyTable)
        self._selected = key = table.selected()
        self.refresh_bindings()  # edit, revoke, rotate and delete need a key
        if not table.keys:
            status = "No keys yet: press n to create one."
        elif key is None:
            status = f"No key matches {self.query_one(Input).value.strip()!r}."
        else:
            # A cell cursor marks its row faintly: say which key the actions act on.
            status = f"{table.shown} of {len(table.keys)} keys · selected: {describe(key)}"
        self.query_one("#keys-status", Static).update(status)
        limits = self.query_one("#key-limits", Static)
        limits.display = key is not None
        if key is not None:
            limits.update(describe_limits(key))

    # --- actions ----------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        key = self._selected
        if action in ("edit", "rotate", "delete") and key is None:
            return None  # dimmed in the footer: no key to act on
        if action == "revoke" and (key is None or not key["is_active"]):
            return None
        return True

    def action_new(self) -> None:
        self.app.push_screen(KeyFormScreen(), self._created)

    def _created(self, saved: SavedKey | None) -> None:
        if saved is None or saved.secret is None:
            return
        created = saved.key
        heading = f"Created {describe(created)}, tier {created['tier']}."
        self.app.push_screen(NewKeyScreen(saved.secret, heading))
        self._select_next = created["id"]
        self.reload()

    def action_edit(self) -> None:
        if (key := self._selected) is not None:
            self.app.push_screen(KeyFormScreen(key), self._edited)

    def _edited(self, saved: SavedKey | None) -> None:
        if saved is not None:
            updated = saved.key
            state = "active" if updated["is_active"] else "revoked"
            self.notify(f"Saved {describe(updated)}: {state}.", markup=False)
            self.reload()

    def action_revoke(self) -> None:
        self._confirm(
            "Revoke {}?\nRequests with it are refused from the very next one.",
            "Revoke",
            lambda key: self.revoke(key["id"], describe(key)),
        )

    def action_rotate(self) -> None:
        self._confirm(
            "Rotate {}?\nIts secret stops working at once; the new one is shown once.",
            "Rotate",
            lambda key: self.rotate(key["id"]),
        )

    def action_delete(self) -> None:
        self._confirm(
            "Delete {} for good?\nIts usage history stays.",
            "Delete",
            lambda key: self.delete(key["id"], describe(key)),
        )

    def _confirm(self, question: str, verb: str, then: Callable[[KeyView], object]) -> None:
        key = self._selected
        if key is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                then(key)

        # ConfirmScreen shows its question as plain text (a user id is free text, such
        # as team[ops]), and wraps it; a line break parts the question from the detail.
        question = question.format(describe(key))
        self.app.push_screen(ConfirmScreen(question, verb), answered)

    def action_reload(self) -> None:
        self.reload()

    def action_search(self) -> None:
        self.query_one(Input).focus()

    def action_to_table(self) -> None:
        self.query_one(KeyTable).focus()

    def action_sort(self) -> None:
        self.query_one(KeyTable).sort_by()
