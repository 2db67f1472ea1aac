"""The Karn process: a field report on the bus leads to a child in Urza; the REST API; ``esper serve karn``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from esper_contracts import Outcome
from esper_karn.service import KarnService, create_service
from esper_karn.settings import KarnSettings
from esper_oona import connect
from esper_oona.testing import wait_for
from esper_runtime.registry import load_factory

from .conftest import FakeUrza, residual_mlp
from .test_history import field_report


def karn(tmp_path: Path, bus_url: str, urza: FakeUrza, **overrides: Any) -> KarnService:
    settings = KarnSettings(data_dir=tmp_path, bus_url=bus_url, round_interval_s=0.05, nack_delay_ms=10, seed=0,
                            **overrides)
    return KarnService(settings, urza=urza)  # type: ignore[arg-type]


def test_the_cli_finds_karn_through_its_entry_point() -> None:
    assert load_factory("karn") is create_service


def test_settings_default_to_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    assert KarnSettings(data_dir=tmp_path).resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'karn.db'}"
    pg = KarnSettings(database_url="postgresql+psycopg://karn@db/esper", database_password="s3cret")
    assert pg.resolved_database_url == "postgresql+psycopg://karn:s3cret@db/esper"


def test_a_field_report_leads_to_a_child_in_urza(tmp_path: Path, memory_bus_url: str, urza: FakeUrza) -> None:
    parent = residual_mlp()
    urza.submit_blueprint(parent)
    urza.judge(parent.ir_hash())
    service = karn(tmp_path, memory_bus_url, urza, children_per_round=2)
    tamiyo = connect(memory_bus_url, producer_name="tamiyo")
    try:
        with TestClient(service.app) as client:
            assert client.get("/healthz").json()["checks"] == {"database": True}
            time.sleep(0.2)
            assert len(urza.records) == 1  # no demand yet: Karn does not invent unasked
            tamiyo.publish("innovation.field_reports", field_report(parent.ir_hash(), Outcome.FOSSILIZED))
            wait_for(lambda: len(urza.records) == 3, timeout_s=10, what="two children in Urza")
            children = [r for r in urza.records.values() if r.ir.mutation is not None]
            assert {c.ir.mutation.parent_id for c in children if c.ir.mutation} == {parent.ir_hash()}
            status = client.get("/api/v1/status").json()
            assert (status["library"], status["children"], status["unresolved_children"]) == (3, 2, 2)
            assert status["field_reports"] == 1 and len(status["last_round"]["submitted"]) == 2
            assert "esper_karn_children_submitted_total 2.0" in client.get("/metrics").text
            time.sleep(0.2)
            assert len(urza.records) == 3  # the demand was answered: no more rounds until news
    finally:
        tamiyo.close()


def test_the_api_runs_rounds_and_shows_the_policy(tmp_path: Path, memory_bus_url: str, urza: FakeUrza) -> None:
    parent = residual_mlp()
    urza.submit_blueprint(parent)
    urza.judge(parent.ir_hash())
    with TestClient(karn(tmp_path, memory_bus_url, urza, auto_propose=False).app) as client:
        view = client.post("/api/v1/rounds", json={"count": 3, "tags": ["evolve_r2"]}).json()
        assert len(view["submitted"]) == 3 and view["parents"] == 1
        for child in view["submitted"]:
            urza.judge(child["blueprint_id"])
        client.post("/api/v1/rounds", json={"count": 1})  # syncs the verdicts
        arms = {a["operator"]: a for a in client.get("/api/v1/policy").json()}
        for child in view["submitted"]:  # each judged child is evidence for its operator's arm
            assert arms[child["operator"]]["kind"] == "mlp:BD" and arms[child["operator"]]["trials"] > 0
        assert client.post("/api/v1/rounds", json={"count": 0}).status_code == 422
        assert client.post("/api/v1/rounds", json={"count": 1, "nonsense": 1}).status_code == 422


def test_esper_serve_karn_runs_until_sigterm(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"ESPER_DATA_DIR": str(tmp_path), "ESPER_LOG_FORMAT": "text"}
    esper = Path(sys.executable).with_name("esper")
    proc = subprocess.Popen([str(esper), "serve", "karn", "--port", str(port), "--bus-url", "memory://"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "karn did not start within 60 s"
                time.sleep(0.2)
        assert health["status"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=5).json()["library"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and (tmp_path / "karn.db").exists()
