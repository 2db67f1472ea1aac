"""``esper train --nproc-per-node N``: N ranks of one run on this machine, without torchrun.

Each rank is a fresh ``python -m esper.cli`` process with the environment torchrun would give it (RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT on a free local port). The launcher
waits; when one rank fails it gives the others ``grace_s`` to notice on their own (a dead peer fails
their next collective at once) and then ends them, so nothing is left waiting. Its exit code is that of
the first rank to fail (128 + the signal for a rank killed by one), 0 when every rank finished.

Across machines, use torchrun instead: ``torchrun --nnodes M --nproc-per-node N ... -m esper.cli CONFIG``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

#: Seconds the other ranks get to stop by themselves after one fails, before they are terminated.
GRACE_S = 30.0


def free_port() -> int:
    """A TCP port nothing listens on now (the rendezvous of rank 0 binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_environments(nproc: int, port: int, base: Mapping[str, str] | None = None) -> list[dict[str, str]]:
    """The environment of each of ``nproc`` local ranks, as torchrun sets it."""
    base = dict(os.environ if base is None else base)
    return [{**base, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)} for r in range(nproc)]


def _code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def launch(args: Sequence[str], nproc: int, *, grace_s: float = GRACE_S) -> int:
    """Run ``esper train ARGS`` as ``nproc`` ranks here; returns the run's exit code (see the module docstring)."""
    return launch_command([sys.executable, "-m", "esper.cli", *args], nproc, grace_s=grace_s)


def launch_command(command: Sequence[str], nproc: int, *, grace_s: float = GRACE_S, poll_s: float = 0.2) -> int:
    """Run ``command`` as ``nproc`` local ranks (the environment says which); returns the first failure's code."""
    procs = [subprocess.Popen(command, env=env) for env in rank_environments(nproc, free_port())]
    first_failure: int | None = None
    deadline: float | None = None
    try:
        while any(p.poll() is None for p in procs):
            if first_failure is None:
                failed = [p for p in procs if p.returncode not in (None, 0)]
                if failed:
                    first_failure, deadline = _code(failed[0].returncode), time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll_s)
    finally:
        for p in procs:  # after the grace period, or on Ctrl-C: nothing outlives the launcher
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if first_failure is None:
        first_failure = next((_code(p.returncode) for p in procs if p.returncode != 0), 0)
    return first_failure


__all__ = ["GRACE_S", "free_port", "launch", "launch_command", "rank_environments"]
