"""The ``esper`` command: serve a service, manage local infrastructure, inspect the topic catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from esper_contracts import TOPICS

from .registry import IN_TRAINER_PROCESS, KNOWN_SERVICES, UnknownServiceError, load_factory, runnable_services

app = typer.Typer(help="Esper: grow neural networks while they train.", no_args_is_help=True)
infra_app = typer.Typer(help="Start, stop and inspect local Pulsar, PostgreSQL, S3 and Prometheus.",
                        no_args_is_help=True)
app.add_typer(infra_app, name="infra")
console = Console(width=None)


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(KNOWN_SERVICES)}")],
    config: Annotated[Path | None, typer.Option(help="YAML settings file (else $ESPER_CONFIG)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port for the API, /healthz and /metrics")] = None,
    bus_url: Annotated[str | None, typer.Option(help="memory:// or pulsar://host:port")] = None,
) -> None:
    """Run one service in the foreground until SIGTERM/SIGINT."""
    try:
        factory = load_factory(service)
    except UnknownServiceError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    factory(config_file=config, port=port, bus_url=bus_url).run()


@app.command()
def services() -> None:
    """List the platform's services and whether each can be started here."""
    found = runnable_services()
    table = Table("service", "runnable")
    for name in KNOWN_SERVICES:
        state = "yes" if name in found else "in the trainer process" if name in IN_TRAINER_PROCESS else "not yet"
        table.add_row(name, state)
    console.print(table)


@app.command()
def topics() -> None:
    """Print the topic catalogue: who speaks what."""
    table = Table()
    table.add_column("topic", no_wrap=True)
    for column in ("payload", "producers", "consumers", "ordered"):
        table.add_column(column)
    for spec in TOPICS.values():
        table.add_row(spec.name, spec.payload.__name__, ", ".join(map(spec.label, spec.producers)),
                      ", ".join(map(spec.label, spec.consumers)), "by key" if spec.ordered_by_key else "")
    console.print(table)


def _names(names: list[str] | None) -> list[str] | None:
    return list(names) if names else None


@infra_app.command("up")
def infra_up(names: Annotated[list[str] | None, typer.Argument(help="pulsar postgres s3 prometheus")] = None) -> None:
    """Start local services (all by default); already-running ones are left as they are."""
    from . import infra

    infra.up(_names(names))


@infra_app.command("down")
def infra_down(names: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Stop local services and remove their throwaway data."""
    from . import infra

    infra.down(_names(names))


@infra_app.command("status")
def infra_status() -> None:
    """Show which local services are running, and where."""
    from . import infra

    running = infra.status()
    urls = infra.endpoints()
    table = Table("service", "state", "endpoint")
    for name, ok in running.items():
        endpoint = next((v for k, v in urls.items() if k.startswith(name)), "")
        table.add_row(name, "[green]running[/green]" if ok else "[dim]stopped[/dim]", endpoint)
    console.print(table)
