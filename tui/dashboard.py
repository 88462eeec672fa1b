"""The dashboard ("llm-top"): the gateway's last minutes, redrawn from every `/stats` tick.

Four panels (requests, tokens, errors, 429s: the current figure and a sparkline of
the window), a line of what is open right now, the busiest keys and the upstreams.
Everything shown comes from the snapshot, the seconds the sparklines are cut into
included (its `start`), never from this machine's clock. `show` only updates widgets
that exist from the start, so a tick costs no mounting and the tables keep their
cursor and scroll position.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.events import Resize
from textual.widgets import Static

from llmgw.api_types import LedgerStatus, Rate, Stats

from .busiest_keys import BusiestKeys
from .metric import MetricPanel, count_text, rate_text
from .rate_sparkline import RateSparkline, seconds_per_bar
from .upstream_table import UpstreamTable

WAITING = (
    "[b]Waiting for the gateway...[/b]\n\n"
    "[dim]The figures appear with the first statistics from its admin socket,\n"
    "and are redrawn every second.[/dim]"
)


def _span(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds >= 120 and seconds % 60 == 0 else f"{seconds} s"


def _rates(snapshot: Stats) -> tuple[int, Rate, int, Rate]:
    """The shortest and the longest span of `rates` (10 s and 60 s, unless the gateway's
    window is shorter), each with its figures."""
    spans = sorted(
        (int(span.removesuffix("s")), figures) for span, figures in snapshot["rates"].items()
    )
    return *spans[0], *spans[-1]


class DashboardPane(Vertical):
    DEFAULT_CSS = """
    DashboardPane {
        height: 1fr;
    }
    DashboardPane > #waiting {
        display: none;
        width: 1fr;
        height: 1fr;
        content-align: center middle;
        text-align: center;
        color: $text-muted;
    }
    DashboardPane.-waiting > #waiting {
        display: block;
    }
    DashboardPane.-waiting > #board {
        display: none;
    }
    DashboardPane #metrics {
        grid-size: 2 2;
        grid-gutter: 0 1;
        height: 30%;
        min-height: 6;
    }
    DashboardPane #now {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    DashboardPane UpstreamTable {
        margin-top: 1;
    }
    DashboardPane #ledger {
        display: none;
        height: 1;
        padding: 0 1;
        color: $text-error;
        text-style: bold;
    }
    DashboardPane #ledger.-shown {
        display: block;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.add_class("-waiting")
        self._snapshot: Stats | None = None

    def compose(self) -> ComposeResult:
        yield Static(WAITING, id="waiting")
        with Vertical(id="board"):
            with Grid(id="metrics"):
                yield MetricPanel("requests", id="metric-requests", classes="-requests")
                yield MetricPanel("tokens", id="metric-tokens", classes="-tokens")
                yield MetricPanel("errors", id="metric-errors", classes="-errors")
                yield MetricPanel("429s", id="metric-limited", classes="-limited")
            yield Static(id="now")
            yield Static(id="ledger")
            yield BusiestKeys()
            yield UpstreamTable()

    @property
    def waiting(self) -> bool:
        """Whether no snapshot has come yet."""
        return self.has_class("-waiting")

    def show(self, snapshot: Stats) -> None:
        """Show one `/stats` snapshot."""
        self._snapshot = snapshot
        self.remove_class("-waiting")
        total, first = snapshot["total"], snapshot["start"]
        short, recent, long, minute = _rates(snapshot)
        for name, now, over_long, series in (
            ("requests", recent["requests_per_s"], minute["requests_per_s"], total["requests"]),
            ("tokens", recent["tokens_per_s"], minute["tokens_per_s"], total["tokens"]),
        ):
            self.query_one(f"#metric-{name}", MetricPanel).show(
                f"{rate_text(now)}/s",
                f"{_span(long)}: {rate_text(over_long)}/s",
                # The newest second is still filling: drawn, it would always be a dip.
                series[:-1],
                first,
            )
        for panel_id, count, lately, series in (
            ("errors", minute["errors"], recent["errors"], total["errors"]),
            ("limited", minute["rate_limited"], recent["rate_limited"], total["rate_limited"]),
        ):
            # Rare events: a count reads better than a rate of 0.02/s.
            self.query_one(f"#metric-{panel_id}", MetricPanel).show(
                f"{count_text(count)} in {_span(long)}",
                f"{_span(short)}: {lately} · {_span(snapshot['seconds'])}: {sum(series)}",
                series[:-1],
                first,
                alert=count > 0,
            )
        self._show_now()
        if self.size.width and not self.query_one(RateSparkline).size.width:
            # The board was hidden until now: its sparklines get their width on the
            # next refresh, and the line says how many seconds make a bar.
            self.call_after_refresh(self._show_now)
        self.query_one(BusiestKeys).show(snapshot["keys"])
        self.query_one(UpstreamTable).show(snapshot["upstreams"])
        self._show_ledger(snapshot["ledger"])

    def on_resize(self, event: Resize) -> None:
        # The seconds a bar stands for depend on the width the sparklines got.
        if self._snapshot is not None:
            self._show_now()

    def _show_ledger(self, ledger: LedgerStatus) -> None:
        """A line that is there only while usage records are at risk: the database
        refuses them (they wait in memory), the buffer overflowed (they were lost), or
        some were set aside because the database refused what they hold."""
        line = self.query_one("#ledger", Static)
        rejected = ledger["rejected"]
        if not (ledger["dropped"] or ledger["last_error"] or rejected):
            line.remove_class("-shown")
            return
        line.add_class("-shown")
        text = (
            f"usage ledger: {ledger['pending']:,} records waiting for the database · "
            f"{ledger['dropped']:,} dropped"
        )
        line.update(text + (f" · {rejected:,} set aside (see the log)" if rejected else ""))

    def _show_now(self) -> None:
        """The line of what is open right now and how to read the charts, whose bars
        are made to stand for the same seconds."""
        snapshot = self._snapshot
        assert snapshot is not None
        total = snapshot["total"]
        charts = f"charts: last {_span(snapshot['seconds'])}"
        sparklines = list(self.query(RateSparkline))
        widths = [s.size.width for s in sparklines if s.size.width]
        if widths:
            # The narrowest decides: a wider one shows an older bar or two at its left.
            per = seconds_per_bar(len(sparklines[0].values), min(widths))
            for sparkline in sparklines:
                sparkline.per_bar = per
            charts += f", {per} s a bar"
        self.query_one("#now", Static).update(
            f"in flight [b]{total['in_flight']}[/b] · streams [b]{total['streams']}[/b] · "
            f"active keys [b]{snapshot['keys_active']}[/b] · {charts}"
        )
