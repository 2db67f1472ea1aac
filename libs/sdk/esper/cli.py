"""``esper train``: the trainer's command, added to the ``esper`` CLI through the ``esper.commands`` entry points."""

from __future__ import annotations

import os
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
    nproc_per_node: Annotated[int, typer.Option(help="Train with this many ranks on this machine (DDP)", min=1)]
    = 1,
) -> None:
    """Train one run from a run config: standalone in this process, or on the platform its `platform:` section names.

    With --nproc-per-node N (or under torchrun) N ranks train one model: rank 0 talks to the control plane and
    writes the run directory. Exit codes: 0 the run finished; 1 an unexpected error; 2 the config (or the model or
    task it names) cannot be used, or the ranks were started differently; 3 a platform URL did not answer in time;
    4 training diverged; 5 another rank failed or stopped answering (resume with --resume). Nothing is written on
    2 or 3.
    """
    console = Console(highlight=False)
    if kernels not in ("compiled", "eager"):
        console.print(f"error: --kernels must be compiled or eager, not {kernels!r}")
        raise typer.Exit(2)
    if nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:  # the launcher; each rank runs the branch below
        from .launch import launch

        args = [str(config)] if config is not None else []
        args += ["--resume", str(resume)] if resume is not None else []
        args += ["--kernels", kernels] + (["--epochs", str(epochs)] if epochs is not None else [])
        raise typer.Exit(launch(args + (["--quiet"] if quiet else []), nproc_per_node))
    from .train import main

    code = main(config, resume=resume, kernels=kernels, epochs=epochs, quiet=quiet, console=console)
    raise typer.Exit(code)


if __name__ == "__main__":  # ``python -m esper.cli CONFIG``: one rank under torchrun or esper's own launcher
    typer.run(train)
