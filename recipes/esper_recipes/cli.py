"""``esper proof`` and ``esper demo``: the recipes' commands, added to the ``esper`` CLI through the
``esper.commands`` entry points (``esper_runtime.cli`` loads them; the recipes stay out of service images).

Each passes its arguments on unchanged to the recipe's own parser, so ``esper proof --help`` and
``python -m esper_recipes.proof --help`` say the same. The working directory is importable, as for ``python -m``,
so that ``--task my_tasks:SPEC`` finds a researcher's ``my_tasks.py`` beside them.
"""

from __future__ import annotations

import os
import sys

import typer

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _importable_cwd() -> None:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())


def proof(ctx: typer.Context) -> None:
    """Does growing with Esper beat not growing? Four arms × N seeds per task, built-in or --task module:SPEC."""
    from .proof import main

    _importable_cwd()
    raise typer.Exit(main(list(ctx.args)))


def demo(ctx: typer.Context) -> None:
    """Watch Esper grow a weak host: the built-in tasks, or --task module:SPEC."""
    from .demo import main

    _importable_cwd()
    raise typer.Exit(main(list(ctx.args)))


proof.context_settings = demo.context_settings = _PASS_THROUGH  # type: ignore[attr-defined]
