"""Background kernel loads: off the training thread, single-threaded, at low CPU priority, short GIL switches."""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import pytest
import torch
from torch import nn

from esper.kasmina import loader


def _omp_max_threads() -> int | None:
    """This thread's OpenMP team size, from the runtime torch loaded (None when there is none)."""
    for name in loader._OPENMP_LIBRARIES:
        try:
            return int(ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY).omp_get_max_threads())
        except OSError:
            continue
    return None


class _Source:
    """A KernelSource whose load blocks until released, recording what the loader thread looked like."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: dict[str, object] = {}

    def load(self, artifact_id: str) -> nn.Module:
        self.seen["thread"] = threading.current_thread().name
        self.seen["interval"] = sys.getswitchinterval()
        if hasattr(os, "getpriority"):
            self.seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.seen["omp_threads"] = _omp_max_threads()
        self.release.wait(10)
        if artifact_id == "broken":
            raise RuntimeError("no such kernel")
        return nn.Identity()


def test_a_load_runs_on_a_low_priority_loader_thread_and_restores_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    source = _Source()
    future = loader.submit_load(source, "k", torch.device("cpu"), torch.float32)  # type: ignore[arg-type]
    source.release.set()
    assert isinstance(future.result(10), nn.Identity)
    assert str(source.seen["thread"]).startswith("kasmina-loader")
    assert source.seen["interval"] == pytest.approx(min(before, loader.LOADING_SWITCH_INTERVAL_S or before))
    if sys.platform == "linux":
        assert source.seen["nice"] == loader.LOADER_NICE
    if _omp_max_threads() is not None:  # kernels probed here run without an OpenMP team of their own
        assert source.seen["omp_threads"] == 1
    assert sys.getswitchinterval() == before  # back to normal once nothing is loading


def test_the_switch_interval_stays_short_until_the_last_load_ends_even_when_one_fails() -> None:
    before = sys.getswitchinterval()
    first, second = _Source(), _Source()
    a = loader.submit_load(first, "broken", torch.device("cpu"), torch.float32)  # type: ignore[arg-type]
    b = loader.submit_load(second, "k", torch.device("cpu"), torch.float32)  # type: ignore[arg-type]
    first.release.set()
    with pytest.raises(RuntimeError, match="no such kernel"):
        a.result(10)
    assert sys.getswitchinterval() < before  # the second load is still running
    second.release.set()
    b.result(10)
    assert sys.getswitchinterval() == before
