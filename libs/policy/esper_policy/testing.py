"""Small fakes for testing policies without torch: kernel artifacts, a kernel library, seeds and packets."""

from __future__ import annotations

import hashlib

from esper_contracts import (
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    TensorInterface,
    artifact_id,
)

S = SeedStage


def make_artifact(name: str, features: int = 8, tags: tuple[str, ...] = ()) -> CompiledKernelArtifact:
    """An eager CPU artifact whose family (first tag) is ``name``."""
    bp = hashlib.sha256(name.encode()).hexdigest()
    return CompiledKernelArtifact(
        artifact_id=artifact_id(bp, "cpu", CompilationPipeline.EAGER, "0" * 12),
        blueprint_id=bp,
        hardware="cpu",
        pipeline=CompilationPipeline.EAGER,
        toolchain_hash="0" * 12,
        input_shape=[1, features],
        tags=[name, *tags],
    )


class FakeLibrary:
    """Answers every query with the artifacts whose feature count matches the interface."""

    def __init__(self, artifacts: list[CompiledKernelArtifact]) -> None:
        self.artifacts = artifacts
        self.queries: list[KernelQuery] = []

    def query(self, query: KernelQuery) -> KernelQueryResult:
        """The artifacts fitting the query's feature count and required tags."""
        self.queries.append(query)
        found = [a for a in self.artifacts if query.interface is None or a.input_shape[-1] == query.interface.features]
        found = [a for a in found if all(t in a.tags for t in query.tags_required)]
        return KernelQueryResult(artifacts=found, total=len(found))


def seed(layer: str, index: int = 0, stage: SeedStage = S.DORMANT, **kw: object) -> SeedTelemetry:
    """A seed's telemetry on a BD(8) interface (``kw`` overrides any field)."""
    fields: dict[str, object] = {"interface": TensorInterface(layout="BD", features=8), "gradient_norm": 1.0,
                                 "chunk_variance": 1.0}
    fields.update(kw)
    return SeedTelemetry(layer_id=layer, seed_index=index, epoch=0, stage=stage, **fields)  # type: ignore[arg-type]


def packet(epoch: int, val_loss: float, seeds: list[SeedTelemetry], acc: float | None = None) -> SystemStatePacket:
    """A heartbeat of run "r" with these metrics and seeds."""
    return SystemStatePacket(run_id="r", epoch=epoch, train_loss=val_loss, val_loss=val_loss, val_accuracy=acc,
                             seeds=seeds)
