"""One figure of the dashboard: its current value, and its last minutes as a sparkline."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from .rate_sparkline import RateSparkline


def count_text(count: int) -> str:
    """A count in at most four digits."""
    return str(count) if count < 10_000 else f"{count / 1000:.0f}k"


def rate_text(per_second: float | None) -> str:
    """A rate short enough for a narrow column, with no more decimals than it needs."""
    if per_second is None:
        return "-"
    if per_second == 0:
        return "0"
    if per_second < 10:
        return f"{per_second:.2f}"
    if per_second < 100:
        return f"{per_second:.1f}"
    return f"{per_second:,.0f}"


class MetricPanel(Horizontal):
    """A bordered panel: title on the border, the sparkline, and the value to its right.

    The classes `-requests`, `-tokens`, `-errors` and `-limited` pick the colours;
    `-alert` (set by `show`) marks a panel whose value wants attention.
    """

    DEFAULT_CSS = """
    MetricPanel {
        height: 1fr;
        min-height: 3;
        border: round $primary 60%;
        border-title-color: $text;
        border-subtitle-color: $text-muted;
        padding: 0 1;
    }
    /* One width for every value, so that the sparklines are (nearly) as wide. */
    MetricPanel > .value {
        width: 13;
        height: 1fr;
        text-wrap: nowrap;
        text-overflow: ellipsis;
        padding-left: 1;
        content-align: right middle;
        text-style: bold;
        color: $text-primary;
    }
    MetricPanel.-tokens > .value { color: $text-accent; }
    MetricPanel.-tokens > RateSparkline > .sparkline--max-color { color: $accent; }
    MetricPanel.-tokens > RateSparkline > .sparkline--min-color { color: $accent 30%; }
    MetricPanel.-errors > .value { color: $text-error; }
    MetricPanel.-errors > RateSparkline > .sparkline--max-color { color: $error; }
    MetricPanel.-errors > RateSparkline > .sparkline--min-color { color: $error 30%; }
    MetricPanel.-limited > .value { color: $text-warning; }
    MetricPanel.-limited > RateSparkline > .sparkline--max-color { color: $warning; }
    MetricPanel.-limited > RateSparkline > .sparkline--min-color { color: $warning 30%; }
    MetricPanel.-errors.-alert { border: round $error; }
    MetricPanel.-limited.-alert { border: round $warning; }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = title

    def compose(self) -> ComposeResult:
        yield RateSparkline()
        yield Static("-", classes="value")

    def show(
        self,
        value: str,
        note: str,
        series: Sequence[float],
        first: int,
        *,
        alert: bool = False,
    ) -> None:
        """`value` big on the right, `note` under the border, `series` (one value a
        second from epoch second `first`) as the sparkline."""
        self.query_one(".value", Static).update(value)
        self.border_subtitle = note
        self.query_one(RateSparkline).plot(series, first)
        self.set_class(alert, "-alert")

    @property
    def value(self) -> str:
        """The value shown now (as text)."""
        return str(self.query_one(".value", Static).visual)
