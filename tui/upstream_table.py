"""The upstreams (vLLM servers) as the gateway's health prober and its reads of their
`/metrics` last saw them: up, full (passed over while another has room) or down, and
the load routing compares, with vLLM's requests waiting and running, its KV-cache use
and its prefix-cache hit rate. A dash is what vLLM did not say (its metrics not read,
or not exposed: its load is then this gateway's requests in flight there)."""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
from textual.widgets import DataTable

from llmgw.api_types import UpstreamStatus

from .fit import Column, shown

COLUMNS = (
    Column("url", "UPSTREAM", "UPSTREAM", right=False),
    Column("health", "HEALTH", "HEALTH", right=False),
    Column("latency", "LATENCY", None),
    Column("in_flight", "IN FLIGHT", None),
    Column("load", "LOAD", "LOAD"),
    Column("waiting", "WAIT", "WAIT"),
    Column("running", "RUN", "RUN"),
    Column("kv_cache", "KV CACHE", "KV"),
    Column("prefix_hits", "PREFIX HIT", "HIT"),
    Column("detail", "MODELS / LAST ERROR", "MODELS / LAST ERROR", right=False),
)
# The last column gets at least this much, even if the table must scroll for it. The
# wide layout is shown when it leaves that much; the narrow one (80 columns) leaves out
# the health check's latency and the requests in flight (the load counts those where
# vLLM's figures are not known), shortens two headers and drops the `http://` of a URL.
MIN_DETAIL = 20


def columns(wide: bool) -> list[tuple[str, str, bool]]:
    """(key, header, right-aligned) of each column the layout shows."""
    return shown(COLUMNS, wide)


def _figure(text: str) -> Text:
    return Text(text, justify="right")


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def _cells(u: UpstreamStatus, wide: bool) -> list[Text]:
    healthy = u["healthy"]
    # A server that is down lists no models worth reading (nor a latency worth
    # trusting: it is the last good one); why it is down matters more.
    latency = u["latency_ms"] if healthy else None
    if not healthy:
        health = Text("DOWN", style="bold red")
        detail = Text(u["last_error"] or "not answering", style="red")
    else:
        health = Text("full", style="bold yellow") if u["full"] else Text("up", style="bold green")
        detail = Text(", ".join(u["models"]) or "-")
    cells = {
        "url": Text(u["url"] if wide else u["url"].removeprefix("http://")),
        "health": health,
        "latency": _figure("-" if latency is None else f"{latency:,.0f} ms"),
        "in_flight": _figure(str(u["in_flight"])),
        "load": _figure(f"{u['load']:g}"),
        "waiting": _figure(_count(u["waiting"])),
        "running": _figure(_count(u["running"])),
        "kv_cache": _figure(_percent(u["kv_cache_usage"])),
        "prefix_hits": _figure(_percent(u["prefix_cache_hit_rate"])),
        "detail": detail,
    }
    return [cells[key] for key, _, _ in columns(wide)]


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
        self._wide: bool | None = None  # the layout of the columns there are; None: none

    def show(self, upstreams: list[UpstreamStatus]) -> None:
        """The `upstreams` of a `/stats` snapshot."""
        self._upstreams = upstreams
        wide = self._fits_wide(upstreams)
        rows = [(u["url"], _cells(u, wide)) for u in upstreams]
        self._fit(rows, wide)
        if wide == self._wide and [key for key, _ in rows] == [r.value for r in self.rows]:
            for key, cells in rows:
                for (column, _, _), cell in zip(columns(wide), cells, strict=True):
                    old = self.get_cell(key, column)
                    # (Text's == looks at the characters and spans, not the style)
                    if old != cell or old.style != cell.style:
                        self.update_cell(key, column, cell, update_width=True)
            return
        # Columns only ever widen as rows come; a change of layout starts them afresh.
        self.clear(columns=wide != self._wide)
        if wide != self._wide:
            for key, label, right in columns(wide):
                self.add_column(Text(label, justify="right" if right else "left"), key=key)
            self._wide = wide
        for key, cells in rows:
            self.add_row(*cells, key=key)

    def on_resize(self, event: Resize) -> None:
        self.show(self._upstreams)

    def _fits_wide(self, upstreams: list[UpstreamStatus]) -> bool:
        """Whether the wide layout leaves the last column MIN_DETAIL cells."""
        if not self.size.width:  # hidden (another tab is showing): keep the layout
            return bool(self._wide)
        rows = [_cells(u, True) for u in upstreams]
        return self._room(rows, True) >= MIN_DETAIL

    def _room(self, rows: list[list[Text]], wide: bool) -> int:
        """The cells the other columns leave the last one."""
        pad = 2 * self.cell_padding
        used = sum(
            pad + max([len(label), *(cells[i].cell_len for cells in rows)])
            for i, (_, label, _) in enumerate(columns(wide)[:-1])
        )
        # The vertical scrollbar, should there be more upstreams than lines.
        return self.size.width - used - pad - self.scrollbar_size_vertical

    def _fit(self, rows: list[tuple[str, list[Text]]], wide: bool) -> None:
        """Cut the free text of the last column to the room the others leave, so a long
        error ends in an ellipsis instead of pushing the table into sideways scrolling."""
        if not rows or not self.size.width:
            return
        room = max(MIN_DETAIL, self._room([cells for _, cells in rows], wide))
        for _, cells in rows:
            cells[-1].truncate(room, overflow="ellipsis")
