"""`llmgw status`: health and live rates (being built)."""

from __future__ import annotations

import click


@click.command()
def status() -> None:
    """Show health, upstreams and live rates."""
    raise click.ClickException("not built yet")
