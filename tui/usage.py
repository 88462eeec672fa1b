"""The usage pane: `GET /usage` per user, key, model, endpoint or day over the last 1 to 90 days,
as a table with a TOTAL line and as a bar chart of requests or tokens per group.

The figures and their definitions are the gateway's (`llmgw.rollups`); this pane only
chooses the window and the grouping, and lays the answer out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.message import Message
from textual.widgets import DataTable, Label, Select
from textual.worker import Worker

from llmgw.api_types import UsageFigures, UsageGroup, UsageReport

from .bar_chart import BarChart
from .fit import cut_to_fit, short_prefix
from .gateway import client, connected, relay_failure

GROUPINGS = ("user", "key", "model", "endpoint", "day")
DAYS = (1, 7, 30, 90)
Figure = Literal[
    "requests",
    "errors",
    "rate_limited",
    "prompt_tokens",
    "completion_tokens",
    "latency_p50_ms",
    "latency_p95_ms",
]
# The figures of a group, in table order: (field of /usage, column heading).
FIGURES: tuple[tuple[Figure, str], ...] = (
    ("requests", "requests"),
    ("errors", "errors"),
    ("rate_limited", "429s"),
    ("prompt_tokens", "prompt"),
    ("completion_tokens", "completion"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p95_ms", "p95 ms"),
)
# What the chart can show: (field of /usage, title).
Metric = Literal["requests", "total_tokens"]
METRICS: dict[Metric, str] = {
    "requests": "Requests",
    "total_tokens": "Tokens (prompt + completion)",
}
DAYS_KEYS = Binding.Group("Days")


@dataclass
class UsageLoaded(Message):
    """The body of `GET /usage`; its `by` and `days` say which choice it answers."""

    usage: UsageReport


class UsagePane(Vertical):
    DEFAULT_CSS = """
    UsagePane {
        height: 1fr;
    }
    UsagePane > #usage-controls {
        height: auto;
        padding: 0 1;
    }
    UsagePane > #usage-controls > Label {
        padding: 0 1;
    }
    UsagePane > #usage-controls > Select {
        width: 14;
    }
    UsagePane > #usage-controls > #usage-since {
        color: $text-muted;
    }
    UsagePane > DataTable {
        height: auto;
        max-height: 60%;
        /* The columns leave it room (`_fill_table`): it must not take much. */
        scrollbar-size-vertical: 1;
    }
    UsagePane > #usage-chart-box {
        height: 1fr;
        border-top: solid $foreground 30%;
    }
    """
    BINDINGS = [
        Binding("b", "next_grouping", "Group by"),
        # One footer entry for both (`+ - Days`), so that help and quit fit at 80 columns.
        Binding("plus,equals_sign", "step_days(1)", "More days", key_display="+", group=DAYS_KEYS),
        Binding("minus", "step_days(-1)", "Fewer days", key_display="-", group=DAYS_KEYS),
        Binding("m", "chart('total_tokens')", "Chart tokens"),
        Binding("m", "chart('requests')", "Chart requests"),
        Binding("r", "refresh", "Refresh"),
    ]
    REFRESH_TICKS = 30  # the rollups change by the hour; every 30 s is fresh enough

    def __init__(self) -> None:
        super().__init__()
        self._usage: UsageReport | None = None
        self._metric: Metric = "requests"
        self._ticks = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="usage-controls"):
            yield Label("By")
            yield Select(
                [(g, g) for g in GROUPINGS], value="user", allow_blank=False, compact=True,
                id="usage-by",
            )  # fmt: skip
            yield Label("over the last")
            yield Select(
                [(f"{d} day" + "s" * (d > 1), d) for d in DAYS], value=7, allow_blank=False,
                compact=True, id="usage-days",
            )  # fmt: skip
            yield Label(id="usage-since")
        yield DataTable(id="usage-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="usage-chart-box"):
            yield BarChart(id="usage-chart")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        relay_failure(self, event)

    def reload(self) -> None:
        """Fetch the chosen grouping and window anew."""
        # Before the app has reached the gateway a fetch could only fail; the app reloads
        # every pane as soon as it connects.
        if connected(self):
            self.fetch_usage(*self.choice)

    def tick(self) -> None:
        """Called every second while the gateway is connected."""
        self._ticks += 1
        if self._ticks % self.REFRESH_TICKS == 0:
            self.reload()

    @property
    def choice(self) -> tuple[str, int]:
        """The grouping and the number of days chosen."""
        by: Select[str] = self.query_one("#usage-by", Select)
        days: Select[int] = self.query_one("#usage-days", Select)
        # Neither allows a blank, so both always hold a choice.
        return str(by.value), int(str(days.value))

    @work(exclusive=True, group="usage", exit_on_error=False)
    async def fetch_usage(self, by: str, days: int) -> None:
        self.post_message(UsageLoaded(await client(self).usage(days, by)))

    # --- handlers ---------------------------------------------------------------------

    @on(Select.Changed, "#usage-by, #usage-days")
    def choice_changed(self) -> None:
        self.reload()

    @on(UsageLoaded)
    def show_usage(self, event: UsageLoaded) -> None:
        event.stop()
        usage = event.usage
        if (usage["by"], usage["days"]) != self.choice:
            return  # the answer to an earlier choice, overtaken by the user
        same_grouping = self._usage is not None and self._usage["by"] == usage["by"]
        self._usage = usage
        self.query_one("#usage-since", Label).update(f"since {_since(usage['since'])}")
        self._fill_table(keep_cursor=same_grouping)
        self._plot()

    def on_resize(self, event: Resize) -> None:
        if self._usage is not None:
            self._fill_table(keep_cursor=True)

    def action_next_grouping(self) -> None:
        by, _ = self.choice
        following = GROUPINGS[(GROUPINGS.index(by) + 1) % len(GROUPINGS)]
        self.query_one("#usage-by", Select).value = following

    def action_step_days(self, step: int) -> None:
        _, days = self.choice
        index = min(max(DAYS.index(days) + step, 0), len(DAYS) - 1)
        self.query_one("#usage-days", Select).value = DAYS[index]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # "m" charts whichever figure is not charted now: the footer names that one.
        if action == "chart":
            return parameters[0] != self._metric
        return True

    def action_chart(self, metric: str) -> None:
        self._metric = next(m for m in METRICS if m == metric)  # the bindings name one
        self.refresh_bindings()
        self._plot()

    def action_refresh(self) -> None:
        self.reload()

    # --- layout -----------------------------------------------------------------------

    def _fill_table(self, *, keep_cursor: bool) -> None:
        """The table of `self._usage`, its names cut to fit the width: the figures stay
        whole (a key is its prefix without `sk-internal-` when that helps)."""
        assert self._usage is not None
        by = self._usage["by"]
        table = self.query_one("#usage-table", DataTable)
        row = table.cursor_row
        first = {"key": ("key", "user"), "day": ("day (UTC)",)}.get(by, (by,))
        # Room for the vertical scrollbar too, should the rows outgrow the table's height.
        room = table.size.width - table.styles.scrollbar_size_vertical
        for short in (False, True):
            headers = [Text(h) for h in first]
            headers += [Text(heading, justify="right") for _, heading in FIGURES]
            rows = [
                [*_names(entry, by, short), *_figures(entry)] for entry in _entries(self._usage)
            ]
            total = [Text("TOTAL", style="bold"), *[Text("") for _ in first[1:]]]
            rows.append([*total, *_figures(self._usage["total"], style="bold")])
            # A key keeps its whole prefix if all fits so; then the user gives way before
            # the key. Before the first layout there is no width to fit: a resize follows.
            flexible = (0,) if by != "key" else (1, 0) if short else ()
            fits = room <= 0 or cut_to_fit(headers, rows, room, table.cell_padding, flexible)
            if fits or short or by != "key":
                break
        table.clear(columns=True)
        columns = [*first, *(field for field, _ in FIGURES)]
        for column, heading in zip(columns, headers, strict=True):
            table.add_column(heading, key=column)
        for index, cells in enumerate(rows):
            table.add_row(*cells, key="total" if index == len(rows) - 1 else str(index))
        if keep_cursor:
            table.move_cursor(row=min(row, table.row_count - 1), animate=False)

    def _plot(self) -> None:
        chart = self.query_one("#usage-chart", BarChart)
        if self._usage is None:
            return
        by, days = self._usage["by"], self._usage["days"]
        title = f"{METRICS[self._metric]} per {by}, last {days} day" + "s" * (days > 1)
        bars = [(_bar_label(e, by), float(e[self._metric])) for e in _entries(self._usage)]
        chart.plot(title, bars, empty="no requests in this window")


def _entries(usage: UsageReport) -> list[UsageGroup]:
    """The groups of `usage`; by day, every date of the window, the quiet ones as zeros
    (`/usage` leaves them out), so that the chart's time axis runs evenly."""
    if usage["by"] != "day":
        return list(usage["data"])
    known = {str(entry["group"]): entry for entry in usage["data"]}  # each a date
    first = date.fromisoformat(usage["since"][:10])
    # The window ends in the current hour, `days` days after it starts.
    window = [(first + timedelta(days=i)).isoformat() for i in range(usage["days"] + 1)]
    return [known.get(day) or _quiet(day) for day in sorted({*window, *known})]


def _quiet(day: str) -> UsageGroup:
    """A day without requests."""
    return UsageGroup(
        group=day,
        requests=0,
        errors=0,
        rate_limited=0,
        prompt_tokens=0,
        completion_tokens=0,
        total_tokens=0,
        latency_mean_ms=None,
        latency_p50_ms=None,
        latency_p95_ms=None,
    )


def _group_name(entry: UsageGroup, by: str) -> str:
    group = entry["group"]
    if group is None and by == "endpoint":
        # Hours whose ledger rows were pruned before the rollups kept the endpoint.
        return "(unknown)"
    if group is None:  # requests that never named a model (a 404, a bad body)
        return f"(no {by})"
    return str(group)


def _key_name(entry: UsageGroup, short: bool = False) -> str:
    # by=key only (the groups of other groupings have no key fields).
    key_id = entry.get("key_id")
    if key_id is None:
        return "(no key)"
    prefix = entry.get("key_prefix")
    if not prefix:  # deleted since
        return f"key {key_id}"
    return short_prefix(prefix) if short else prefix


def _names(entry: UsageGroup, by: str, short: bool) -> list[Text]:
    """The cells that name a group: its key and user, or its user, model, endpoint or day."""
    if by == "key":
        names = [_key_name(entry, short), entry.get("user_id") or ""]
    else:
        names = [_group_name(entry, by)]
    # Text, not str: a str cell is read as markup, and names are free text.
    return [Text(name, no_wrap=True) for name in names]


def _bar_label(entry: UsageGroup, by: str) -> str:
    if by == "key":
        return f"{entry.get('user_id') or '?'} {_key_name(entry)}"
    return _group_name(entry, by)


def _figures(entry: UsageFigures, style: str = "") -> list[Text]:
    cells = []
    for field, _ in FIGURES:
        value = entry[field]
        if value is None:
            shown = "–"  # no latency: every request of the group was a 429
        elif field.startswith("latency"):
            shown = f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
        else:
            shown = f"{value:,}"
        cells.append(Text(shown, style=style, justify="right"))
    return cells


def _since(iso: str) -> str:
    """`2026-11-20T18:00:00.000Z` as `2026-11-20 18:00 UTC`: the window starts on the hour."""
    return f"{iso[:10]} {iso[11:16]} UTC" if len(iso) >= 16 else iso
