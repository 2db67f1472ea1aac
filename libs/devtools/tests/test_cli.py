"""``esper infra`` reaches the ``esper`` command through the entry point, and speaks for the infra/ scripts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from esper_devtools import cli as devtools_cli
from esper_devtools import infra
from esper_runtime.cli import app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_esper_has_the_infra_commands_when_devtools_is_installed() -> None:
    out = CliRunner().invoke(app, ["infra", "--help"])
    assert out.exit_code == 0
    assert all(command in out.output for command in ("up", "down", "status"))


def test_status_shows_every_service_and_where_it_would_listen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ports nobody listens on and an empty state folder: every service is stopped, whatever runs here.
    ports = {name: free_port() for name in ("ESPER_PULSAR_PORT", "ESPER_PULSAR_HTTP_PORT", "ESPER_PG_PORT",
                                            "ESPER_S3_PORT", "ESPER_PROM_PORT")}
    for name, port in ports.items():
        monkeypatch.setenv(name, str(port))
    monkeypatch.setenv("ESPER_INFRA_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(devtools_cli, "console", Console(width=200))

    out = CliRunner().invoke(app, ["infra", "status"])

    assert out.exit_code == 0, out.output
    rows = {cells[1].strip(): [c.strip() for c in cells[2:-1]]
            for cells in (line.split("│") for line in out.output.splitlines() if line.startswith("│"))}
    assert rows == {
        "pulsar": ["stopped", f"pulsar://127.0.0.1:{ports['ESPER_PULSAR_PORT']}"],
        "postgres": ["stopped", f"postgresql+psycopg://esper:esper@127.0.0.1:{ports['ESPER_PG_PORT']}/esper"],
        "s3": ["stopped", f"http://127.0.0.1:{ports['ESPER_S3_PORT']}"],
        "prometheus": ["stopped", f"http://127.0.0.1:{ports['ESPER_PROM_PORT']}"],
    }


def test_an_unknown_service_is_refused_before_any_script_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_REPO_ROOT", "/nonexistent")  # a script run would fail on this, not on the name
    with pytest.raises(infra.InfraError, match="unknown service"):
        infra.up(["pulsar", "nosuch"])
    out = CliRunner().invoke(app, ["infra", "down", "nosuch"])
    assert out.exit_code != 0 and isinstance(out.exception, infra.InfraError)
