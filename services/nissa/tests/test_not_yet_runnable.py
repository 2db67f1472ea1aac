"""nissa has no process yet: asking to serve it must say so plainly instead of pretending to run."""

from __future__ import annotations

from typer.testing import CliRunner

import esper_nissa
from esper_runtime.cli import app


def test_package_states_its_role() -> None:
    assert esper_nissa.__doc__ and "nissa" in esper_nissa.__doc__


def test_serve_refuses_with_the_reason() -> None:
    result = CliRunner().invoke(app, ["serve", "nissa"])
    assert result.exit_code == 2
    assert "no runnable process yet" in result.output and "services/nissa/README.md" in result.output
