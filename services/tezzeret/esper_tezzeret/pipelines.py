"""The compilation pipelines: BlueprintIR + injection shape -> one compiled kernel artifact (bytes).

Every pipeline starts the same way: static validation (the interpreter builds the IR, the shape fits its
interface, one eager forward gives the right shape and finite values), initial weights drawn from a seed
derived from the IR hash (so every worker builds the same artifact), and ``torch.export`` of the IR as a
*function of its weights*, ``(x, parameters, buffers) -> y``, with every axis but the feature axis dynamic
(one artifact serves any batch, token count or image size). Weights are inputs so that a compiled seed
stays trainable (docs/decisions/0007). Then:

* ``fast`` — the exported program, saved with ``torch.export.save`` (sample inputs stripped: they would be
  a pickle); its aten graph is differentiable as it is;
* ``standard`` — an AOTInductor package (``aoti_compile_and_package``): C++ on CPU, Triton on GPU, plus a
  second package for the backward: the vector-Jacobian product ``(x, dy, parameters, buffers) ->
  (dx, dparameters)``, traced to aten with ``make_fx`` and compiled the same way;
* ``aggressive`` — the same with max-autotune.

``eager`` is accepted too: its artifact is the canonical IR JSON (interpreted, trainable, any device), with
the id the SDK's LocalKernelLibrary gives it, so a standalone library and Urza agree on eager ids.

A pipeline is one entry in ``PIPELINES``; adding one touches that table and the toolchain options.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import torch

from esper_contracts import ArtifactId, BlueprintIR, CompilationPipeline, artifact_id
from esper_contracts.ir_shapes import DYNAMIC_AXES, FEATURE_AXIS
from esper_kernels import (
    AOTI_PIPELINES,
    IRModule,
    IRValidationError,
    KernelManifest,
    WeightsAsInputs,
    build_module,
    canonical_ir_bytes,
    export_backward,
    export_forward,
    pack_kernel_artifact,
)
from esper_kernels import toolchain_hash as eager_toolchain_hash

from .toolchain import inductor_options, strip_version, toolchain_hash


class CompileError(RuntimeError):
    """A compilation that failed; the message is the compiler's (truncated to what a contract can hold)."""


class StaticValidationError(CompileError):
    """The IR or the shape is wrong: no pipeline can ever compile this job, so it is not retried."""




@dataclass(frozen=True)
class CompiledOutput:
    """One compiled artifact, ready to store."""

    artifact_id: str
    blob: bytes
    sha256: str
    compile_time_s: float
    manifest: KernelManifest | None  # None for eager artifacts (the blob is the IR itself)


def weight_seed(ir: BlueprintIR) -> int:
    """The RNG seed weights are initialised with: a function of the IR hash, so every worker agrees."""
    return int(ir.ir_hash()[:15], 16)


def seeded_module(ir: BlueprintIR) -> IRModule:
    """``build_module(ir)`` with weights drawn from :func:`weight_seed`, in eval mode (what is compiled)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weight_seed(ir))
        module = build_module(ir)
    return module.eval()


def static_check(ir: BlueprintIR, input_shape: list[int]) -> IRModule:
    """Build the IR and run it once on ``input_shape``; raises StaticValidationError with the reason."""
    try:
        module = seeded_module(ir)
    except IRValidationError as exc:
        raise StaticValidationError(f"blueprint does not build: {exc}") from None
    layout, features = ir.input.layout, ir.input.features
    rank = len(DYNAMIC_AXES[layout]) + 1
    if len(input_shape) != rank or input_shape[FEATURE_AXIS[layout]] != features:
        raise StaticValidationError(f"input shape {input_shape} does not fit the blueprint's {layout} interface "
                                    f"with {features} features")
    with torch.no_grad():
        try:
            out = module(torch.randn(*input_shape))
        except Exception as exc:
            raise StaticValidationError(f"eager forward on {input_shape} failed: {type(exc).__name__}: {exc}") from None
    expected = list(input_shape)
    expected[FEATURE_AXIS[layout]] = ir.output.features
    if list(out.shape) != expected:
        raise StaticValidationError(f"eager forward produced shape {list(out.shape)}, the interface says {expected}")
    if not torch.isfinite(out).all():
        raise StaticValidationError("eager forward on a random input produced non-finite values")
    return module


def _trace_input(input_shape: list[int], dynamic: list[int], device: str) -> torch.Tensor:
    # Trace with at least 2 on each dynamic axis: a size of 1 would be specialised into the graph.
    return torch.randn(*[max(2, s) if axis in dynamic else s for axis, s in enumerate(input_shape)], device=device)


def _save_exported(ep: torch.export.ExportedProgram, _pipeline: CompilationPipeline, _device: str) -> tuple[bytes, str]:
    ep._example_inputs = None  # saved as a torch.save pickle otherwise; the loader refuses pickles
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue(), ""


def _aoti_package(ep: torch.export.ExportedProgram, pipeline: CompilationPipeline, device: str) -> tuple[bytes, str]:
    """Compile and package; also returns the CPU ISA the package records it was built for."""
    from torch._inductor import aoti_compile_and_package

    with tempfile.TemporaryDirectory(prefix="tezzeret-") as tmp:
        path = aoti_compile_and_package(ep, package_path=os.path.join(tmp, "kernel.pt2"),
                                        inductor_configs=inductor_options(pipeline, device))
        loader = torch._C._aoti.AOTIModelPackageLoader
        meta = loader.load_metadata_from_package(path, "model")  # type: ignore[attr-defined]
        if strip_version():
            path = _strip_debug_sections(path, tmp)
        with open(path, "rb") as f:
            return f.read(), str(meta.get("AOTI_CPU_ISA", "")) if device != "cuda" else ""


def _strip_debug_sections(package: str, tmp: str) -> str:
    """Repack the package with ``strip --strip-debug`` applied to its shared objects.

    The runtime's objects arrive with debug sections that are three quarters of the bytes of a small
    kernel and are never mapped at load time: without them the blob is ~4x smaller to store, fetch,
    hash and extract, and the (GIL-holding) package loader is faster. Code and data are untouched.
    """
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    with zipfile.ZipFile(package) as zf:
        root = zf.namelist()[0].split("/")[0]
        members = {name[len(root) + 1:]: zf.read(name) for name in zf.namelist()}
    for rel, data in members.items():
        if rel.endswith(".so"):
            so = os.path.join(tmp, "strip.so")
            with open(so, "wb") as f:
                f.write(data)
            subprocess.run([shutil.which("strip") or "strip", "--strip-debug", so], check=True, capture_output=True)
            with open(so, "rb") as f:
                members[rel] = f.read()
    out = os.path.join(tmp, "stripped.pt2")
    with PT2ArchiveWriter(out) as writer:
        for rel, data in members.items():
            if rel not in _ARCHIVE_HEADER_MEMBERS:  # the writer adds its own
                writer.write_bytes(rel, data)
    return out


_ARCHIVE_HEADER_MEMBERS = frozenset({"archive_format", "archive_version", ".data/version", "byteorder",
                                     ".data/serialization_id"})


#: pipeline -> program builder (exported program -> program bytes, CPU ISA the program needs)
PIPELINES: dict[CompilationPipeline,
                Callable[[torch.export.ExportedProgram, CompilationPipeline, str], tuple[bytes, str]]] = {
    CompilationPipeline.FAST: _save_exported,
    CompilationPipeline.STANDARD: _aoti_package,
    CompilationPipeline.AGGRESSIVE: _aoti_package,
}


def plan_artifact_id(ir: BlueprintIR, pipeline: CompilationPipeline, hardware: str, input_shape: list[int],
                     device: str) -> ArtifactId:
    """The id the artifact will have, known before compiling (the id is deterministic)."""
    if pipeline is CompilationPipeline.EAGER:
        return artifact_id(ir.ir_hash(), hardware, pipeline, eager_toolchain_hash())
    th = toolchain_hash(pipeline, device, input_shape, DYNAMIC_AXES[ir.input.layout])
    return artifact_id(ir.ir_hash(), hardware, pipeline, th)


def compile_artifact(ir: BlueprintIR, pipeline: CompilationPipeline, hardware: str, input_shape: list[int],
                     device: str = "cpu") -> CompiledOutput:
    """Run static validation and ``pipeline``; raises StaticValidationError or CompileError with the reason."""
    module = static_check(ir, input_shape)
    if pipeline is CompilationPipeline.EAGER:
        blob = canonical_ir_bytes(ir)
        aid = plan_artifact_id(ir, pipeline, hardware, input_shape, device)
        return CompiledOutput(aid, blob, hashlib.sha256(blob).hexdigest(), 0.0, None)
    dynamic = DYNAMIC_AXES[ir.input.layout]
    aid = plan_artifact_id(ir, pipeline, hardware, input_shape, device)
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    fn = WeightsAsInputs(module.to(device))
    x = _trace_input(input_shape, dynamic, device)
    backward = b""
    t0 = time.perf_counter()
    try:
        with torch.no_grad() if pipeline is not CompilationPipeline.FAST else contextlib.nullcontext():
            program, cpu_isa = PIPELINES[pipeline](export_forward(fn, x, dynamic), pipeline, device)
        if pipeline in AOTI_PIPELINES:
            backward_ep = export_backward(fn, x, dynamic)
            with torch.no_grad():
                backward, _ = PIPELINES[pipeline](backward_ep, pipeline, device)
    except Exception as exc:
        raise CompileError(f"{pipeline.value} compile failed: {type(exc).__name__}: {exc}"[:19000]) from exc
    elapsed = time.perf_counter() - t0
    manifest = KernelManifest(
        artifact_id=aid, blueprint_id=ir.ir_hash(), pipeline=pipeline, hardware=hardware,
        toolchain_hash=aid.toolchain_hash, device="cuda" if device == "cuda" else "cpu",
        cpu_isa=cpu_isa,
        compute_capability="{}.{}".format(*torch.cuda.get_device_capability()) if device == "cuda" else "",
        input_shape=list(input_shape), dynamic_axes=dynamic, torch_version=torch.__version__, ir=ir,
        parameters=fn.param_names, buffers=fn.buffer_names,
    )
    blob = pack_kernel_artifact(manifest, state, program, backward)
    return CompiledOutput(aid, blob, hashlib.sha256(blob).hexdigest(), elapsed, manifest)
