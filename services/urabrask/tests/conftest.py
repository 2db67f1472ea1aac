"""Fixtures for Urabrask's tests: a real Urza (SQLite + blob folder) behind a TestClient, on a memory bus.

Artifacts are produced by Tezzeret's real compile function and stored through Urza's REST API; reporting
one COMPILED makes Urza queue the ValidationJob on the bus, exactly as in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from esper_contracts import (
    BlueprintIR,
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelStatus,
    OpType,
    TensorInterface,
    builtin_blueprints,
)
from esper_kernels import KernelNotFoundError, open_kernel_artifact, pack_kernel_artifact, sha256_hex
from esper_oona import Bus, connect
from esper_oona.testing import wait_for
from esper_tezzeret.pipelines import compile_artifact
from esper_urabrask.profiler import ProfileSettings
from esper_urza_client import UrzaClient

#: Quick, still meaningful timing settings for tests.
QUICK = ProfileSettings(warmup_calls=5, warmup_s=0.01, round_s=0.005, min_rounds=3, max_rounds=10, budget_s=0.5)


@pytest.fixture
def bus(memory_bus_url: str) -> Iterator[Bus]:
    b = connect(memory_bus_url, producer_name="urabrask", nack_delay_ms=20, max_redeliveries=3)
    yield b
    b.close()


@pytest.fixture
def urza_http(tmp_path: Path, memory_bus_url: str) -> Iterator[TestClient]:
    """A started Urza that compiles with the fast pipeline for 'cpu' and queues validation jobs."""
    from esper_urza.service import create_service

    service = create_service(data_dir=tmp_path / "urza", bus_url=memory_bus_url, seed_library=False, pipelines=["fast"],
                             hardware=["cpu"], outbox_interval_s=0.1, nack_delay_ms=20, max_redeliveries=2)
    with TestClient(service.app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def urza(urza_http: TestClient) -> UrzaClient:
    return UrzaClient(http=urza_http)


class Kit:
    """Helpers for the tests (a fixture: test modules are imported in importlib mode, so not importable)."""

    #: Validation runs on the worker's thread and takes seconds: wait long, poll gently.
    wait_until = staticmethod(partial(wait_for, timeout_s=120.0, poll_s=0.05))
    quick = QUICK

    @staticmethod
    def blueprint(features: int = 16, family: str = "bottleneck", layout: str = "BD") -> BlueprintIR:
        irs = builtin_blueprints(TensorInterface(layout=layout, features=features))  # type: ignore[arg-type]
        return next(ir for ir in irs if ir.tags[0] == family)

    @staticmethod
    def status_of(urza: UrzaClient, artifact_id: str) -> KernelStatus | None:
        try:
            return urza.kernel(artifact_id).artifact.status
        except KernelNotFoundError:
            return None

    @staticmethod
    def compiled(ir: BlueprintIR, shape: list[int] | None = None,
                 pipeline: CompilationPipeline = CompilationPipeline.FAST) -> tuple[str, bytes, str]:
        """(artifact id, blob, sha256) of ``ir`` compiled by Tezzeret's pipeline."""
        out = compile_artifact(ir, pipeline, "cpu", shape or [8, ir.input.features])
        return out.artifact_id, out.blob, out.sha256

    @staticmethod
    def variant(ir: BlueprintIR, node: str, op: OpType) -> BlueprintIR:
        """``ir`` with one node's operator swapped (same weights, another function)."""
        nodes = [n.model_copy(update={"op": op}) if n.id == node else n for n in ir.nodes]
        return ir.model_copy(update={"nodes": nodes, "name": f"{ir.name}-variant"})

    @staticmethod
    def with_programs_of(blob: bytes, other: bytes, *, forward: bool = True,
                         backward: bool = True) -> tuple[bytes, str]:
        """``blob``'s manifest and weights with the forward and/or backward program of ``other``."""
        art = open_kernel_artifact(blob, sha256_hex(blob))
        donor = open_kernel_artifact(other, sha256_hex(other))
        bad = pack_kernel_artifact(art.manifest, art.weights, donor.program if forward else art.program,
                                   donor.backward if backward else art.backward)
        return bad, sha256_hex(bad)

    @staticmethod
    def store(urza: UrzaClient, ir: BlueprintIR, aid: str, blob: bytes, sha: str,
              shape: list[int] | None = None) -> None:
        """Submit the blueprint, upload the bytes and report COMPILED (Urza then queues the ValidationJob)."""
        urza.submit_blueprint(ir)
        urza.put_binary(aid, blob, sha)
        urza.post_compilation(CompiledKernelArtifact.for_id(
            aid, status=KernelStatus.COMPILED, input_shape=shape or [8, ir.input.features], sha256=sha,
            size_bytes=len(blob), compile_time_s=0.5))


@pytest.fixture
def kit() -> type[Kit]:
    return Kit

