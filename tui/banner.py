"""The banner shown while the gateway cannot be reached."""

from __future__ import annotations

from textual.widgets import Static


class ConnectionBanner(Static):
    DEFAULT_CSS = """
    ConnectionBanner {
        display: none;
        background: $error;
        color: $text;
        text-style: bold;
        padding: 0 1;
        height: auto;
    }
    ConnectionBanner.-lost {
        display: block;
    }
    """

    def lost(self, detail: str, retry_every: float) -> None:
        self.update(f"Gateway not reachable: {detail}. Retrying every {retry_every:g} s...")
        self.add_class("-lost")

    def restored(self) -> None:
        self.remove_class("-lost")
