"""`BarChart`: a horizontal bar chart of named figures, drawn with block characters.

The length of a bar carries the figure, in eighths of a cell (U+2588..U+258F), so the
chart reads the same on a 16-colour terminal, in a monochrome one, and in a screenshot;
colour only adds emphasis. Every bar is labelled with its figure.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

# A bar's last cell, by eighths: "" for a whole number of cells.
_EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
_FULL = "█"


def bar(value: float, peak: float, width: int) -> str:
    """A bar `width` cells long at `peak`; any positive value shows at least a sliver,
    so a small group never looks like an empty one."""
    if value <= 0 or peak <= 0 or width <= 0:
        return ""
    eighths = max(1, round(min(value / peak, 1.0) * width * 8))
    full, rest = divmod(eighths, 8)
    return _FULL * full + _EIGHTHS[rest]


class BarChart(Widget):
    """A title line, then one labelled bar a line; as tall as its bars."""

    DEFAULT_CSS = """
    BarChart {
        height: auto;
        padding: 0 1;
    }
    BarChart > .bar-chart--title {
        text-style: bold;
    }
    BarChart > .bar-chart--bar {
        color: $accent;
    }
    BarChart > .bar-chart--empty {
        color: $text-muted;
        text-style: italic;
    }
    """
    COMPONENT_CLASSES = {
        "bar-chart--title",
        "bar-chart--bar",
        "bar-chart--empty",
    }
    MAX_LABEL = 28

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._title = ""
        self._bars: list[tuple[str, float]] = []
        self._empty = "nothing to show"

    @property
    def bars(self) -> list[tuple[str, float]]:
        return list(self._bars)

    def plot(self, title: str, bars: Sequence[tuple[str, float]], *, empty: str = "") -> None:
        """Show `bars` (label, figure) in the given order; `empty` says why there are none."""
        self._title = title
        self._bars = list(bars)
        self._empty = empty or "nothing to show"
        self.refresh(layout=True)  # the height follows the number of bars

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 1 + max(1, len(self._bars))

    def render(self) -> Text:
        width = self.content_size.width
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(self._title, style=self.get_component_rich_style("bar-chart--title"))
        if not self._bars:
            text.append("\n")
            text.append(self._empty, style=self.get_component_rich_style("bar-chart--empty"))
            return text
        figures = [_figure(value) for _, value in self._bars]
        figure_width = max(len(f) for f in figures)
        label_width = min(max(len(label) for label, _ in self._bars), self.MAX_LABEL, width // 3)
        bar_width = max(1, width - label_width - figure_width - 2)
        peak = max(value for _, value in self._bars)
        bar_style = self.get_component_rich_style("bar-chart--bar")
        for (label, value), figure in zip(self._bars, figures, strict=True):
            text.append("\n")
            text.append(_fit(label, label_width) + " ")
            text.append(bar(value, peak, bar_width), style=bar_style)
            # The figure right after its bar: the eye need not travel across the chart.
            text.append(" " + figure)
        return text


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _fit(label: str, width: int) -> str:
    if len(label) <= width:
        return label.ljust(width)
    return label[: max(0, width - 1)] + "…"
