"""The keys pane (being built)."""

from __future__ import annotations

from textual.widgets import Static


class KeysPane(Static):
    def reload(self) -> None:
        """Fetch everything anew (after connecting)."""

    def tick(self) -> None:
        """Called every second while the gateway is connected."""
