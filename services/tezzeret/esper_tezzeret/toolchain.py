"""The toolchain hash: the last segment of an artifact id, naming everything that shapes the compiled bytes.

Two workers that would produce different programs must produce different ids, and two that would produce
the same program must agree on one id. The hash therefore covers the torch version (it owns export,
Inductor and the runtime), the C++ compiler or Triton/CUDA versions that AOTInductor drives, the target
ISA or compute capability, the pipeline's Inductor options, the traced shape and dynamic axes, the IR
interpreter version (it lowers the IR), the kernel container version and the weight-initialisation
scheme (weights are part of the artifact). It leaves out what does not change the result (thread
counts, cache locations).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from typing import Any

import torch

from esper_contracts import CompilationPipeline
from esper_kernels import INTERPRETER_VERSION, KERNEL_FORMAT_VERSION, host_cpu_isa

#: Bumped when the way weights are initialised from the IR hash changes.
WEIGHT_INIT_SCHEME = "torch-default-seeded-by-ir-hash-v1"
TOOLCHAIN_HASH_CHARS = 16


@functools.cache
def cpp_compiler_version() -> str:
    """First line of ``<c++ compiler> --version`` for the compiler Inductor uses (empty when none is found)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        compiler = get_cpp_compiler()
    except Exception:  # no usable compiler: AOTInductor compiles will fail with their own message
        compiler = shutil.which("g++") or "g++"
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout.splitlines() or [""])[0].strip()


@functools.cache
def strip_version() -> str:
    """First line of ``strip --version`` ('' when binutils is absent: packages are then left unstripped)."""
    tool = shutil.which("strip")
    if tool is None:
        return ""
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout.splitlines() or [""])[0].strip()


@functools.cache
def triton_version() -> str:
    """The installed Triton version ('' when absent); it generates GPU kernels for the AOTInductor pipelines."""
    try:
        import triton

        return str(triton.__version__)
    except Exception:
        return ""


def inductor_options(pipeline: CompilationPipeline, device: str) -> dict[str, Any]:
    """The Inductor options of an AOTInductor pipeline (``fast`` has none)."""
    if pipeline is CompilationPipeline.STANDARD:
        return {}
    if pipeline is CompilationPipeline.AGGRESSIVE:
        if device == "cuda":
            return {"max_autotune": True, "max_autotune_gemm_backends": "TRITON,ATEN"}
        return {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
    return {}


def toolchain_description(pipeline: CompilationPipeline, device: str, input_shape: list[int],
                          dynamic_axes: list[int]) -> dict[str, Any]:
    """Everything the toolchain hash covers, as a JSON-able dict (also logged, so a hash can be explained)."""
    desc: dict[str, Any] = {
        "pipeline": pipeline.value,
        "torch": torch.__version__,
        "kernel_format": KERNEL_FORMAT_VERSION,
        "interpreter": INTERPRETER_VERSION,
        "weights": WEIGHT_INIT_SCHEME,
        "device": device,
        "input_shape": list(input_shape),
        "dynamic_axes": list(dynamic_axes),
    }
    if pipeline is not CompilationPipeline.FAST:
        desc["inductor_options"] = inductor_options(pipeline, device)
        desc["strip_debug"] = strip_version()  # stripped and unstripped packages are different bytes
        if device == "cuda":
            desc["cuda"] = torch.version.cuda or ""
            desc["triton"] = triton_version()
            desc["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability())
        else:
            desc["cxx"] = cpp_compiler_version()
            desc["cpu_isa"] = host_cpu_isa()
    return desc


def toolchain_hash(pipeline: CompilationPipeline, device: str, input_shape: list[int],
                   dynamic_axes: list[int]) -> str:
    """16 hex characters of the sha256 of :func:`toolchain_description`."""
    canonical = json.dumps(toolchain_description(pipeline, device, input_shape, dynamic_axes), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:TOOLCHAIN_HASH_CHARS]
