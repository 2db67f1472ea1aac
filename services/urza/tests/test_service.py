"""The Urza process: settings, entry point, migrations, restarts, the outbox, and ``esper serve urza``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from esper_contracts import TensorInterface
from esper_oona import connect
from esper_oona.testing import Collector, memory_bus, wait_for
from esper_runtime.registry import load_factory
from esper_storage import current_revision, head_revision, schema_drift, upgrade
from esper_urza.service import MIGRATIONS, create_service
from esper_urza.settings import UrzaSettings
from esper_urza.store.models import metadata


def test_the_cli_finds_urza_through_its_entry_point() -> None:
    assert load_factory("urza") is create_service


def test_settings_default_to_embedded_storage_under_the_data_dir(tmp_path: Path) -> None:
    s = UrzaSettings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'urza.db'}"
    assert s.resolved_blob_url == (tmp_path.resolve() / "blobs").as_uri()
    assert [p.value for p in s.pipelines] == ["fast", "standard"] and s.hardware == ["cpu"]
    assert s.input_shape(TensorInterface(layout="BD", features=7)) == [32, 7]
    assert s.input_shape(TensorInterface(layout="BTD", features=7)) == [32, 16, 7]
    assert s.input_shape(TensorInterface(layout="BCHW", features=7)) == [32, 7, 8, 8]


def test_environment_overrides_and_password_injection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_DATABASE_URL", "postgresql+psycopg://esper@db:5432/esper")
    monkeypatch.setenv("ESPER_DATABASE_PASSWORD", "s3cret")
    monkeypatch.setenv("ESPER_HARDWARE", '["cpu", "h100"]')
    s = UrzaSettings()
    assert s.resolved_database_url == "postgresql+psycopg://esper:s3cret@db:5432/esper"
    assert s.hardware == ["cpu", "h100"]


def test_bad_settings_are_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="hardware name 'H-100'"):
        UrzaSettings(hardware=["H-100"])
    with pytest.raises(ValidationError):
        UrzaSettings(pipelines=["turbo"])


def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, MIGRATIONS)
    assert current_revision(url, MIGRATIONS) == head_revision(MIGRATIONS)
    assert schema_drift(url, MIGRATIONS, metadata) == []


def test_health_and_metrics(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["checks"] == {"database": True}
    assert "esper_urza_outbox_backlog 0.0" in client.get("/metrics").text


def test_metrics_show_the_pipeline_queues_and_the_artifacts_by_status(client: TestClient, make_kit: Any) -> None:
    kit = make_kit()
    kit.client = client
    bid = kit.submit(kit.make_ir())  # one compilation job per pipeline (fast, standard)
    text = client.get("/metrics").text
    assert 'esper_urza_pipeline_backlog{stage="compilation"} 2.0' in text
    assert 'esper_urza_pipeline_backlog{stage="validation"} 0.0' in text
    kit.compile(bid)
    text = client.get("/metrics").text
    assert 'esper_urza_pipeline_backlog{stage="compilation"} 1.0' in text
    assert 'esper_urza_pipeline_backlog{stage="validation"} 1.0' in text
    assert 'esper_urza_artifacts{status="VALIDATING"} 1.0' in text  # its validation job went out with it
    assert 'esper_urza_artifacts{status="VALIDATED"} 0.0' in text


def test_a_restart_loses_nothing(urza_factory: Any, make_kit: Any) -> None:
    kit = make_kit()
    with TestClient(urza_factory().app) as client:
        kit.client = client
        bid = kit.submit(kit.make_ir())
        aid = kit.compile(bid, b"persistent bytes")["artifact_id"]
        kit.validate(aid, tags=["high_speed"])
        report = {"blueprint_id": bid, "seed_id": "s0", "pre_metric": 0.5, "post_metric": 0.6,
                  "outcome": "FOSSILIZED", "report_id": "rep-1"}
        assert client.post(f"/api/v1/blueprints/{bid}/field-reports", json=report).status_code == 201
        before = client.get(f"/api/v1/blueprints/{bid}").json()
    with TestClient(urza_factory().app) as client:
        assert client.get(f"/api/v1/blueprints/{bid}").json() == before
        assert client.get(f"/api/v1/kernels/{aid}/binary").content == b"persistent bytes"
        found = client.post("/api/v1/kernels/query", json={"tags_required": ["high_speed"]}).json()
        assert [a["artifact_id"] for a in found["artifacts"]] == [aid]
        assert client.get(f"/api/v1/blueprints/{bid}/field-reports").json()["total"] == 1
        assert client.post("/api/v1/blueprints", json=kit.ir_json(kit.make_ir())).status_code == 200


def test_jobs_written_while_the_bus_is_down_are_sent_later(urza_factory: Any, make_kit: Any, collect: Any) -> None:
    kit = make_kit()
    jobs = collect("compilation.jobs")
    urza = urza_factory(outbox_interval_s=0.05)
    with TestClient(urza.app) as client:
        real_publish = urza.bus.publish
        urza.bus.publish = _failing  # type: ignore[method-assign]
        kit.client = client
        kit.submit(kit.make_ir())  # the blueprint is stored even though its jobs cannot go out yet
        assert urza.dispatcher.backlog() == 2
        assert "esper_urza_outbox_backlog 2.0" in client.get("/metrics").text
        urza.bus.publish = real_publish  # type: ignore[method-assign]
        assert len(jobs.wait_for(2)) == 2  # the timer sent them
        deadline = time.monotonic() + 5
        while urza.dispatcher.backlog() and time.monotonic() < deadline:  # marked sent just after publishing
            time.sleep(0.01)
        assert urza.dispatcher.backlog() == 0


def _failing(*_args: Any, **_kwargs: Any) -> Any:
    raise ConnectionError("broker unreachable")


def test_jobs_left_unsent_by_a_crash_go_out_at_the_next_start(urza_factory: Any, make_kit: Any, collect: Any) -> None:
    kit = make_kit()
    crashed = urza_factory(consume=False)
    with TestClient(crashed.app) as client:
        crashed.dispatcher.kick = lambda: None  # type: ignore[method-assign]
        crashed.catalog.ctx.after_commit = lambda: None
        crashed.dispatcher.stop()
        kit.client = client
        kit.submit(kit.make_ir())
        assert crashed.dispatcher.backlog() == 2
    jobs = collect("compilation.jobs")
    with TestClient(urza_factory().app):
        assert len(jobs.wait_for(2)) == 2


def test_on_an_in_process_bus_a_restart_sends_earlier_jobs_again(urza_factory: Any, make_kit: Any) -> None:
    kit = make_kit()
    first = urza_factory()
    with TestClient(first.app) as client:
        kit.client = client
        kit.submit(kit.make_ir())
        # The request only commits and wakes the outbox thread: wait for it to send (on a memory bus, which
        # ends with this "process").
        wait_for(lambda: first.dispatcher.sent == 2, what="the outbox to send both jobs")
    with memory_bus() as fresh_bus:  # a new process's bus: it starts empty
        with TestClient(urza_factory(bus_url=fresh_bus).app):
            listener = connect(fresh_bus, producer_name="test")  # after Urza: Urza's connection made the broker
            jobs = Collector(listener, "compilation.jobs").wait_for(2)
            listener.close()
        assert sorted(j.pipeline.value for j in jobs) == ["fast", "standard"]  # same jobs, same ids: repeats


def test_a_restart_on_the_same_in_process_bus_sends_nothing_twice(urza_factory: Any, make_kit: Any,
                                                                  collect: Any) -> None:
    kit = make_kit()
    jobs = collect("compilation.jobs")  # the test's bus outlives both Urza instances, as in one process
    with TestClient(urza_factory().app) as client:
        kit.client = client
        kit.submit(kit.make_ir())
    with TestClient(urza_factory().app):
        time.sleep(0.3)  # the outbox timer ticks every 0.1 s
    assert len(jobs.wait_for(2)) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def test_esper_serve_urza_runs_until_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = os.environ | {"ESPER_DATA_DIR": str(tmp_path), "ESPER_LOG_FORMAT": "text", "ESPER_OUTBOX_INTERVAL_S": "0.2"}
    esper = Path(sys.executable).with_name("esper")
    proc = subprocess.Popen([str(esper), "serve", "urza", "--port", str(port), "--bus-url", "memory://"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "urza did not start within 60 s"
                time.sleep(0.2)
        assert health["status"] == "ok"
        assert _get(f"http://127.0.0.1:{port}/api/v1/blueprints")["total"] >= 10  # the seed library
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    # uvicorn finishes its graceful shutdown, then re-raises SIGTERM so the exit status says why it stopped
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and "stopped" in output
    assert (tmp_path / "urza.db").exists() and (tmp_path / "blobs").is_dir()


class _StalledBus:
    """The service's bus with publishing held until released: a broker that accepts connections but stalls."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.release = threading.Event()

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(30)
        return self.bus.publish(*args, **kwargs)

    def flush(self, *args: Any, **kwargs: Any) -> Any:
        return self.bus.flush(*args, **kwargs)


def test_a_stalled_bus_never_holds_a_submission(urza: Any, make_kit: Any, collect: Any) -> None:
    jobs = collect("compilation.jobs")
    with TestClient(urza.app) as client:
        stalled = _StalledBus(urza.bus)
        urza.dispatcher._bus = lambda: stalled
        kit = make_kit(client)
        started = time.monotonic()
        blueprint_id = kit.submit(kit.make_ir())  # committed and answered while the bus is stalled
        assert time.monotonic() - started < 2
        listed = client.get(f"/api/v1/blueprints/{blueprint_id}/jobs").json()
        assert len(listed) == 2 and not any(j["published"] for j in listed)
        assert jobs.wait_for(1, timeout_s=0.3) == []
        stalled.release.set()  # the broker answers again: the outbox catches up on its own
        assert len(jobs.wait_for(2, timeout_s=10)) == 2
        deadline = time.monotonic() + 10
        while not all(j["published"] for j in client.get(f"/api/v1/blueprints/{blueprint_id}/jobs").json()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
