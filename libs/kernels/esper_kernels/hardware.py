"""Can this process run a compiled program? Device, compute capability and CPU vector ISA, checked without a compiler.

``torch._inductor`` would probe the CPU's vector ISA by compiling and dlopen-ing test programs, only to
warn on a mismatch (seconds per cold load in a fresh process). We read the ISA ATen dispatches to and
refuse instead of warning (docs/decisions/0006).
"""

from __future__ import annotations

import torch

from .container import AOTI_PIPELINES, KernelManifest
from .errors import KernelHardwareError

# Vector ISA families, weakest first; a binary built for one runs on that family and the ones after it.
_ISA_RANK = {"": 0, "DEFAULT": 0, "INVALID_VEC_ISA": 0, "AVX2": 1, "AVX512": 2}


def host_cpu_isa() -> str:
    """The vector ISA ATen dispatches to here (AVX512, AVX2, DEFAULT, ...), read without any compiler."""
    return str(torch.backends.cpu.get_cpu_capability()).upper()


def local_hardware(device: str = "cpu") -> str:
    """Hardware segment of artifact ids compiled or measured here: ``cpu_<isa>`` or ``cuda_sm<NN>``."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"cuda_sm{major}{minor}"
    return f"cpu_{host_cpu_isa().lower() or 'default'}"


def _isa_family(isa: str) -> str:
    first = isa.split()[0].upper() if isa.split() else ""
    return next((fam for fam in ("AVX512", "AVX2") if first.startswith(fam)), first)


def check_cpu_isa(required: str, available: str | None = None) -> None:
    """Raise KernelHardwareError when a binary built for ISA ``required`` cannot run on ``available``."""
    have = _isa_family(available if available is not None else host_cpu_isa())
    need = _isa_family(required)
    if need in _ISA_RANK and have in _ISA_RANK:
        if _ISA_RANK[need] <= _ISA_RANK[have]:
            return
    elif need == have:
        return
    raise KernelHardwareError(f"kernel was compiled for CPU ISA {required!r}; this host runs {have or 'DEFAULT'}")


def check_hardware(manifest: KernelManifest) -> None:
    """Raise KernelHardwareError unless this process can run ``manifest``'s program (no compiler involved)."""
    if manifest.device == "cuda":
        if not torch.cuda.is_available():
            raise KernelHardwareError(f"{manifest.artifact_id} needs CUDA; this process has no GPU")
        have = "{}.{}".format(*torch.cuda.get_device_capability())
        if manifest.compute_capability and manifest.compute_capability != have:
            raise KernelHardwareError(f"{manifest.artifact_id} was built for compute capability "
                                      f"{manifest.compute_capability}; this GPU is {have}")
    elif manifest.pipeline in AOTI_PIPELINES:
        check_cpu_isa(manifest.cpu_isa)
