"""How a widget reaches the gateway: the app's one `AdminClient` (the admin socket)."""

from __future__ import annotations

from typing import Protocol, cast

from textual.dom import DOMNode

from llmgw.admin_client import AdminClient


class _HasClient(Protocol):
    client: AdminClient


def client(node: DOMNode) -> AdminClient:
    """The admin client of `node`'s app; call it in workers only, never in handlers."""
    return cast(_HasClient, node.app).client
