"""`llmgw usage`: usage statistics (being built)."""

from __future__ import annotations

import click


@click.command()
def usage() -> None:
    """Show usage statistics."""
    raise click.ClickException("not built yet")
