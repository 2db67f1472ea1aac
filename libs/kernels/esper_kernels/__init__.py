"""Blueprint kernels: everything that turns a BlueprintIR or a compiled artifact into a module that runs.

One torch library shared by the researcher SDK (Kasmina loads seeds from it), Tezzeret (which writes
artifacts) and Urabrask (which loads and measures them), so none of them needs the others' code:

* ``interpreter`` — BlueprintIR → ``nn.Module`` (the eager reference and the eager pipeline);
* ``programs`` — the calling convention compiled programs follow (weights as inputs) and its exports;
* ``container`` — the compiled artifact format: manifest, weights, programs, verified on every read;
* ``hardware`` — device, compute capability and CPU ISA checks, without a compiler;
* ``exported`` / ``native`` — loading ``fast`` (torch.export) and AOTInductor programs safely;
* ``kernel`` — ``CompiledKernel``: a loaded artifact as a trainable module, and ``load_compiled``;
* ``cache`` — the sha256-checked LRU of artifact bytes;
* ``library`` / ``urza_source`` — the kernel sources Kasmina and Tamiyo use (in process, or Urza).
"""

from .cache import KernelCache, sha256_hex
from .container import (
    AOTI_PIPELINES,
    KERNEL_FORMAT_VERSION,
    KernelArtifact,
    KernelManifest,
    open_kernel_artifact,
    pack_kernel_artifact,
    read_manifest,
    reference_module,
    unpack_weights,
)
from .errors import (
    IRValidationError,
    KernelFormatError,
    KernelHardwareError,
    KernelIntegrityError,
    KernelNotFoundError,
)
from .hardware import check_cpu_isa, check_hardware, host_cpu_isa, local_hardware
from .interpreter import INTERPRETER_VERSION, IRModule, build_module, ir_parameter_count
from .kernel import CompiledKernel, load_artifact, load_compiled, prewarm
from .library import (
    EAGER_HARDWARE,
    KernelSource,
    LocalKernelLibrary,
    canonical_ir_bytes,
    representative_shape,
    toolchain_hash,
)
from .native import cleanup_tmp
from .programs import WeightsAsInputs, export_backward, export_forward
from .urza_source import UrzaKernelSource

__all__ = [
    "AOTI_PIPELINES", "EAGER_HARDWARE", "INTERPRETER_VERSION", "KERNEL_FORMAT_VERSION",
    "CompiledKernel", "IRModule", "IRValidationError", "KernelArtifact", "KernelCache",
    "KernelFormatError", "KernelHardwareError", "KernelIntegrityError", "KernelManifest", "KernelNotFoundError",
    "KernelSource", "LocalKernelLibrary", "UrzaKernelSource", "WeightsAsInputs", "build_module",
    "canonical_ir_bytes", "check_cpu_isa", "check_hardware", "cleanup_tmp",
    "export_backward", "export_forward", "host_cpu_isa", "ir_parameter_count",
    "load_artifact", "load_compiled", "local_hardware", "open_kernel_artifact", "pack_kernel_artifact", "prewarm",
    "read_manifest", "reference_module", "representative_shape", "sha256_hex", "toolchain_hash", "unpack_weights",
]
