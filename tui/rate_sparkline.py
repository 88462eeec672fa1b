"""A sparkline of a per-second series, fitted to whatever width it has.

Textual's `Sparkline` splits its data into one bucket per column, counting from the
first value: fed a sliding window, every bar would change every second and the whole
line would shimmer. Here a bar is a fixed run of whole epoch seconds (`second // per`),
so a bar keeps its height once its seconds are over and the line only moves on when a
new bar begins. The fit happens at render time, so a resize never shows a stale fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from textual.app import RenderResult
from textual.reactive import reactive
from textual.widgets import Sparkline


def seconds_per_bar(seconds: int, width: int) -> int:
    """The seconds a bar must stand for, for `width` columns to hold `seconds`."""
    return max(1, math.ceil(seconds / max(width, 1)))


class RateSparkline(Sparkline):
    DEFAULT_CSS = """
    RateSparkline {
        width: 1fr;
        height: 1fr;
        min-height: 1;
    }
    """

    per_bar = reactive(0)
    """The seconds a bar stands for; 0: as few as the width allows. Sparklines shown
    together share one, so their bars line up even when their widths differ a little."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__([], id=id, classes=classes)
        self._values: list[float] = []
        self._first = 0

    def plot(self, values: Sequence[float], first: int) -> None:
        """Show `values`, one a second, the first of them for epoch second `first`."""
        self._values = list(values)
        self._first = first
        self.refresh()

    @property
    def values(self) -> list[float]:
        """The series last plotted (what the bars are made of)."""
        return self._values

    def bars(self, width: int) -> list[float]:
        """One value a column: the mean of the seconds of each bar that the series
        holds, so the newest bar, still filling, is not drawn as a dip."""
        values, first = self._values, self._first
        if width < 1 or not values:
            return []
        per = self.per_bar or seconds_per_bar(len(values), width)
        last = first + len(values) - 1
        newest = last // per
        bars = []
        for bar in range(newest - width + 1, newest + 1):
            lo, hi = max(bar * per, first), min(bar * per + per - 1, last)
            held = values[lo - first : hi - first + 1] if lo <= hi else []
            bars.append(sum(held) / len(held) if held else 0.0)
        return bars

    def render(self) -> RenderResult:
        # Each bar is paired with a zero: the renderable scales from the smallest value
        # it is given, and a rate must be drawn from zero (a steady 100/s is not a flat
        # line at the bottom). Its buckets are exactly two wide, so the default summary,
        # `max`, gives back each bar's own value.
        paired = [v for bar in self.bars(self.size.width) for v in (bar, 0.0)]
        self.set_reactive(Sparkline.data, paired)
        return super().render()
