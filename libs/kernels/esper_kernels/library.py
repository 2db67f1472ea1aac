"""Where kernels come from: the KernelSource/KernelSelector protocols and the in-process LocalKernelLibrary.

Kasmina sees a ``KernelSource`` (load an artifact id into a module); Tamiyo sees a ``KernelSelector``
(query artifacts by interface, tags, class, status). ``LocalKernelLibrary`` is both, in process: it
holds built-in BlueprintIRs as eager artifacts (the canonical IR JSON is the artifact's bytes) and
serves them through a sha256-checked :class:`KernelCache`, like Urza will with compiled artifacts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from esper_contracts import (
    BlueprintIR,
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    KernelStatus,
    TensorInterface,
    artifact_id,
    builtin_blueprints,
)

from .cache import KernelCache, sha256_hex
from .errors import KernelNotFoundError
from .interpreter import INTERPRETER_VERSION, build_module, ir_parameter_count

#: Hardware segment of eager artifact ids. An eager artifact is interpreted PyTorch and Kasmina loads it on
#: any device, but a query naming hardware matches it only for this one, as Urza does (KernelQuery.matches).
EAGER_HARDWARE = "cpu"


@runtime_checkable
class KernelSource(Protocol):
    """What Kasmina and Tolaria need: turn an artifact id into a fresh module, and describe the artifact.

    ``load`` and ``metadata`` are required. The other three have working defaults here, so a minimal
    source subclasses this class and writes only those two.
    """

    def load(self, artifact_id: str) -> nn.Module:
        """A new module instance for ``artifact_id`` (on CPU); raises on a missing or corrupt artifact."""
        ...

    def metadata(self, artifact_id: str) -> CompiledKernelArtifact:
        """The artifact's record; raises KernelNotFoundError when unknown."""
        ...

    def register_interface(self, interface: TensorInterface) -> list[str]:
        """Get ready to serve kernels for a chunk of ``interface`` (idempotent; Kasmina calls it for every
        chunk it wraps); returns the artifact ids registered for it (by default none: nothing to prepare)."""
        return []

    def evict(self, artifact_id: str) -> None:
        """Forget anything cached for ``artifact_id`` (Kasmina calls it when the kernel failed); by default
        there is nothing to forget."""

    def describe(self, artifact_id: str) -> str:
        """A readable name for the artifact, for logs and lineage; never raises (by default the id itself)."""
        return artifact_id


def toolchain_hash() -> str:
    """16 hex chars identifying what executes eager artifacts: the torch version and the IR interpreter."""
    return hashlib.sha256(f"torch=={torch.__version__};esper-ir=={INTERPRETER_VERSION}".encode()).hexdigest()[:16]


def canonical_ir_bytes(ir: BlueprintIR) -> bytes:
    """The canonical JSON of a whole BlueprintIR: the bytes of its eager artifact."""
    return json.dumps(ir.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def representative_shape(interface: TensorInterface) -> list[int]:
    """A minimal concrete input shape for an interface (batch 1, one token, 1x1 pixels)."""
    return {"BD": [1, interface.features], "BTD": [1, 1, interface.features],
            "BCHW": [1, interface.features, 1, 1]}[interface.layout]


class LocalKernelLibrary:
    """In-process kernel library: built-in (and registered) BlueprintIRs as VALIDATED eager artifacts.

    Built-ins for a chunk interface are registered on demand: by ``register_interface``, or lazily by
    ``query`` when the query names an interface. Thread-safe: Kasmina loads from background threads.
    """

    def __init__(self, cache_mb: float = 64.0, interfaces: list[TensorInterface] | None = None) -> None:
        self.cache_mb = cache_mb
        self._lock = threading.RLock()
        self.cache = KernelCache(cache_mb)
        self._blobs: dict[str, bytes] = {}
        self._irs: dict[str, BlueprintIR] = {}
        self._meta: dict[str, CompiledKernelArtifact] = {}
        self._params: dict[str, int] = {}
        self._interfaces: set[tuple[str, int]] = set()
        self._toolchain = toolchain_hash()
        for iface in interfaces or []:
            self.register_interface(iface)

    # -- registration ---------------------------------------------------------------------------------
    def register(self, ir: BlueprintIR, *, status: KernelStatus = KernelStatus.VALIDATED,
                 tags: list[str] | None = None) -> CompiledKernelArtifact:
        """Validate ``ir`` with the interpreter and store it as an eager artifact; idempotent per IR hash.

        Raises IRValidationError for a graph that cannot be built.
        """
        params = ir_parameter_count(ir)
        aid = artifact_id(ir.ir_hash(), EAGER_HARDWARE, CompilationPipeline.EAGER, self._toolchain)
        with self._lock:
            if aid in self._meta:
                return self._meta[aid]
            data = canonical_ir_bytes(ir)
            meta = CompiledKernelArtifact(
                artifact_id=aid, blueprint_id=ir.ir_hash(), hardware=EAGER_HARDWARE,
                pipeline=CompilationPipeline.EAGER, toolchain_hash=self._toolchain, status=status,
                input_shape=representative_shape(ir.input), sha256=sha256_hex(data), size_bytes=len(data),
                compile_time_s=0.0, tags=list(dict.fromkeys([*ir.tags, *(tags or [])])),  # first tag = family
            )
            self._blobs[aid], self._irs[aid], self._meta[aid], self._params[aid] = data, ir, meta, params
        return meta

    def register_interface(self, interface: TensorInterface) -> list[str]:
        """Register every built-in blueprint for ``interface``; returns their artifact ids."""
        key = (interface.layout, interface.features)
        with self._lock:
            if key in self._interfaces:
                return [a for a, ir in self._irs.items() if ir.input == interface and "builtin" in ir.tags]
            ids = [self.register(ir).artifact_id for ir in builtin_blueprints(interface)]
            self._interfaces.add(key)
        return ids

    # -- KernelSource -----------------------------------------------------------------------------------
    def metadata(self, artifact_id: str) -> CompiledKernelArtifact:
        """The artifact's record; raises KernelNotFoundError when unknown."""
        with self._lock:
            meta = self._meta.get(artifact_id)
        if meta is None:
            raise KernelNotFoundError(f"unknown kernel artifact {artifact_id!r}")
        return meta

    def blueprint(self, artifact_id: str) -> BlueprintIR:
        """The BlueprintIR an artifact was built from."""
        self.metadata(artifact_id)
        return self._irs[artifact_id]

    def parameter_count(self, artifact_id: str) -> int:
        """Parameters of the module ``load`` would build."""
        self.metadata(artifact_id)
        return self._params[artifact_id]

    def load(self, artifact_id: str) -> nn.Module:
        """Fetch the artifact's bytes (cache first, sha256-checked), parse the IR and build a fresh module."""
        meta = self.metadata(artifact_id)
        assert meta.sha256 is not None
        data = self.cache.get(artifact_id, meta.sha256)
        if data is None:
            with self._lock:
                data = self._blobs[artifact_id]
            self.cache.put(artifact_id, data, meta.sha256)  # verifies the sha256 even when too large to keep
        ir = BlueprintIR.model_validate_json(data)
        return build_module(ir)

    def evict(self, artifact_id: str) -> None:
        """Drop an artifact from the cache (after it failed at runtime); the next load re-fetches it."""
        self.cache.evict(artifact_id)

    def describe(self, artifact_id: str) -> str:
        """The name of the blueprint the artifact was built from (the id itself when unknown)."""
        with self._lock:
            ir = self._irs.get(artifact_id)
        return ir.name if ir is not None else artifact_id

    # -- KernelSelector ---------------------------------------------------------------------------------
    def query(self, q: KernelQuery) -> KernelQueryResult:
        """Filter as Urza does (:meth:`KernelQuery.matches`); sort; limit."""
        if q.interface is not None:
            self.register_interface(q.interface)
        with self._lock:
            candidates = list(self._meta.values())
            irs = dict(self._irs)
        hits = [m for m in candidates if q.matches(m, blueprint_class=irs[m.artifact_id].blueprint_class,
                                                   interface=irs[m.artifact_id].input)]
        hits.sort(key=lambda m: self._sort_key(m, q.sort_by))
        return KernelQueryResult(artifacts=hits[: q.limit], total=len(hits))

    def _sort_key(self, m: CompiledKernelArtifact, sort_by: str) -> tuple[float, str]:
        # Without an Urabrask report the parameter count stands in for latency and memory.
        v = m.validation
        if sort_by == "latency":
            return (v.latency_ms_p50 if v else float(self._params[m.artifact_id]), m.artifact_id)
        if sort_by == "memory":
            return (v.memory_mb_peak if v else float(self._params[m.artifact_id]), m.artifact_id)
        return (-m.created_at.timestamp(), m.artifact_id)

    # A library is a shared service handle: copying a model that references it must not copy it.
    def __deepcopy__(self, memo: dict[int, Any]) -> LocalKernelLibrary:
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["cache"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self.cache = KernelCache(self.cache_mb)
