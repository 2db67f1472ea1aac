"""Fixtures for Urza's tests: a service on a temporary SQLite file and blob folder, and its own memory bus."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import ArtifactId, BlueprintIR, TensorInterface, family
from esper_oona import Bus, connect
from esper_oona.testing import Collector
from esper_urza.service import UrzaService, create_service

TOOLCHAIN = "ab12cd34ef56"


@pytest.fixture
def test_bus(memory_bus_url: str) -> Iterator[Bus]:
    """A second client on the test's bus, playing Tezzeret, Urabrask and Tamiyo."""
    bus = connect(memory_bus_url, producer_name="test", nack_delay_ms=20, max_redeliveries=2)
    yield bus
    bus.close()


@pytest.fixture
def urza_factory(tmp_path: Path, memory_bus_url: str) -> Callable[..., UrzaService]:
    """Build Urza services on the test's data folder and bus (several may share them: restarts)."""

    def make(**overrides: Any) -> UrzaService:
        values: dict[str, Any] = {"data_dir": tmp_path / "urza", "bus_url": memory_bus_url, "seed_library": False,
                                  "outbox_interval_s": 0.1, "nack_delay_ms": 20, "max_redeliveries": 2}
        values.update(overrides)
        return create_service(**values)

    return make


@pytest.fixture
def urza(urza_factory: Callable[..., UrzaService]) -> UrzaService:
    """An Urza with an empty library."""
    return urza_factory()


@pytest.fixture
def client(urza: UrzaService) -> Iterator[TestClient]:
    """A started Urza (migrated, consuming) behind a test client."""
    with TestClient(urza.app, raise_server_exceptions=False) as c:
        yield c


class UrzaKit:
    """Test helpers bound to one client: build IRs, and play Tezzeret and Urabrask over REST.

    (A fixture rather than importable functions: test modules are imported in importlib mode.)
    """

    toolchain = TOOLCHAIN

    def __init__(self, client: TestClient | None = None) -> None:
        self.client: Any = client

    @staticmethod
    def make_ir(features: int = 32, layout: str = "BD", **changes: Any) -> BlueprintIR:
        """A valid residual MLP blueprint (hidden width 2 x features); ``changes`` override top-level IR fields."""
        iface = TensorInterface(layout=layout, features=features)  # type: ignore[arg-type]
        ir = family("residual_mlp").blueprint(iface, origin="library", expansion=2)
        return ir.model_copy(update=changes) if changes else ir

    @staticmethod
    def ir_json(ir: BlueprintIR) -> dict[str, Any]:
        """The JSON body of a blueprint submission."""
        return ir.model_dump(mode="json")

    def submit(self, ir: BlueprintIR) -> str:
        """Submit ``ir`` (expecting success) and return its blueprint id."""
        response = self.client.post("/api/v1/blueprints", json=self.ir_json(ir))
        assert response.status_code in (200, 201), response.text
        blueprint_id: str = response.json()["blueprint_id"]
        return blueprint_id

    @staticmethod
    def artifact_id(blueprint_id: str, pipeline: str = "fast", hardware: str = "cpu",
                    toolchain: str = TOOLCHAIN) -> str:
        """``<ir-hash>-<hardware>-<pipeline>-<toolchain>``."""
        return ArtifactId(blueprint_id, hardware, pipeline, toolchain)

    @classmethod
    def result(cls, blueprint_id: str, data: bytes = b"kernel", *, pipeline: str = "fast", hardware: str = "cpu",
               status: str = "COMPILED", toolchain: str = TOOLCHAIN, **extra: Any) -> dict[str, Any]:
        """A CompiledKernelArtifact body as Tezzeret would send it."""
        body: dict[str, Any] = {
            "artifact_id": cls.artifact_id(blueprint_id, pipeline, hardware, toolchain),
            "blueprint_id": blueprint_id, "hardware": hardware, "pipeline": pipeline, "toolchain_hash": toolchain,
            "status": status, "input_shape": [32, 32], "compile_time_s": 1.25,
        }
        if status == "COMPILED":
            body["sha256"] = hashlib.sha256(data).hexdigest()
            body["size_bytes"] = len(data)
        body.update(extra)
        return body

    def upload(self, artifact_id: str, data: bytes, sha: str | None = None) -> Any:
        """PUT the artifact's bytes with their digest header."""
        return self.client.put(f"/api/v1/kernels/{artifact_id}/binary", content=data,
                               headers={"X-Content-SHA256": sha or hashlib.sha256(data).hexdigest()})

    def post_result(self, body: dict[str, Any]) -> Any:
        """POST a compilation result to its artifact."""
        return self.client.post(f"/api/v1/kernels/{body['artifact_id']}/compilation", json=body)

    def compile(self, blueprint_id: str, data: bytes = b"kernel", **kwargs: Any) -> dict[str, Any]:
        """Upload bytes and report the artifact COMPILED; return the artifact as Urza now holds it."""
        body = self.result(blueprint_id, data, **kwargs)
        assert self.upload(body["artifact_id"], data).status_code in (200, 201)
        response = self.post_result(body)
        assert response.status_code == 200, response.text
        artifact: dict[str, Any] = response.json()["artifact"]
        return artifact

    def report(self, artifact_id: str, *, passed: bool = True, latency: float = 1.0, memory: float = 10.0,
               tags: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        """An UrabraskValidationReport body."""
        body: dict[str, Any] = {"artifact_id": artifact_id, "hardware": ArtifactId.parse(artifact_id).hardware,
                                "passed": passed, "latency_ms_mean": latency, "memory_mb_peak": memory,
                                "tags": tags or []}
        if not passed:
            body["rejection_reason"] = "numerical drift 3e-2 over tolerance 1e-4"
        body.update(extra)
        return body

    def validate(self, artifact_id: str, **kwargs: Any) -> Any:
        """POST Urabrask's report for the artifact."""
        return self.client.post(f"/api/v1/kernels/{artifact_id}/validation", json=self.report(artifact_id, **kwargs))


@pytest.fixture
def kit(client: TestClient) -> UrzaKit:
    """Helpers bound to the started Urza's client."""
    return UrzaKit(client)


@pytest.fixture
def make_kit() -> Callable[..., UrzaKit]:
    """Helpers for tests that start their own Urza (set ``kit.client`` once it runs).

    Such tests must not use the ``kit`` fixture: it starts the default Urza on the same files and bus.
    """
    return UrzaKit


@pytest.fixture
def collect(test_bus: Bus) -> Callable[[str], Collector]:
    """``collect(topic)`` starts recording a topic from its first message."""
    return lambda topic: Collector(test_bus, topic)
