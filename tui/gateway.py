"""How a widget reaches the gateway: the app's one `AdminClient` (the admin socket),
whether it is connected, and where a failed worker's error goes."""

from __future__ import annotations

from typing import Protocol, cast

from textual.dom import DOMNode
from textual.worker import Worker, WorkerState

from llmgw.admin_client import AdminClient


class _GatewayApp(Protocol):
    client: AdminClient
    connected: bool | None


def client(node: DOMNode) -> AdminClient:
    """The admin client of `node`'s app; call it in workers only, never in handlers."""
    return cast(_GatewayApp, node.app).client


def connected(node: DOMNode) -> bool:
    """Whether the app reaches the gateway now (before that, a fetch can only fail)."""
    return cast(_GatewayApp, node.app).connected is True


def relay_failure(node: DOMNode, event: Worker.StateChanged) -> None:
    """`Worker.StateChanged` does not bubble: hand a failure to the app's one notice."""
    if event.state is WorkerState.ERROR and node is not node.app:
        node.app.post_message(Worker.StateChanged(event.worker, event.state))
