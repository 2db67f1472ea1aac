"""A long-lived child process that loads and runs untrusted-quality kernels, so a crash rejects the kernel
instead of killing the worker.

An AOTInductor kernel is native code: a bad one can segfault or hang. The sandbox child is spawned once
(importing torch is slow) and reused for every job; when a kernel kills it or overruns the time limit,
the job gets a verdict (``SandboxCrash``/``SandboxTimeout``) and the next job gets a fresh child. Measuring
in a dedicated process also keeps the worker's own threads (bus client, HTTP) out of the timings.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

from esper_contracts import CompiledKernelArtifact
from esper_kernels import prewarm

from .evaluate import Evaluation, evaluate
from .profiler import ProfileSettings

log = logging.getLogger(__name__)


class SandboxCrash(RuntimeError):
    """The child died while evaluating a kernel (the message names the signal or exit code)."""


class SandboxTimeout(RuntimeError):
    """The child did not finish within the time limit and was killed."""


def _serve(conn: Connection) -> None:
    """Child main loop: receive a task, evaluate it, send the result; ``None`` ends the loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the child stops
    prewarm()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        record_json, data, tolerance, device, settings, seed = task
        try:
            record = CompiledKernelArtifact.model_validate_json(record_json)
            result = evaluate(record, data, tolerance, device, settings, seed)
            conn.send(("ok", result.to_dict()))
        except BaseException as exc:  # reported to the parent, which decides what it means
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class KernelSandbox:
    """Evaluate kernels in a child process (or in-process with ``isolated=False``, for tests)."""

    def __init__(self, *, isolated: bool = True, timeout_s: float = 600.0) -> None:
        self.isolated = isolated
        self.timeout_s = timeout_s
        self._proc: Any = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.crashes = 0

    def _ensure(self) -> Connection:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            ctx = mp.get_context("spawn")  # fork would copy the worker's threads and locks mid-flight
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=_serve, args=(child,), name="urabrask-sandbox", daemon=True)
            self._proc.start()
            child.close()
            self._conn = parent
        return self._conn

    def evaluate(self, record: CompiledKernelArtifact, data: bytes, tolerance: float, device: str = "cpu",
                 settings: ProfileSettings | None = None, seed: int = 0) -> Evaluation:
        """Run the gauntlet; raises SandboxCrash or SandboxTimeout when the kernel takes the child down."""
        if not self.isolated:
            return evaluate(record, data, tolerance, device, settings, seed)
        with self._lock:
            conn = self._ensure()
            conn.send((record.model_dump_json(), data, tolerance, device, settings, seed))
            try:
                ready = conn.poll(self.timeout_s)
                if ready:
                    status, payload = conn.recv()
            except (EOFError, OSError):
                ready, status, payload = True, "died", None
            if not ready:
                self._kill()
                raise SandboxTimeout(f"kernel evaluation did not finish within {self.timeout_s:.0f} s")
            if status == "died":
                code = self._reap()
                raise SandboxCrash(f"kernel crashed the sandbox process ({code})")
        if status == "error":
            raise RuntimeError(f"sandbox evaluation failed: {payload}")
        return Evaluation(**payload)

    def _reap(self) -> str:
        self.crashes += 1
        proc, self._proc, self._conn = self._proc, None, None
        proc.join(5)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._reap()

    def close(self) -> None:
        """Stop the child."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(None)
            if self._proc is not None:
                self._proc.join(5)
                if self._proc.is_alive():
                    self._proc.kill()
            self._proc, self._conn = None, None
