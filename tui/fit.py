"""Tables that fit the width they have: their free text (a description, a user, a model
name) gives way, cut with an ellipsis, so that the ids, dates and figures beside it stay
whole and no sideways scrollbar appears at 80 columns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.text import Text

from llmgw.keys import KEY_PREFIX


@dataclass(frozen=True)
class Column:
    """A column of a table with a wide layout and a narrow one (80 columns)."""

    key: str
    wide: str  # the header in the wide layout
    narrow: str | None  # ... and in the narrow one; None: not shown there
    right: bool = True


def shown(columns: Iterable[Column], wide: bool) -> list[tuple[str, str, bool]]:
    """(key, header, right-aligned) of each of `columns` the layout shows."""
    return [
        (c.key, header, c.right)
        for c in columns
        if (header := c.wide if wide else c.narrow) is not None
    ]


def cut_to_fit(
    headers: Sequence[Text],
    rows: Sequence[Sequence[Text]],
    room: int,
    padding: int,
    flexible: Iterable[int],
    least: int = 1,
) -> bool:
    """Cut the columns `flexible` (indexes; the first gives way first, down to `least`
    cells) so that the table, `padding` cells either side of each column, is at most
    `room` cells wide. False if it cannot be; the flexible columns are then cut all they
    can."""
    widths = [max([h.cell_len, *(row[i].cell_len for row in rows)]) for i, h in enumerate(headers)]
    over = sum(widths) + 2 * padding * len(widths) - room
    for i in flexible:
        if over <= 0:
            break
        give = min(over, widths[i] - least)
        if give <= 0:
            continue
        widths[i] -= give
        over -= give
        for text in (headers[i], *(row[i] for row in rows)):
            text.truncate(widths[i], overflow="ellipsis")
    return over <= 0


def short_prefix(prefix: str) -> str:
    """A key's display prefix without the part every key shares: `…Qx3v`."""
    return "…" + prefix[len(KEY_PREFIX) :] if prefix.startswith(KEY_PREFIX) else prefix
