"""The one screen that ever shows a key's secret: right after a create or a rotate.

The gateway stores only a digest, so this is the admin's only chance to take the key;
the screen says so, and offers a copy that works over SSH (OSC 52).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class NewKeyScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    NewKeyScreen {
        align: center middle;
    }
    NewKeyScreen > Vertical {
        width: 70;
        max-width: 100%;
        height: auto;
        border: thick $success;
        background: $surface;
        padding: 1 2;
    }
    NewKeyScreen #heading {
        width: 100%;  /* wraps at the box's edge, not cut by it */
    }
    NewKeyScreen #secret {
        margin: 1 0;
        padding: 0 1;
        background: $boost;
        text-style: bold;
    }
    NewKeyScreen #warning {
        color: $warning;
        text-style: bold;
    }
    NewKeyScreen Horizontal {
        height: auto;
        align-horizontal: right;
        margin-top: 1;
    }
    NewKeyScreen Button {
        margin-left: 2;
    }
    """
    BINDINGS = [
        Binding("c", "copy", "Copy"),
        Binding("escape", "close", "Done"),
    ]

    def __init__(self, secret: str, heading: str) -> None:
        super().__init__()
        self.secret = secret
        self._heading = heading

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self._heading, id="heading", markup=False)
            # markup=False: the key is data, never Textual markup.
            yield Static(self.secret, id="secret", markup=False)
            yield Label("Copy it now: you will not see it again.", id="warning")
            with Horizontal():
                yield Button("Copy (c)", id="copy", variant="primary")
                yield Button("Done (esc)", id="done")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.action_copy()
        else:
            self.action_close()

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.secret)
        self.notify("Copied")

    def action_close(self) -> None:
        self.dismiss(None)
