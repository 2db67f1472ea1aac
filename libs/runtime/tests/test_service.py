"""The shared service skeleton: settings precedence, health, metrics, structured logs, the CLI."""

from __future__ import annotations

import json
import logging
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from esper_contracts import TOPICS, Topic
from esper_runtime import Service, ServiceSettings, SettingsFileError, cli, load_settings
from esper_runtime.cli import app
from esper_runtime.logs import JsonFormatter


def test_settings_precedence_yaml_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "svc.yaml"
    cfg.write_text("service_name: urza\nport: 9100\nbus_url: pulsar://127.0.0.1:16650\n")
    monkeypatch.setenv("ESPER_PORT", "9200")
    settings = load_settings(ServiceSettings, cfg)
    assert settings.service_name == "urza"  # from the file
    assert settings.bus_url == "pulsar://127.0.0.1:16650"
    assert settings.port == 9200  # the environment wins over the file


def test_settings_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SettingsFileError, match="not found"):
        load_settings(ServiceSettings, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: [1, 2\n")
    with pytest.raises(SettingsFileError, match="not valid YAML"):
        load_settings(ServiceSettings, bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("prot: 80\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(ServiceSettings, unknown)


def test_health_and_metrics() -> None:
    svc = Service(ServiceSettings(service_name="probe"))
    state = {"ready": True}
    svc.add_health_check("dependency", lambda: state["ready"])
    svc.add_health_view("queue", lambda: {"depth": 3})
    with pytest.raises(ValueError, match="taken"):
        svc.add_health_view("status", dict)
    with TestClient(svc.app) as client:
        ok = client.get("/healthz")
        assert ok.status_code == 200 and ok.json()["checks"] == {"dependency": True}
        assert ok.json()["queue"] == {"depth": 3}
        state["ready"] = False
        assert client.get("/healthz").status_code == 503
        metrics = client.get("/metrics").text
        assert 'esper_service_up{service="probe"} 1.0' in metrics


def test_lifecycle_hooks_run_in_order() -> None:
    calls: list[str] = []

    class Probe(Service):
        def on_start(self) -> None:
            calls.append("start")

        def on_stop(self) -> None:
            calls.append("stop")

    with TestClient(Probe(ServiceSettings()).app):
        assert calls == ["start"]
    assert calls == ["start", "stop"]


def test_json_log_line_carries_extras() -> None:
    record = logging.LogRecord("esper.test", logging.INFO, __file__, 1, "compiled %s", ("k1",), None)
    record.artifact_id = "abc"
    line = json.loads(JsonFormatter("tezzeret").format(record))
    assert line["service"] == "tezzeret" and line["msg"] == "compiled k1" and line["artifact_id"] == "abc"
    assert line["ts"].endswith("+00:00")


def test_cli_topics_prints_the_whole_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "console", Console(width=400))  # one line per topic
    out = CliRunner().invoke(app, ["topics"])
    assert out.exit_code == 0
    rows = {cells[1].strip(): [c.strip() for c in cells[2:-1]]
            for cells in (line.split("│") for line in out.output.splitlines() if line.startswith("│"))}
    assert set(rows) == set(TOPICS)
    for name, spec in TOPICS.items():
        assert rows[name] == [spec.payload.__name__, ", ".join(map(spec.label, spec.producers)),
                              ", ".join(map(spec.label, spec.consumers)), "by key" if spec.ordered_by_key else ""]
    assert rows[Topic.POLICY_UPDATES][1] == "simic"
    assert rows[Topic.FIELD_REPORTS][2].endswith("simic (planned)")  # a planned role is labelled as such
    assert rows[Topic.IMPORTANCE][1:3] == ["elesh", "emrakul"]
    assert rows[Topic.COMPILATION_JOBS][1:3] == ["urza", "tezzeret"]


def test_cli_unknown_service() -> None:
    bad = CliRunner().invoke(app, ["serve", "nonexistent"])
    assert bad.exit_code == 2 and "unknown service" in bad.output


def test_services_are_served_with_httptools_and_uvloop() -> None:
    config = Service(ServiceSettings(service_name="t", port=9123)).uvicorn_config()
    config.load()  # resolves "auto" to what is installed
    assert config.port == 9123
    assert config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
    loop_factory = config.get_loop_factory()
    assert loop_factory is not None and loop_factory.__module__.startswith("uvloop")


def test_installed_commands_join_esper_and_a_bad_one_is_only_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "esper_test_plugin.py").write_text(
        "import typer\n"
        "hello = typer.Typer()\n"
        "@hello.command()\n"
        "def greet() -> None:\n"
        "    print('hello from a plugin')\n"
        "@hello.command()\n"
        "def other() -> None:\n"
        "    pass\n"
        "not_an_app = 42\n"
        "def single(name: str = 'world') -> None:\n"
        "    print(f'single {name}')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    target = typer.Typer()

    @target.command()
    def serve() -> None:
        """A built-in command that a plugin must not shadow."""

    points = [EntryPoint(name, value, cli.COMMAND_GROUP) for name, value in [
        ("hello", "esper_test_plugin:hello"),
        ("broken", "esper_no_such_module:app"),
        ("odd", "esper_test_plugin:not_an_app"),
        ("serve", "esper_test_plugin:hello"),
        ("single", "esper_test_plugin:single"),
    ]]
    assert cli.add_installed_commands(target, points) == ["hello", "single"]
    warnings = capsys.readouterr().err
    assert "skipping command 'broken'" in warnings and "No module named 'esper_no_such_module'" in warnings
    assert "skipping command 'odd'" in warnings and "is neither a typer.Typer nor a function" in warnings
    assert "skipping command 'serve'" in warnings and "is already a command" in warnings
    out = CliRunner().invoke(target, ["hello", "greet"])
    assert out.exit_code == 0 and "hello from a plugin" in out.output
    out = CliRunner().invoke(target, ["single", "--name", "esper"])  # a function is one command, not a group
    assert out.exit_code == 0 and "single esper" in out.output


def test_infra_control_is_not_part_of_the_runtime() -> None:
    import esper_runtime

    assert not (Path(esper_runtime.__file__).parent / "infra.py").exists()
    assert [p.value for p in entry_points(group=cli.COMMAND_GROUP) if p.name == "infra"] == [
        "esper_devtools.cli:infra_app"]  # in the dev environment it comes from esper-devtools
