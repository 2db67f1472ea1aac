"""``esper train``: the trainer's command, added to the ``esper`` CLI through the ``esper.commands`` entry points."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def train(
    config: Annotated[Path | None, typer.Argument(help="The run YAML (tolaria, kasmina, tamiyo, model, platform)")]
    = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory from its last good checkpoint")]
    = None,
    kernels: Annotated[str, typer.Option(help="Standalone only: compiled (the embedded platform) or eager")]
    = "compiled",
    epochs: Annotated[int | None, typer.Option(help="Override tolaria.epochs")] = None,
    quiet: Annotated[bool, typer.Option(help="No per-epoch lines, no progress bar")] = False,
) -> None:
    """Train one run from a run config: standalone in this process, or on the platform its `platform:` section names.

    Exit codes: 0 the run finished; 1 an unexpected error; 2 the config (or the model or task it names) cannot be
    used; 3 a platform URL did not answer in time; 4 training diverged. Nothing is written on 2 or 3.
    """
    from .train import main

    console = Console(highlight=False)
    if kernels not in ("compiled", "eager"):
        console.print(f"error: --kernels must be compiled or eager, not {kernels!r}")
        raise typer.Exit(2)
    code = main(config, resume=resume, kernels=kernels, epochs=epochs, quiet=quiet, console=console)
    raise typer.Exit(code)
