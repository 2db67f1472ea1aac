"""Fixtures for Tezzeret's tests: a real Urza (SQLite + blob folder) behind a TestClient, on a memory bus.

Nothing is faked: the worker talks to Urza's real REST API and publishes on the same in-process bus
Urza consumes, so a test sees exactly what Urza records.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper.blueprints import KernelNotFoundError, builtin_blueprints
from esper.blueprints.urza_source import UrzaClient
from esper_contracts import BlueprintIR, Envelope, KernelStatus, TensorInterface
from esper_oona import Bus, connect
from esper_oona.memory_bus import drop_memory_broker


class Collector:
    """Everything published on one topic from the first message on."""

    def __init__(self, bus: Bus, topic: str) -> None:
        self.messages: list[Envelope[Any]] = []
        self._lock = threading.Lock()
        bus.subscribe(topic, f"test-{uuid.uuid4().hex[:8]}", self._take, initial_position="earliest")

    def _take(self, envelope: Envelope[Any]) -> None:
        with self._lock:
            self.messages.append(envelope)

    @property
    def payloads(self) -> list[Any]:
        with self._lock:
            return [m.payload for m in self.messages]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 120.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def bus_url() -> Iterator[str]:
    name = f"tezzeret-test-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}"
    drop_memory_broker(name)


@pytest.fixture
def bus(bus_url: str) -> Iterator[Bus]:
    """The workers' bus client (short redelivery delay, so retried jobs come back quickly)."""
    b = connect(bus_url, producer_name="tezzeret", nack_delay_ms=20, max_redeliveries=3)
    yield b
    b.close()


@pytest.fixture
def urza_http(tmp_path: Path, bus_url: str) -> Iterator[TestClient]:
    """A started Urza that compiles new blueprints with the fast pipeline for hardware 'cpu'."""
    from esper_urza.service import create_service

    service = create_service(data_dir=tmp_path / "urza", bus_url=bus_url, seed_library=False,
                             pipelines=["fast"], hardware=["cpu"], outbox_interval_s=0.1, nack_delay_ms=20,
                             max_redeliveries=2, validate_compiled=False)
    with TestClient(service.app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def urza(urza_http: TestClient) -> UrzaClient:
    return UrzaClient(http=urza_http)


@pytest.fixture
def collect(bus: Bus) -> Callable[[str], Collector]:
    return lambda topic: Collector(bus, topic)


class Kit:
    """Helpers for the tests (a fixture: test modules are imported in importlib mode, so not importable)."""

    wait_until = staticmethod(wait_until)

    @staticmethod
    def blueprint(features: int = 16, family: str = "bottleneck") -> BlueprintIR:
        """A built-in blueprint for a BD chunk of ``features``."""
        irs = builtin_blueprints(TensorInterface(layout="BD", features=features))
        return next(ir for ir in irs if ir.tags[0] == family)

    @staticmethod
    def status_of(urza: UrzaClient, artifact_id: str) -> KernelStatus | None:
        """The artifact's status in Urza, or None when Urza has no record."""
        try:
            return urza.kernel(artifact_id).artifact.status
        except KernelNotFoundError:
            return None


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
