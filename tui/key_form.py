"""The form that creates a key, or edits one: a modal that closes only on success.

The gateway is the one judge of the fields (the CLI and the web page use the same
rules), so the form checks nothing itself: a 400 names the field in `param`, and the
message appears under that field while the form stays open with what was typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static, Switch
from textual.worker import Worker, WorkerState

from llmgw.admin_client import AdminApiError
from llmgw.api_types import KeyView, TierView

from .gateway import client, relay_failure

# Where a refusal of each field is shown: both limits share one line under their row.
NOTE_OF = {"requests_per_minute": "limits", "requests_per_hour": "limits"}
HINTS = {
    "expires_at": "2027-01-31, or 30d, 12h, 2w from now; empty = never",
    "allowed_models": "comma-separated; empty = all models",
    "limits": "whole numbers; empty = the tier's",
}
LIMITS = ("requests_per_minute", "requests_per_hour")
FIELDS = ("user_id", "is_active", "tier", "description", "expires_at", "allowed_models", *LIMITS)
# What the status switch says beside it, off and on.
STATES = ("revoked: every request with it is refused", "active")


@dataclass
class TiersLoaded(Message):
    """`GET /tiers`: the tiers to offer, and the one a new key gets by default."""

    default: str
    tiers: list[TierView]


@dataclass
class FormRefused(Message):
    """The gateway answered 400: `message` belongs by the field `param` (if named)."""

    param: str | None
    message: str


@dataclass(frozen=True)
class SavedKey:
    """A key the form saved, as the gateway now has it; `secret` for a new key only."""

    # A created key's view holds its secret too (the API's CreatedKey): never in a log.
    key: KeyView = field(repr=False)
    secret: str | None = field(default=None, repr=False)


@dataclass
class FormSaved(Message):
    saved: SavedKey


class KeyFormScreen(ModalScreen[SavedKey | None]):
    """Dismissed with the created key (and its secret) or the updated one; None if
    cancelled or nothing changed."""

    DEFAULT_CSS = """
    KeyFormScreen {
        align: center middle;
    }
    KeyFormScreen > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $primary;
        background: $panel;
        padding: 0 1;
        overflow-y: auto;
    }
    KeyFormScreen #title {
        text-style: bold;
    }
    KeyFormScreen .row {
        height: 1;
        margin-top: 1;
    }
    KeyFormScreen .row > Label {
        width: 15;
    }
    KeyFormScreen .row > Input, KeyFormScreen .row > Select {
        width: 1fr;
    }
    KeyFormScreen .row > .limit {
        width: 12;
    }
    KeyFormScreen .row > .per {
        width: auto;
        padding: 0 1 0 2;
    }
    KeyFormScreen .row > Switch {
        /* One line like the other rows: the focus shows as a tint, not a border. */
        border: none;
        padding: 0 1;
        height: 1;
        background: $surface;
        & > .switch--slider {
            color: $error;
            background: $surface;
        }
        &.-on > .switch--slider {
            color: $success;
        }
        &:focus {
            border: none;
            background-tint: $foreground 15%;
        }
    }
    KeyFormScreen #is_active-state {
        color: $text-error;
    }
    KeyFormScreen #is_active-state.-on {
        color: $text-success;
    }
    KeyFormScreen .note {
        padding-left: 15;
        color: $text-muted;
    }
    KeyFormScreen .note.-empty {
        display: none;
    }
    KeyFormScreen .note.-error {
        color: $text-error;
        text-style: bold;
    }
    KeyFormScreen #buttons {
        height: auto;
        align-horizontal: right;
        margin: 1 0;
    }
    KeyFormScreen Button {
        margin-left: 2;
    }
    """
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, key: KeyView | None = None) -> None:
        """`key` None: create a key; else edit this one (the API's public view)."""
        super().__init__()
        self._key = key
        self._before: dict[str, Any] = {}
        self._saving = False

    # --- layout -----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        key = self._key
        with Vertical():
            if key is None:
                yield Label("New key", id="title")
                yield from self._row("user_id", "User", Input(placeholder="who it is for"))
            else:
                title = f"Edit key {key['id']} ({key['key_prefix']}, {key['user_id']})"
                yield Label(title, id="title", markup=False)
                # The CLI's --enable/--disable: a revoked key can be let in again here.
                with Horizontal(classes="row"):
                    yield Label("Status")
                    active = bool(key["is_active"])
                    yield Switch(active, animate=False, id="is_active")
                    state = Label(STATES[active], id="is_active-state", classes="per")
                    yield state.set_class(active, "-on")
                yield self._note("is_active")
            tiers: Select[str] = Select([], prompt="loading tiers...", compact=True)
            yield from self._row("tier", "Tier", tiers)
            texts = _texts(key)
            for name, label in (
                ("description", "Description"),
                ("expires_at", "Expires"),
                ("allowed_models", "Models"),
            ):
                yield from self._row(name, label, Input(texts[name]))
            with Horizontal(classes="row"):
                yield Label("Requests")
                for name, per in zip(LIMITS, ("/minute", "/hour"), strict=True):
                    yield Input(texts[name], id=name, classes="limit", compact=True)
                    yield Label(per, classes="per")
            yield self._note("limits")
            yield self._note("form")
            with Horizontal(id="buttons"):
                yield Button("Cancel (esc)", id="cancel", compact=True)
                label = "Create (ctrl+s)" if key is None else "Save (ctrl+s)"
                yield Button(label, id="save", variant="primary", compact=True)

    def _row(self, name: str, label: str, widget: Widget) -> ComposeResult:
        widget.id = name
        if isinstance(widget, Input):
            widget.compact = True
        with Horizontal(classes="row"):
            yield Label(label)
            yield widget
        yield self._note(name)

    def _note(self, name: str) -> Static:
        hint = HINTS.get(name, "")
        # markup=False: a refusal quotes what was typed, which is not markup.
        classes = "note" if hint else "note -empty"
        return Static(hint, id=f"{name}-note", classes=classes, markup=False)

    def on_mount(self) -> None:
        if self._key is not None:
            # What an edit compares with, read back from the filled form: a field left
            # as shown is not sent (an expiry already past would be refused).
            self._before = self._fields() | {"tier": self._key["tier"]}
        self.load_tiers()
        self.query_one("#user_id" if self._key is None else "#description").focus()

    # --- gateway ----------------------------------------------------------------------

    @work(exclusive=True, group="key-form-tiers", exit_on_error=False)
    async def load_tiers(self) -> None:
        tiers = await client(self).tiers()
        self.post_message(TiersLoaded(tiers["default"], tiers["data"]))

    @work(exclusive=True, group="key-form-save", exit_on_error=False)
    async def save(self, fields: dict[str, Any]) -> None:
        admin = client(self)
        try:
            if self._key is None:
                user_id = fields.pop("user_id")
                created = await admin.create_key(user_id, **fields)
                saved = SavedKey(created, created["key"])
            else:
                saved = SavedKey(await admin.update_key(self._key["id"], fields))
        except AdminApiError as exc:
            if exc.status != 400:
                raise
            self.post_message(FormRefused(exc.param, exc.message))
            return
        self.post_message(FormSaved(saved))

    # --- handlers -----------------------------------------------------------------------

    @on(TiersLoaded)
    def tiers_loaded(self, event: TiersLoaded) -> None:
        select: Select[str] = self.query_one("#tier", Select)
        select.set_options(_tier_option(t) for t in event.tiers)
        wanted = event.default if self._key is None else self._key["tier"]
        if any(t["name"] == wanted for t in event.tiers):
            select.value = wanted

    @on(FormRefused)
    def refused(self, event: FormRefused) -> None:
        self._saving = False
        self.query_one("#save", Button).disabled = False
        param = event.param if event.param in FIELDS else None
        note = self.query_one(f"#{NOTE_OF.get(param or '', param or 'form')}-note", Static)
        note.update(event.message)
        note.set_classes("note -error")
        if param is not None:
            self.query_one(f"#{param}").focus()

    @on(Switch.Changed, "#is_active")
    def status_switched(self, event: Switch.Changed) -> None:
        state = self.query_one("#is_active-state", Label)
        state.update(STATES[event.value])
        state.set_class(event.value, "-on")

    @on(FormSaved)
    def saved(self, event: FormSaved) -> None:
        self.dismiss(event.saved)

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        failed = event.state in (WorkerState.ERROR, WorkerState.CANCELLED)
        if failed and event.worker.group == "key-form-save":
            self._saving = False  # e.g. the gateway went away: let the admin try again
            self.query_one("#save", Button).disabled = False
        relay_failure(self, event)

    def action_save(self) -> None:
        if self._saving:  # a second create while the first is in flight would make two keys
            return
        fields = self._fields()
        if self._key is not None:
            fields = {k: v for k, v in fields.items() if v != self._before.get(k)}
            if not fields:
                self.dismiss(None)
                return
        for note in self.query(".note").results(Static):
            hint = HINTS.get((note.id or "").removesuffix("-note"), "")
            note.update(hint)
            note.set_classes("note" if hint else "note -empty")
        self._saving = True
        self.query_one("#save", Button).disabled = True
        self.save(fields)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _fields(self) -> dict[str, Any]:
        """The form in the admin API's terms (what an edit compares with the key)."""

        def text(name: str) -> str:
            return self.query_one(f"#{name}", Input).value.strip()

        fields: dict[str, Any] = {}
        if self._key is None:
            fields["user_id"] = text("user_id")
        else:  # a new key is active: the API takes is_active on a change only
            fields["is_active"] = self.query_one("#is_active", Switch).value
        tier = self.query_one("#tier", Select).value
        if isinstance(tier, str):  # blank until the tiers arrive: the gateway's default
            fields["tier"] = tier
        models = [m.strip() for m in text("allowed_models").split(",") if m.strip()]
        fields |= {
            "description": text("description"),
            "expires_at": text("expires_at") or None,
            "allowed_models": models or None,
        }
        for name in LIMITS:
            value = text(name)
            # Not a number goes as typed, so the gateway's refusal names the field.
            fields[name] = int(value) if value.isdigit() else (value or None)
        return fields


def _texts(key: KeyView | None) -> dict[str, str]:
    """What the text fields of the form show at first: the key's values, or nothing."""
    if key is None:
        return dict.fromkeys(("description", "expires_at", "allowed_models", *LIMITS), "")
    expires, models = key["expires_at"], key["allowed_models"]
    per_minute, per_hour = key["requests_per_minute"], key["requests_per_hour"]
    return {
        "description": key["description"],
        # An expiry given as a date is midnight: show the date, as it was given.
        "expires_at": "" if expires is None else expires.removesuffix("T00:00:00.000Z"),
        "allowed_models": "" if models is None else ", ".join(models),
        "requests_per_minute": "" if per_minute is None else str(per_minute),
        "requests_per_hour": "" if per_hour is None else str(per_hour),
    }


def _tier_option(tier: TierView) -> tuple[str, str]:
    """A tier as the form offers it: its name and limits; its name is the value."""
    limits = f"{tier['requests_per_minute']}/min, {tier['requests_per_hour']}/h"
    return f"{tier['name']}  ({limits})", tier["name"]
