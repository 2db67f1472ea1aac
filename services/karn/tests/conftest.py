"""Fixtures for Karn's tests: hand-built parent blueprints (no torch, no esper_kernels) and Karn's store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esper_contracts import (
    BlueprintClass,
    BlueprintIR,
    BlueprintRecord,
    CompilationPipeline,
    CompiledKernelArtifact,
    IREdge,
    IRNode,
    KernelStatus,
    OpType,
    PipelineBacklog,
    TensorInterface,
    UrabraskValidationReport,
)
from esper_karn.history import KarnHistory
from esper_storage import open_database


def build(layout: str, features: int, nodes: list[tuple[str, str, list[str], dict[str, Any]]], out: str, *,
          cls: str = "mlp", tags: list[str] | None = None, name: str = "parent") -> BlueprintIR:
    """An IR from (id, op, sources, attrs) tuples and the node feeding the output."""
    iface = TensorInterface(layout=layout, features=features)  # type: ignore[arg-type]
    return BlueprintIR(
        name=name, blueprint_class=BlueprintClass(cls), input=iface, output=iface,
        nodes=[IRNode(id=i, op=OpType(op), attrs=a) for i, op, _s, a in nodes],
        edges=[IREdge(src=s, dst=i, port=p) for i, _op, srcs, _a in nodes for p, s in enumerate(srcs)]
        + [IREdge(src=out, dst="output")],
        tags=tags if tags is not None else ["residual_mlp", "builtin", "capacity"],
    )


def residual_mlp(layout: str = "BD", f: int = 8, hidden: int = 16) -> BlueprintIR:
    """x + down(gelu(up(norm(x)))) with a zero-initialised down projection."""
    if layout == "BCHW":
        norm: tuple[str, dict[str, Any]] = ("group_norm", {"num_groups": 1, "num_channels": f})
        up = ("conv2d", {"in_channels": f, "out_channels": hidden, "kernel_size": 1})
        down = ("conv2d", {"in_channels": hidden, "out_channels": f, "kernel_size": 1, "init": "zeros"})
    else:
        norm = ("layer_norm", {"normalized_shape": [f]})
        up = ("linear", {"in_features": f, "out_features": hidden})
        down = ("linear", {"in_features": hidden, "out_features": f, "init": "zeros"})
    return build(layout, f, [("norm", norm[0], ["input"], norm[1]), ("up", up[0], ["norm"], up[1]),
                             ("act", "gelu", ["up"], {}), ("down", down[0], ["act"], down[1]),
                             ("residual", "add", ["input", "down"], {})], "residual",
                 name=f"residual-mlp-{layout.lower()}-{f}")


def low_rank(f: int = 8, rank: int = 4) -> BlueprintIR:
    """x + b(a(x)) through ``rank`` units."""
    return build("BD", f, [("a", "linear", ["input"], {"in_features": f, "out_features": rank, "bias": False}),
                           ("b", "linear", ["a"], {"in_features": rank, "out_features": f, "bias": False}),
                           ("residual", "add", ["input", "b"], {})], "residual",
                 cls="low_rank", tags=["low_rank_adapter", "builtin"], name=f"low-rank-bd-{f}")


def attention(f: int = 16, heads: int = 2) -> BlueprintIR:
    """x + attn(norm(x)) over tokens."""
    return build("BTD", f, [("norm", "layer_norm", ["input"], {"normalized_shape": f}),
                            ("attn", "multihead_attention", ["norm"], {"embed_dim": f, "num_heads": heads}),
                            ("residual", "add", ["input", "attn"], {})], "residual",
                 cls="attention", tags=["attention_head", "builtin"], name=f"attention-{f}")


@pytest.fixture
def parents() -> dict[str, BlueprintIR]:
    """One parent of each shape the operators care about."""
    return {"mlp": residual_mlp(), "conv": residual_mlp("BCHW", 4, 8), "low_rank": low_rank(),
            "attention": attention()}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for each backend (a throwaway database on the real PostgreSQL server)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'karn.db'}"
        return
    yield request.getfixturevalue("postgres_database_url")  # the root conftest's


@pytest.fixture
def history(database_url: str) -> Iterator[KarnHistory]:
    """Karn's store, migrated, on each backend."""
    db = open_database(database_url)
    store = KarnHistory(db)
    store.migrate()
    yield store
    db.dispose()


class FakeUrza:
    """Urza as Karn sees it (the UrzaPort), in memory: blueprints in order, a settable backlog, verdicts on demand."""

    def __init__(self) -> None:
        self.records: dict[str, BlueprintRecord] = {}
        self.pending = PipelineBacklog(compilation_pending=0, validation_pending=0)
        self.reachable = True

    def submit_blueprint(self, ir: BlueprintIR) -> BlueprintRecord:
        blueprint_id = ir.ir_hash()
        return self.records.setdefault(blueprint_id, BlueprintRecord(blueprint_id=blueprint_id, ir=ir))

    def blueprint(self, blueprint_id: str) -> BlueprintRecord:
        return self.records[blueprint_id]

    def blueprints(self, *, limit: int = 100, offset: int = 0, layout: str | None = None,
                   features: int | None = None) -> tuple[list[BlueprintRecord], int]:
        items = list(self.records.values())
        return items[offset:offset + limit], len(items)

    def backlog(self) -> PipelineBacklog:
        if not self.reachable:
            raise ConnectionError("urza is down")
        return self.pending

    def judge(self, blueprint_id: str, status: KernelStatus = KernelStatus.VALIDATED, latency: float = 1.0) -> None:
        """Give the blueprint one artifact in ``status`` (VALIDATED/REJECTED carry Urabrask's report)."""
        artifact_id = f"{blueprint_id}-cpu-fast-ab12cd34ef56"
        report = None
        if status in (KernelStatus.VALIDATED, KernelStatus.REJECTED):
            report = UrabraskValidationReport(artifact_id=artifact_id, hardware="cpu",
                                              passed=status is KernelStatus.VALIDATED, latency_ms_p50=latency,
                                              memory_mb_peak=1.0, rejection_reason=None if status is
                                              KernelStatus.VALIDATED else "drift")
        artifact = CompiledKernelArtifact(artifact_id=artifact_id, blueprint_id=blueprint_id, hardware="cpu",
                                          pipeline=CompilationPipeline.FAST, toolchain_hash="ab12cd34ef56",
                                          status=status, input_shape=[4, 8], validation=report)
        record = self.records[blueprint_id]
        self.records[blueprint_id] = record.model_copy(update={"artifacts": [artifact]})


@pytest.fixture
def urza() -> FakeUrza:
    """An empty in-memory Urza."""
    return FakeUrza()
