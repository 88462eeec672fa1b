"""The upstreams (vLLM servers) as the gateway's health prober last saw them."""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
from textual.widgets import DataTable

from llmgw.api_types import UpstreamStatus

# (column key, label, right-aligned)
COLUMNS = (
    ("url", "UPSTREAM", False),
    ("health", "HEALTH", False),
    ("latency", "LATENCY", True),
    ("in_flight", "IN FLIGHT", True),
    ("detail", "MODELS / LAST ERROR", False),
)
# The last column gets at least this much, even if the table must scroll for it.
MIN_DETAIL = 20


def _cells(u: UpstreamStatus) -> list[Text]:
    healthy = u["healthy"]
    # A server that is down lists no models worth reading (nor a latency worth
    # trusting: it is the last good one); why it is down matters more.
    latency = u["latency_ms"] if healthy else None
    if healthy:
        detail = Text(", ".join(u["models"]) or "-")
    else:
        detail = Text(u["last_error"] or "not answering", style="red")
    return [
        Text(u["url"]),
        Text("up", style="bold green") if healthy else Text("DOWN", style="bold red"),
        Text("-" if latency is None else f"{latency:,.0f} ms", justify="right"),
        Text(str(u["in_flight"]), justify="right"),
        detail,
    ]


class UpstreamTable(DataTable[Text]):
    # As tall as its rows (there are few upstreams), but never more than a few lines,
    # so the busiest keys keep the room. The last column is cut to fit (`_fit`): no
    # sideways scrolling, whose scrollbar would only eat one of those few lines.
    DEFAULT_CSS = """
    UpstreamTable {
        height: auto;
        max-height: 6;
        overflow-x: hidden;
        background: $surface;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(cursor_type="none", id=id, classes=classes)
        self._upstreams: list[UpstreamStatus] = []

    def on_mount(self) -> None:
        for key, label, right in COLUMNS:
            self.add_column(Text(label, justify="right" if right else "left"), key=key)

    def show(self, upstreams: list[UpstreamStatus]) -> None:
        """The `upstreams` of a `/stats` snapshot."""
        self._upstreams = upstreams
        rows = [(u["url"], _cells(u)) for u in upstreams]
        self._fit(rows)
        if [key for key, _ in rows] == [r.value for r in self.rows]:
            for key, cells in rows:
                for (column, _, _), cell in zip(COLUMNS, cells, strict=True):
                    old = self.get_cell(key, column)
                    # (Text's == looks at the characters and spans, not the style)
                    if old != cell or old.style != cell.style:
                        self.update_cell(key, column, cell, update_width=True)
            return
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)

    def on_resize(self, event: Resize) -> None:
        self.show(self._upstreams)

    def _fit(self, rows: list[tuple[str, list[Text]]]) -> None:
        """Cut the free text of the last column to the room the others leave, so a long
        error ends in an ellipsis instead of pushing the table into sideways scrolling."""
        if not rows or not self.size.width:
            return
        pad = 2 * self.cell_padding
        used = sum(
            pad + max(len(label), *(cells[i].cell_len for _, cells in rows))
            for i, (_, label, _) in enumerate(COLUMNS[:-1])
        )
        # The vertical scrollbar, should there be more upstreams than lines.
        room = max(MIN_DETAIL, self.size.width - used - pad - self.scrollbar_size_vertical)
        for _, cells in rows:
            cells[-1].truncate(room, overflow="ellipsis")
