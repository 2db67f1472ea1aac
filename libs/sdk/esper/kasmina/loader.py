"""Kernel loading off the training step: a small process-wide thread pool.

LOADING hands the artifact id to this pool; a worker asks the KernelSource for a fresh module and moves
it to the host's device and dtype. The layer only looks at the future at epoch boundaries, so the
training step never waits for a fetch, a parse or a build.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

from esper_contracts import TensorInterface

from ..blueprints import KernelSource

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
LOADER_THREADS = 2


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=LOADER_THREADS, thread_name_prefix="kasmina-loader")
        return _POOL


def probe_input(interface: TensorInterface, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small random input of the interface's shape (batch 2; 3 tokens; 4x4 pixels)."""
    f = interface.features
    shape = {"BD": (2, f), "BTD": (2, 3, f), "BCHW": (2, f, 4, 4)}[interface.layout]
    return torch.randn(shape, device=device, dtype=dtype)


def build_kernel(source: KernelSource, artifact_id: str, device: torch.device, dtype: torch.dtype,
                 interface: TensorInterface | None = None) -> nn.Module:
    """Load ``artifact_id`` from ``source``, place it on ``device``/``dtype``, and when ``interface`` is given
    check on a probe input that it maps the chunk's shape to itself (raises ValueError if not)."""
    module = source.load(artifact_id)
    if not isinstance(module, nn.Module):
        raise TypeError(f"kernel source returned {type(module).__name__} for {artifact_id}, not an nn.Module")
    module.to(device=device, dtype=dtype)
    if interface is not None:
        was_training = module.training
        module.eval()
        x = probe_input(interface, device, dtype)
        with torch.no_grad():
            y = module(x)
        module.train(was_training)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"kernel {artifact_id} maps {tuple(x.shape)} to {got}; the chunk needs "
                             f"{interface.layout} with {interface.features} features in and out")
    return module


def submit_load(source: KernelSource, artifact_id: str, device: torch.device, dtype: torch.dtype,
                interface: TensorInterface | None = None) -> Future[nn.Module]:
    """Start loading in the background; the future holds the module or the exception that stopped it."""
    return _pool().submit(build_kernel, source, artifact_id, device, dtype, interface)
