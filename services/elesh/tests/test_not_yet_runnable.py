"""elesh has no process yet: asking to serve it must say so plainly instead of pretending to run."""

from __future__ import annotations

from typer.testing import CliRunner

import esper_elesh
from esper_runtime.cli import app


def test_package_states_its_role() -> None:
    assert esper_elesh.__doc__ and "elesh" in esper_elesh.__doc__


def test_serve_refuses_with_the_reason() -> None:
    result = CliRunner().invoke(app, ["serve", "elesh"])
    assert result.exit_code == 2
    assert "no runnable process yet" in result.output and "services/elesh/README.md" in result.output
