"""`llmgw config init|check` (being built)."""

from __future__ import annotations

import click


@click.group()
def config() -> None:
    """Write or check a configuration file."""
