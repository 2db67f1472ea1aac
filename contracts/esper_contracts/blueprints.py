"""Blueprint and kernel contracts: the declarative IR, compiled artifacts, queries and validation reports."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, Self, runtime_checkable

from pydantic import Field, model_validator

from .base import (
    FiniteFloat,
    Identifier,
    NonNegativeFloat,
    NonNegativeInt,
    NonNegativeInt32,
    PositiveInt,
    PositiveInt32,
    StrictModel,
    Text,
    new_id,
    utc_now,
)
from .enums import BlueprintClass, CompilationPipeline, KernelStatus
from .ids import ARTIFACT_ID_PATTERN, ArtifactId

#: Hard size limits of a BlueprintIR: a blueprint is a small kernel, not a model.
MAX_IR_NODES = 256
MAX_IR_EDGES = 1024
MAX_IR_PARAMETERS = 50_000_000

INPUT_NODE = "input"
OUTPUT_NODE = "output"


class OpType(StrEnum):
    """The standard layer and tensor operations a BlueprintIR may use (and nothing else)."""

    LINEAR = "linear"  # attrs: in_features, out_features, bias
    CONV2D = "conv2d"  # attrs: in_channels, out_channels, kernel_size, padding, groups, bias
    RELU = "relu"
    GELU = "gelu"
    SILU = "silu"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    LAYER_NORM = "layer_norm"  # attrs: normalized_shape
    BATCH_NORM2D = "batch_norm2d"  # attrs: num_features
    GROUP_NORM = "group_norm"  # attrs: num_groups, num_channels
    DROPOUT = "dropout"  # attrs: p
    ADD = "add"  # two inputs (ports 0 and 1)
    MUL = "mul"  # two inputs
    SCALE = "scale"  # attrs: value (a constant factor)
    IDENTITY = "identity"
    MULTIHEAD_ATTENTION = "multihead_attention"  # attrs: embed_dim, num_heads (self-attention, batch first)


#: How many inputs each op takes.
OP_ARITY: dict[OpType, int] = {op: 1 for op in OpType} | {OpType.ADD: 2, OpType.MUL: 2}

AttrValue = int | float | bool | Text | list[int]


class TensorInterface(StrictModel):
    """The shape contract at a blueprint's boundary.

    ``layout`` names the axes: ``BD`` (batch, features), ``BTD`` (batch, tokens, features) or
    ``BCHW`` (batch, channels, height, width). ``features`` is the size of the feature/channel axis,
    the one a Kasmina chunk slices.
    """

    layout: Literal["BD", "BTD", "BCHW"]
    features: PositiveInt32


class IRNode(StrictModel):
    """One operation of a BlueprintIR graph."""

    id: Identifier = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    op: OpType
    attrs: dict[Identifier, AttrValue] = Field(default_factory=dict)


class IREdge(StrictModel):
    """Data flows from ``src`` into input ``port`` of ``dst``."""

    src: Identifier
    dst: Identifier
    port: NonNegativeInt32 = 0


class ScaffoldSunset(StrictModel):
    """When and how a scaffold blueprint retires (required for class ``scaffold``)."""

    ttl_epochs: PositiveInt32
    wean_epochs: PositiveInt32 = 1
    max_jitter: NonNegativeFloat = 0.05
    max_drift: NonNegativeFloat = 0.05
    min_diversity: NonNegativeFloat = 0.0


class MutationRecord(StrictModel):
    """How a blueprint was derived: the parent, the mutation operator applied to it and the generation.

    Written by Karn into the child's IR and kept by Urza in the child's lineage. A blueprint without one
    (human-designed, the seed library) is generation 0; a child is one generation after its parent.
    """

    parent_id: Identifier = Field(pattern=r"^[0-9a-f]{64}$")
    operator: Identifier = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    generation: PositiveInt32
    detail: Text = Field(default="", max_length=1000, description="what the operator changed, in words")
    proposer: Identifier = Field(default="karn", max_length=64)


class BlueprintIR(StrictModel):
    """A declarative graph of standard layers with a fixed input/output interface.

    It is data, never code. The reserved node ids ``input`` and ``output`` are the graph's boundary:
    edges leave ``input`` and exactly one edge enters ``output``. Structure is checked on construction
    (unique ids, known endpoints, port arity, no cycles, size limits); shapes and parameter counts are
    inferred by :mod:`esper_contracts.ir_shapes`, which knows the layer semantics.
    """

    name: Identifier = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: PositiveInt32 = 1
    blueprint_class: BlueprintClass
    description: Text = Field(default="", max_length=4000)
    input: TensorInterface
    output: TensorInterface
    nodes: list[IRNode] = Field(min_length=1, max_length=MAX_IR_NODES)
    edges: list[IREdge] = Field(min_length=1, max_length=MAX_IR_EDGES)
    tags: list[Identifier] = Field(default_factory=list)
    parent_ids: list[Identifier] = Field(default_factory=list)
    mutation: MutationRecord | None = None
    sunset: ScaffoldSunset | None = None

    @model_validator(mode="after")
    def _check_graph(self) -> Self:
        ids = [n.id for n in self.nodes]
        reserved = {INPUT_NODE, OUTPUT_NODE} & set(ids)
        if reserved:
            raise ValueError(f"node ids {sorted(reserved)} are reserved for the graph boundary")
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate node ids: {dupes}")
        known = set(ids)
        arity = {n.id: OP_ARITY[n.op] for n in self.nodes}
        filled: dict[str, set[int]] = {i: set() for i in ids}
        into_output = 0
        for e in self.edges:
            if e.src != INPUT_NODE and e.src not in known:
                raise ValueError(f"edge from unknown node {e.src!r}")
            if e.dst == OUTPUT_NODE:
                # 'output' takes one input: any other port would be ignored, yet change the IR's hash
                if e.port != 0:
                    raise ValueError(f"'output' takes 1 input; edge targets port {e.port}")
                into_output += 1
                continue
            if e.dst not in known:
                raise ValueError(f"edge into unknown node {e.dst!r}")
            if e.port >= arity[e.dst]:
                raise ValueError(f"node {e.dst!r} takes {arity[e.dst]} input(s); edge targets port {e.port}")
            if e.port in filled[e.dst]:
                raise ValueError(f"port {e.port} of node {e.dst!r} has two incoming edges")
            filled[e.dst].add(e.port)
        if into_output != 1:
            raise ValueError(f"exactly one edge must enter 'output', found {into_output}")
        missing = sorted(n for n in ids if len(filled[n]) != arity[n])
        if missing:
            raise ValueError(f"nodes with unconnected inputs: {missing}")
        self.topological_order()  # raises on a cycle
        if (self.blueprint_class is BlueprintClass.SCAFFOLD) != (self.sunset is not None):
            raise ValueError("sunset metadata is required for class 'scaffold' and only for it")
        if self.mutation is not None and self.mutation.parent_id not in self.parent_ids:
            raise ValueError(f"the mutation record names parent {self.mutation.parent_id!r}, "
                             f"which is not among parent_ids {self.parent_ids}")
        return self

    @property
    def generation(self) -> int:
        """0 for a designed blueprint, else the generation its mutation record gives."""
        return self.mutation.generation if self.mutation is not None else 0

    def topological_order(self) -> list[str]:
        """Node ids in an order where every node follows its inputs; raises ValueError on a cycle."""
        preds: dict[str, set[str]] = {n.id: set() for n in self.nodes}
        for e in self.edges:
            if e.dst in preds and e.src != INPUT_NODE:
                preds[e.dst].add(e.src)
        order: list[str] = []
        ready = sorted(n for n, p in preds.items() if not p)
        remaining = {n: set(p) for n, p in preds.items() if p}
        while ready:
            node = ready.pop(0)
            order.append(node)
            for other in sorted(remaining):
                remaining[other].discard(node)
                if not remaining[other]:
                    del remaining[other]
                    ready.append(other)
        if remaining:
            raise ValueError(f"the graph has a cycle through {sorted(remaining)}")
        return order

    def ir_hash(self) -> str:
        """sha256 of the canonical JSON of everything that defines the computation.

        Name, description, tags and lineage (parents, mutation record) are left out: two submissions of the
        same graph are the same blueprint, whatever they are called. Node attributes are hashed in canonical
        form (:func:`esper_contracts.ir_shapes.canonical_attrs`: defaults written out, values normalised), so
        an omitted default does not make a second id for the same computation (decision 0015).
        """
        from .ir_shapes import canonical_attrs  # ir_shapes imports this module

        body = self.model_dump(mode="json", include={"blueprint_class", "input", "output", "nodes", "edges"})
        for node, raw in zip(body["nodes"], self.nodes, strict=True):
            node["attrs"] = canonical_attrs(raw.op, dict(raw.attrs))
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def artifact_id(ir_hash: str, hardware: str, pipeline: CompilationPipeline, toolchain_hash: str) -> ArtifactId:
    """Build ``<ir-hash>-<hardware>-<pipeline>-<toolchain-hash>``; raises ValueError if malformed."""
    return ArtifactId(ir_hash, hardware, pipeline, toolchain_hash)


class UrabraskValidationReport(StrictModel):
    """Urabrask's measured profile of one artifact on one hardware target."""

    artifact_id: Identifier = Field(pattern=ARTIFACT_ID_PATTERN)
    hardware: Identifier
    passed: bool
    rejection_reason: Text | None = Field(default=None, max_length=4000)
    latency_ms_mean: NonNegativeFloat = 0.0
    latency_ms_p50: NonNegativeFloat = 0.0
    latency_ms_p99: NonNegativeFloat = 0.0
    throughput_ops_per_sec: NonNegativeFloat = 0.0
    memory_mb_peak: NonNegativeFloat = 0.0
    power_watts_avg: NonNegativeFloat | None = None
    precision_drift_vs_fp32: NonNegativeFloat = 0.0
    measurement_cv: NonNegativeFloat = 0.0
    repeats: NonNegativeInt32 = 0
    tags: list[Identifier] = Field(default_factory=list)
    measured_at: datetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _reason_when_rejected(self) -> Self:
        if not self.passed and not self.rejection_reason:
            raise ValueError("a failed validation needs a rejection_reason")
        return self


class CompiledKernelArtifact(StrictModel):
    """One compiled form of a blueprint for one hardware target, pipeline and toolchain. Immutable once COMPILED."""

    artifact_id: Identifier = Field(pattern=ARTIFACT_ID_PATTERN)
    blueprint_id: Identifier = Field(pattern=r"^[0-9a-f]{64}$")
    hardware: Identifier
    pipeline: CompilationPipeline
    toolchain_hash: Identifier
    status: KernelStatus = KernelStatus.PENDING
    input_shape: list[PositiveInt32] = Field(min_length=1, max_length=8)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size_bytes: NonNegativeInt | None = None
    blob_uri: Text | None = None
    compile_time_s: NonNegativeFloat | None = None
    error: Text | None = Field(default=None, max_length=20000)
    tags: list[Identifier] = Field(default_factory=list)
    validation: UrabraskValidationReport | None = None
    created_at: datetime = Field(default_factory=utc_now)

    @classmethod
    def for_id(cls, artifact_id: str, **fields: Any) -> Self:
        """The artifact ``artifact_id`` names: blueprint, hardware, pipeline and toolchain read from the id.

        ``fields`` give the rest (``input_shape`` at least); raises ValueError for a malformed id.
        """
        aid = ArtifactId.parse(artifact_id)
        return cls(artifact_id=aid, blueprint_id=aid.blueprint_id, hardware=aid.hardware, pipeline=aid.pipeline,
                   toolchain_hash=aid.toolchain_hash, **fields)


class BlueprintRecord(StrictModel):
    """Urza's record of a blueprint: its IR and every artifact compiled from it."""

    blueprint_id: Identifier = Field(pattern=r"^[0-9a-f]{64}$")
    ir: BlueprintIR
    parameter_count: NonNegativeInt = 0
    artifacts: list[CompiledKernelArtifact] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utc_now)


class LineageRelative(StrictModel):
    """A parent or child in a lineage listing; ``known`` is False for a parent never stored in this Urza."""

    blueprint_id: Identifier
    known: bool
    name: Text | None = None
    blueprint_class: BlueprintClass | None = None
    mutation: MutationRecord | None = Field(default=None, description="how this relative was made, if by mutation")


class BlueprintLineage(StrictModel):
    """A blueprint's place in the family tree: how it was made, its direct parents and its direct children."""

    blueprint_id: Identifier = Field(pattern=r"^[0-9a-f]{64}$")
    mutation: MutationRecord | None = None
    parents: list[LineageRelative] = Field(default_factory=list)
    children: list[LineageRelative] = Field(default_factory=list)


class PipelineBacklog(StrictModel):
    """Work waiting in the asset pipeline, as Urza sees it: what a producer of blueprints watches to pace itself."""

    compilation_pending: NonNegativeInt = Field(description="compilation jobs queued whose artifact is not yet "
                                                            "COMPILED (or beyond) nor FAILED")
    validation_pending: NonNegativeInt = Field(description="artifacts COMPILED or VALIDATING, not yet judged")
    outbox_unsent: NonNegativeInt = Field(default=0, description="jobs written but not yet published to the bus")

    @property
    def total(self) -> int:
        """Compilation and validation work not finished yet."""
        return self.compilation_pending + self.validation_pending


class KernelQuery(StrictModel):
    """Tamiyo's request for kernels: tags, hardware, status, class and interface, sorted and limited."""

    tags_required: list[Identifier] = Field(default_factory=list)
    tags_excluded: list[Identifier] = Field(default_factory=list)
    hardware: Identifier | None = None
    status: KernelStatus | None = KernelStatus.VALIDATED
    blueprint_class: BlueprintClass | None = None
    interface: TensorInterface | None = None
    pipeline: CompilationPipeline | None = None
    sort_by: Literal["latency", "memory", "created_at"] = "latency"
    limit: PositiveInt = Field(default=20, le=1000)

    @model_validator(mode="after")
    def _no_contradiction(self) -> Self:
        both = set(self.tags_required) & set(self.tags_excluded)
        if both:
            raise ValueError(f"tags both required and excluded: {sorted(both)}")
        return self

    def matches(self, artifact: CompiledKernelArtifact, *, blueprint_class: BlueprintClass,
                interface: TensorInterface) -> bool:
        """Whether ``artifact`` passes every filter of this query (sorting and ``limit`` aside).

        The one matching rule: Urza's SQL (``esper_urza.store.kernel_query``) answers exactly this, which
        a conformance test checks on random artifacts and queries. ``blueprint_class`` and ``interface`` are
        the artifact's blueprint's (its class and input interface); an artifact does not carry them.

        Hardware matches exactly, for eager artifacts too: the hardware in an artifact id is where it was
        built and measured, and a query naming hardware asks for kernels validated there. (The in-process
        library once let eager artifacts match any hardware; a CPU measurement says nothing about an H100.)
        """
        if self.status is not None and artifact.status is not self.status:
            return False
        if self.hardware is not None and artifact.hardware != self.hardware:
            return False
        if self.blueprint_class is not None and blueprint_class is not self.blueprint_class:
            return False
        if self.interface is not None and interface != self.interface:
            return False
        if self.pipeline is not None and artifact.pipeline is not self.pipeline:
            return False
        tags = set(artifact.tags)
        return tags.issuperset(self.tags_required) and tags.isdisjoint(self.tags_excluded)


class KernelQueryResult(StrictModel):
    """Artifacts matching a KernelQuery, best first."""

    artifacts: list[CompiledKernelArtifact] = Field(default_factory=list)
    total: NonNegativeInt = 0


@runtime_checkable
class KernelSelector(Protocol):
    """Anything that answers a kernel query: Urza's client, an in-process kernel library, a fixed catalogue.

    What a policy asks for kernels. Declared once here so the policy, Tamiyo and the kernel libraries agree
    without importing each other.
    """

    def query(self, q: KernelQuery) -> KernelQueryResult:
        """Artifacts matching ``q``, best first, at most ``q.limit``."""
        ...


class CompilationJob(StrictModel):
    """Compile one blueprint for one injection shape with one pipeline (consumed by Tezzeret)."""

    job_id: Identifier = Field(default_factory=new_id)
    blueprint_id: Identifier = Field(pattern=r"^[0-9a-f]{64}$")
    ir: BlueprintIR
    pipeline: CompilationPipeline
    hardware: Identifier
    input_shape: list[PositiveInt32] = Field(min_length=1, max_length=8)
    max_attempts: PositiveInt32 = 3


class ValidationJob(StrictModel):
    """Benchmark and characterise one compiled artifact (consumed by Urabrask)."""

    job_id: Identifier = Field(default_factory=new_id)
    artifact_id: Identifier = Field(pattern=ARTIFACT_ID_PATTERN)
    blueprint_id: Identifier = Field(pattern=r"^[0-9a-f]{64}$")
    hardware: Identifier
    tolerance: FiniteFloat = Field(default=1e-4, gt=0.0)
