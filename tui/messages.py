"""The messages workers post: data from the gateway, and the state of the connection.

Workers fetch and post; only `@on` handlers change widgets.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from llmgw.api_types import Stats


@dataclass
class StatsTick(Message):
    """One snapshot of `/stats`, pushed every second by `/stats/stream`."""

    snapshot: Stats


@dataclass
class ConnectionChanged(Message):
    """The gateway was reached again (`connected`), or lost; `detail` says why."""

    connected: bool
    detail: str = ""
