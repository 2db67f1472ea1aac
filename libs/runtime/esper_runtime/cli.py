"""The ``esper`` command: serve a service, list the services, inspect the topic catalogue.

Other installed packages add sub-commands through the ``esper.commands`` entry-point group. That is how
development tools stay out of the runtime every service image ships: ``esper-devtools`` (installed by
``make dev``, never by an image) adds ``esper infra up|down|status``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from esper_contracts import TOPICS

from .auth import AuthConfigError
from .registry import IN_TRAINER_PROCESS, KNOWN_SERVICES, UnknownServiceError, load_factory, runnable_services

#: The entry-point group whose members become ``esper <name>``: a ``typer.Typer`` (a group of sub-commands) or a
#: function (one command, its parameters annotated for Typer).
COMMAND_GROUP = "esper.commands"

app = typer.Typer(help="Esper: grow neural networks while they train.", no_args_is_help=True)
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
    try:
        factory(config_file=config, port=port, bus_url=bus_url).run()
    except AuthConfigError as exc:  # production without an identity provider: say why, start nothing
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


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



def add_installed_commands(target: typer.Typer, found: Iterable[EntryPoint] | None = None) -> list[str]:
    """Add every ``esper.commands`` entry point (or those in ``found``) to ``target``; returns the names added.

    One that cannot be loaded, is neither a Typer app nor a function, or would shadow a command is skipped with
    a warning on stderr: an optional tool must never stop ``esper serve`` from starting.
    """
    taken = {c.name or (c.callback.__name__ if c.callback else "") for c in target.registered_commands}
    taken |= {g.name for g in target.registered_groups if g.name}
    added = []
    for point in entry_points(group=COMMAND_GROUP) if found is None else found:
        try:
            commands = point.load()
        except Exception as exc:
            print(f"esper: skipping command {point.name!r} ({point.value}): {exc!r}", file=sys.stderr)
            continue
        if not (isinstance(commands, typer.Typer) or callable(commands)) or point.name in taken:
            why = "is already a command" if point.name in taken else "is neither a typer.Typer nor a function"
            print(f"esper: skipping command {point.name!r} ({point.value}): it {why}", file=sys.stderr)
            continue
        if isinstance(commands, typer.Typer):  # a group: esper <name> <sub-command> ...
            target.add_typer(commands, name=point.name)
        else:  # one command whose parameters are its arguments and options: esper <name> ARGS
            # A function may carry Click context settings, e.g. to pass its arguments to its own parser.
            target.command(name=point.name, context_settings=getattr(commands, "context_settings", None))(commands)
        taken.add(point.name)
        added.append(point.name)
    return added


add_installed_commands(app)
