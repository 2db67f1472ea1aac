"""``esper infra up|down|status``: local Pulsar, PostgreSQL, S3 and Prometheus (added to ``esper`` by entry point)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import infra

infra_app = typer.Typer(help="Start, stop and inspect local Pulsar, PostgreSQL, S3 and Prometheus.",
                        no_args_is_help=True)
console = Console(width=None)


def _names(names: list[str] | None) -> list[str] | None:
    return list(names) if names else None


@infra_app.command("up")
def infra_up(names: Annotated[list[str] | None, typer.Argument(help="pulsar postgres s3 prometheus")] = None) -> None:
    """Start local services (all by default); already-running ones are left as they are."""
    infra.up(_names(names))


@infra_app.command("down")
def infra_down(names: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Stop local services and remove their throwaway data."""
    infra.down(_names(names))


@infra_app.command("status")
def infra_status() -> None:
    """Show which local services are running, and where."""
    running = infra.status()
    urls = infra.endpoints()
    table = Table("service", "state", "endpoint")
    for name, ok in running.items():
        endpoint = next((v for k, v in urls.items() if k.startswith(name)), "")
        table.add_row(name, "[green]running[/green]" if ok else "[dim]stopped[/dim]", endpoint)
    console.print(table)
