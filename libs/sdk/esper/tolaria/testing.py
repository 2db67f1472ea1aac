"""Helpers for testing Tolaria on several ranks: run a function of a test file on N local ranks (gloo, CPU).

Ranks are forked from a fork server that imported torch (Dynamo included) and esper once, so each rank
starts in a fraction of a second. Plain ``fork`` from the test process is not usable: once a process has
run a backward pass, autograd refuses to run in its forked children; ``spawn`` pays the imports per rank.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import time
import traceback
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist

from ..launch import free_port
from .distributed import stop

#: What the fork server imports before forking ranks.
PRELOAD = ["torch", "torch._dynamo", "torch.distributed", "torch.nn.parallel", "esper", "esper.tolaria"]

_MODULES: dict[str, ModuleType] = {}


def _module(path: str) -> ModuleType:
    """The test file at ``path``, imported under a private name (test files are not importable packages)."""
    if path not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"_esper_ranks_{len(_MODULES)}", path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[path] = module
    return _MODULES[path]


def _rank_main(path: str, function: str, rank: int, world: int, port: int, out: Path, kwargs: dict[str, Any]) -> None:
    """One rank: join the group, run ``function(rank, out, **kwargs)``, save its result (or its error) for the test."""
    torch.set_num_threads(1)  # the ranks share the machine's cores
    try:
        target = getattr(_module(path), function)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        result: dict[str, Any] = {"value": target(rank, out, **kwargs)}
    except BaseException as exc:
        result = {"error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()}
    stop()
    torch.save(result, out / f"rank{rank}.result")


def run_ranks(path: str | Path, function: str, out: Path, *, world: int = 2, timeout_s: float = 120.0,
              preload: tuple[str, ...] = (), **kwargs: Any) -> list[dict[str, Any]]:
    """Run ``function`` of the Python file at ``path`` as ``function(rank, out, **kwargs)`` on ``world`` ranks;
    returns each rank's ``{"value": ...}`` or ``{"error": class name, "message": ..., "trace": ...}``.

    ``preload`` names more modules for the fork server to import (what the file imports; only the first call
    of a process starts the server). Fails (AssertionError) when a rank is still running after ``timeout_s``:
    a hang is a failure, not a wait.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, *preload])
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(str(path), function, rank, world, port, out, kwargs))
             for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"{len(hung)} rank(s) still running after {timeout_s} s"
    return [torch.load(out / f"rank{rank}.result", weights_only=False) for rank in range(world)]


__all__ = ["PRELOAD", "run_ranks"]
