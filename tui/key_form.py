"""The form that creates a key, or edits one: a modal that closes only on success.

The limits are whole numbers the form checks as they are typed in (`limit_fields`):
a mistake is named under them before anything is sent. The rest the gateway judges
(the CLI and the web page use the same rules): a 400 names the field in `param`, and
the message appears under that field while the form stays open with what was typed.
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
from .limit_fields import (
    LIMIT_NAMES,
    LIMITS,
    PERIODS,
    InvalidLimit,
    LimitName,
    limit_texts,
    parse_limit,
    tier_placeholder,
)

# The limits' rows: a label, then each field with what follows it.
LIMIT_ROWS: tuple[tuple[str, tuple[tuple[LimitName, str], ...]], ...] = (
    ("Requests", (("requests_per_minute", "/minute"), ("requests_per_hour", "/hour"))),
    ("Tokens", (("tokens_per_minute", "/minute"), ("tokens_per_day", "/day"))),
    ("In flight", (("max_in_flight", "at once"),)),
    ("Budget", (("budget_tokens", "tokens"),)),
)
# The period Select's value for "none of the key's own" (a Select value cannot be None).
TIERS_PERIOD = "tier"
# Where a refusal of each field is shown: all limits share one line under their rows.
NOTE_OF = dict.fromkeys((*LIMIT_NAMES, "budget_period"), "limits")
HINTS = {
    "expires_at": "2027-01-31, or 30d, 12h, 2w from now; empty = never",
    "allowed_models": "comma-separated; empty = all models",
    "limits": "empty = the tier's (faint); 0 = no limit (not requests)",
}
FIELDS = (
    "user_id",
    "is_active",
    "tier",
    "description",
    "expires_at",
    "allowed_models",
    *LIMIT_NAMES,
    "budget_period",
)
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
    KeyFormScreen .row.-limits {
        margin-top: 0;  /* the limits read as one block */
    }
    KeyFormScreen .row > .limit {
        width: 12;
    }
    KeyFormScreen .row > #budget_period {
        width: 22;
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
        self._tiers: dict[str, TierView] = {}
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
            limits = limit_texts(key)
            for first, (label, fields) in enumerate(LIMIT_ROWS):
                with Horizontal(classes="row" if first == 0 else "row -limits"):
                    yield Label(label)
                    for name, after in fields:
                        yield Input(limits[name], id=name, classes="limit", compact=True)
                        yield Label(after, classes="per")
                    if label == "Budget":
                        yield self._period_select(key)
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

    def _period_select(self, key: KeyView | None) -> Select[str]:
        period = None if key is None else key["budget_period"]
        return Select(
            _period_options(None),
            allow_blank=False,
            value=period or TIERS_PERIOD,
            compact=True,
            id="budget_period",
        )

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
        self._tiers = {t["name"]: t for t in event.tiers}
        select: Select[str] = self.query_one("#tier", Select)
        select.set_options(_tier_option(t) for t in event.tiers)
        wanted = event.default if self._key is None else self._key["tier"]
        if wanted in self._tiers:
            select.value = wanted

    @on(Select.Changed, "#tier")
    def tier_changed(self, event: Select.Changed) -> None:
        """An empty limit is the tier's: show the chosen tier's value faintly in it."""
        tier = self._tiers.get(event.value) if isinstance(event.value, str) else None
        for name in LIMIT_NAMES:
            self.query_one(f"#{name}", Input).placeholder = (
                "" if tier is None else tier_placeholder(tier, name)
            )
        period: Select[str] = self.query_one("#budget_period", Select)
        chosen = period.value
        period.set_options(_period_options(tier))
        period.value = chosen
        # Select redraws its label when its value changes, and this one may well not.
        # (mypy cannot tell the descriptor of a generic class's reactive from its value.)
        period.mutate_reactive(Select.value)  # type: ignore[misc]

    @on(FormRefused)
    def refused(self, event: FormRefused) -> None:
        self._saving = False
        self.query_one("#save", Button).disabled = False
        self._show_refusal(event.param, event.message)

    def _show_refusal(self, param: str | None, message: str) -> None:
        """`message` under the field `param` (or the form), the focus on that field."""
        param = param if param in FIELDS else None
        note = self.query_one(f"#{NOTE_OF.get(param or '', param or 'form')}-note", Static)
        note.update(message)
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
        for note in self.query(".note").results(Static):
            hint = HINTS.get((note.id or "").removesuffix("-note"), "")
            note.update(hint)
            note.set_classes("note" if hint else "note -empty")
        try:
            fields = self._fields()
        except InvalidLimit as exc:
            self._show_refusal(exc.name, exc.message)  # nothing is sent
            return
        if self._key is None:
            # An empty limit of a new key is its tier's, as an absent one is.
            fields = {k: v for k, v in fields.items() if v is not None or k not in NOTE_OF}
        else:
            fields = {k: v for k, v in fields.items() if v != self._before.get(k)}
            if not fields:
                self.dismiss(None)
                return
        self._saving = True
        self.query_one("#save", Button).disabled = True
        self.save(fields)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _fields(self) -> dict[str, Any]:
        """The form in the admin API's terms (what an edit compares with the key);
        InvalidLimit if a limit is not one."""

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
        for limit in LIMITS:
            fields[limit.name] = parse_limit(limit, text(limit.name))
        period = self.query_one("#budget_period", Select).value
        fields["budget_period"] = period if period in PERIODS else None
        return fields


def _texts(key: KeyView | None) -> dict[str, str]:
    """What the text fields of the form show at first: the key's values, or nothing."""
    if key is None:
        return dict.fromkeys(("description", "expires_at", "allowed_models"), "")
    expires, models = key["expires_at"], key["allowed_models"]
    return {
        "description": key["description"],
        # An expiry given as a date is midnight: show the date, as it was given.
        "expires_at": "" if expires is None else expires.removesuffix("T00:00:00.000Z"),
        "allowed_models": "" if models is None else ", ".join(models),
    }


def _tier_option(tier: TierView) -> tuple[str, str]:
    """A tier as the form offers it: its name and limits; its name is the value."""
    limits = f"{tier['requests_per_minute']}/min, {tier['requests_per_hour']}/h"
    return f"{tier['name']}  ({limits})", tier["name"]


def _period_options(tier: TierView | None) -> list[tuple[str, str]]:
    """The budget's periods; the first, the tier's, says which that is once known."""
    tiers = "the tier's period" if tier is None else f"the tier's: a {tier['budget_period']}"
    return [(tiers, TIERS_PERIOD), *((f"a {p}", p) for p in PERIODS)]
