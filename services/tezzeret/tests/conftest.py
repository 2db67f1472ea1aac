"""Fixtures for Tezzeret's tests: a real Urza (SQLite + blob folder) behind a TestClient, on a memory bus.

Nothing is faked: the worker talks to Urza's real REST API and publishes on the same in-process bus
Urza consumes, so a test sees exactly what Urza records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from esper_contracts import BlueprintIR, KernelStatus, TensorInterface, builtin_blueprints
from esper_kernels import KernelNotFoundError
from esper_oona import Bus, connect
from esper_oona.testing import Collector, wait_for
from esper_urza_client import UrzaClient


@pytest.fixture
def bus(memory_bus_url: str) -> Iterator[Bus]:
    """The workers' bus client (short redelivery delay, so retried jobs come back quickly)."""
    b = connect(memory_bus_url, producer_name="tezzeret", nack_delay_ms=20, max_redeliveries=3)
    yield b
    b.close()


@pytest.fixture
def urza_http(tmp_path: Path, memory_bus_url: str) -> Iterator[TestClient]:
    """A started Urza that compiles new blueprints with the fast pipeline for hardware 'cpu'."""
    from esper_urza.service import create_service

    service = create_service(data_dir=tmp_path / "urza", bus_url=memory_bus_url, seed_library=False,
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

    #: Compiles run on the worker's thread and take seconds: wait long, poll gently.
    wait_until = staticmethod(partial(wait_for, timeout_s=120.0, poll_s=0.05))

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
