"""The profiler: latency, throughput, peak memory and how repeatable the measurement was.

The measurement loop, top to bottom:

1. warm up until the kernel has run ``warmup_calls`` times *and* ``warmup_s`` has passed (first calls
   allocate, fault pages in and spin up thread pools);
2. calibrate the cost of a call on fresh calls and size a round to last about ``round_s`` (timer noise
   and one-off hiccups shrink relative to it);
3. run rounds, timing every call; after ``min_rounds``, stop as soon as the rounds agree (coefficient of
   variation of the per-round medians below ``target_cv``) or the time budget is spent.

``measurement_cv`` is that coefficient of variation: how much an identical re-run would move the
reported latency. It is the robust form (1.4826 x MAD / median of the per-round medians), and medians
per round keep a single preempted call from deciding a round: on a shared CPU, a few rounds disturbed
by another process say nothing about the kernel.
Latency mean/p50/p99 come from every timed call; throughput from rounds' wall time.

Peak memory is what running the kernel adds: on GPU ``torch.cuda.max_memory_allocated`` around the
calls; on CPU the growth of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
while the kernel is loaded and run, falling back to the resident-set delta where that reset is refused.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ProfileSettings:
    """How hard the profiler tries."""

    warmup_calls: int = 20
    warmup_s: float = 0.2
    round_s: float = 0.05
    min_rounds: int = 7
    max_rounds: int = 60
    target_cv: float = 0.02
    budget_s: float = 8.0
    max_calls_per_round: int = 5000


@dataclass(frozen=True)
class LatencyProfile:
    """What the loop measured (milliseconds per call unless named otherwise)."""

    mean_ms: float
    p50_ms: float
    p99_ms: float
    throughput_per_s: float
    cv: float
    calls: int
    rounds: int


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_latency(fn: Callable[[], object], device: str = "cpu",
                    settings: ProfileSettings | None = None) -> LatencyProfile:
    """Time ``fn`` (one kernel call on a fixed input) as described in the module docstring."""
    s = settings or ProfileSettings()
    clock = time.perf_counter
    t0, calls = clock(), 0
    while calls < s.warmup_calls or clock() - t0 < s.warmup_s:
        fn()
        calls += 1
    _sync(device)
    # Calibrate on the median of fresh, individually timed calls rather than on the warm-up's average: one
    # stall (a neighbour's burst, a page-fault storm) would otherwise shrink every round to a few calls.
    singles: list[float] = []
    c0 = clock()
    while len(singles) < 20 or (len(singles) < 200 and clock() - c0 < s.round_s):
        a = clock()
        fn()
        _sync(device)
        singles.append(clock() - a)
    per_call = max(statistics.median(singles), 1e-7)
    n = int(min(max(s.round_s / per_call, 5), s.max_calls_per_round))

    samples: list[float] = []
    medians: list[float] = []
    busy = 0.0
    start = clock()
    cv = float("inf")
    while len(medians) < s.max_rounds:
        times = []
        r0 = clock()
        for _ in range(n):
            a = clock()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(clock() - a)
        busy += clock() - r0
        samples.extend(times)
        medians.append(statistics.median(times))
        if len(medians) >= s.min_rounds:
            cv = robust_cv(medians)
            if cv <= s.target_cv or clock() - start > s.budget_s:
                break
    if len(medians) < 2:
        cv = 0.0
    samples.sort()
    ms = [t * 1e3 for t in samples]
    return LatencyProfile(
        mean_ms=statistics.fmean(ms), p50_ms=_percentile(ms, 0.50), p99_ms=_percentile(ms, 0.99),
        throughput_per_s=len(samples) / busy if busy > 0 else 0.0, cv=cv, calls=len(samples), rounds=len(medians),
    )


def robust_cv(values: list[float]) -> float:
    """1.4826 x median absolute deviation / median: the coefficient of variation a normal sample would have,
    computed so that a few rounds disturbed by another process on the machine do not dominate it."""
    mid = statistics.median(values)
    if mid <= 0:
        return 0.0
    mad = statistics.median(abs(v - mid) for v in values)
    return 1.4826 * mad / mid


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# ---------------------------------------------------------------------------------------------- memory


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak bytes added while it is open (see the module docstring)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.peak_bytes = 0
        self._base = 0
        self._hwm = False

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._hwm = _reset_peak_rss()
            self._base = _proc_status_bytes("VmRSS") or 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated() - self._base)
            return
        end = _proc_status_bytes("VmHWM" if self._hwm else "VmRSS") or self._base
        self.peak_bytes = max(0, end - self._base)

    @property
    def peak_mb(self) -> float:
        """Peak in MiB."""
        return self.peak_bytes / (1024 * 1024)
