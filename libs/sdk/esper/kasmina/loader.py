"""Kernel loading off the training step: a small process-wide thread pool.

LOADING hands the artifact id to this pool; a worker asks the KernelSource for a fresh module and moves
it to the host's device and dtype. The layer only looks at the future at epoch boundaries, so the
training step never waits for a fetch, a parse or a build.

Three measures keep a load from slowing the steps it runs beside (docs/decisions/0007):

* loader threads run kernels single-threaded: OpenMP's thread count is a per-thread setting, and a new
  thread starts at the machine's core count, so the probe call of a freshly loaded AOTInductor kernel
  used to start an OpenMP team of its own whose threads competed with the training step (measured: the
  step during a load went from 6.8 ms to 13–26 ms; with one loader OpenMP thread, 6.9–8.4 ms);
* loader threads run at a lower CPU priority (``nice`` 10 for the thread, on Linux), so on a busy
  machine the training threads get the cores first. Not the lowest: a loader thread holding the GIL
  must still get the CPU back promptly, or the training thread waiting for the GIL waits longer;
* while any load is in flight the interpreter's thread switch interval drops from 5 ms to
  ``LOADING_SWITCH_INTERVAL_S``: a loader thread running Python (HTTP client, container checks) then
  gives the GIL back to the training thread within half a millisecond instead of five.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import nn

from esper_contracts import TensorInterface
from esper_kernels import KernelSource

log = logging.getLogger(__name__)

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
LOADER_THREADS = 2
#: CPU priority of loader threads (0 to leave them at the trainer's). At 19 a loader holding the GIL gets
#: ~1.5% of a core against one busy thread; at 10 about 10%: short GIL stalls, still well behind training.
LOADER_NICE = 10
#: The interpreter's switch interval while a load is in flight (None to leave it alone).
LOADING_SWITCH_INTERVAL_S: float | None = 0.0005

_in_flight = 0
_saved_interval: float | None = None
_flight_lock = threading.Lock()


#: OpenMP runtimes torch may have loaded, by soname (GNU's with the Linux wheels, Intel's, LLVM's).
_OPENMP_LIBRARIES = ("libgomp.so.1", "libiomp5.so", "libomp.so")


def single_threaded_openmp() -> bool:
    """Give the calling thread an OpenMP team of one (``omp_set_num_threads(1)`` is per thread).

    ``torch.set_num_threads`` is process-wide and would slow the trainer; this touches only the caller.
    Returns False when no OpenMP runtime is loaded (nothing to limit).
    """
    import ctypes

    for name in _OPENMP_LIBRARIES:
        try:
            runtime = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # only one already loaded
        except OSError:
            continue
        runtime.omp_set_num_threads(1)
        return True
    return False


def _prepare_loader_thread() -> None:
    """Pool initializer: kernels run single-threaded here, and the thread yields the CPU to training."""
    single_threaded_openmp()
    if LOADER_NICE <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICE)
    except OSError as exc:  # not permitted here: loads still work, at normal priority
        log.debug("could not lower the loader thread's priority: %s", exc)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=LOADER_THREADS, thread_name_prefix="kasmina-loader",
                                       initializer=_prepare_loader_thread)
        return _POOL


def _load_started() -> None:
    global _in_flight, _saved_interval
    with _flight_lock:
        _in_flight += 1
        if _in_flight == 1 and LOADING_SWITCH_INTERVAL_S is not None:
            _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_interval, LOADING_SWITCH_INTERVAL_S))


def _load_finished() -> None:
    global _in_flight, _saved_interval
    with _flight_lock:
        _in_flight -= 1
        if _in_flight == 0 and _saved_interval is not None:
            sys.setswitchinterval(_saved_interval)
            _saved_interval = None


def _tracked_build(source: KernelSource, artifact_id: str, device: torch.device, dtype: torch.dtype,
                   interface: TensorInterface | None) -> nn.Module:
    try:
        return build_kernel(source, artifact_id, device, dtype, interface)
    finally:
        _load_finished()


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
    _load_started()
    try:
        return _pool().submit(_tracked_build, source, artifact_id, device, dtype, interface)
    except BaseException:
        _load_finished()
        raise
