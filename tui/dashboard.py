"""The dashboard pane (being built)."""

from __future__ import annotations

from typing import Any

from textual.widgets import Static


class DashboardPane(Static):
    def show(self, snapshot: dict[str, Any]) -> None:
        """Show one `/stats` snapshot."""
