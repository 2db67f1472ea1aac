"""One artifact through the gauntlet: gatekeeper, then profiler. Pure measurement, no bus, no Urza.

This is what runs inside the sandbox process; its result is plain data so it can cross a pipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from esper_contracts import CompiledKernelArtifact
from esper_kernels import prewarm

from .gatekeeper import GateRejection, check, load_for_validation
from .profiler import PeakMemory, ProfileSettings, measure_latency


@dataclass(frozen=True)
class Evaluation:
    """The gauntlet's verdict and figures (all zeros when rejected)."""

    passed: bool
    reason: str | None = None
    drift: float = 0.0
    fp32_drift: float = 0.0
    stable: bool = False
    latency_ms_mean: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    throughput_per_s: float = 0.0
    memory_mb_peak: float = 0.0
    cv: float = 0.0
    calls: int = 0

    def to_dict(self) -> dict[str, object]:
        """Plain-data form (crosses the sandbox pipe)."""
        return asdict(self)


def evaluate(record: CompiledKernelArtifact, data: bytes, tolerance: float, device: str = "cpu",
             settings: ProfileSettings | None = None, seed: int = 0) -> Evaluation:
    """Gate the artifact; when it passes, profile it on its traced input shape."""
    prewarm()  # the loaders' one-time imports are the process's cost, not this kernel's memory
    try:
        with PeakMemory(device) as mem:
            loaded = load_for_validation(record, data, device)
            gate = check(loaded, tolerance, device, seed)
            x = torch.randn(*loaded.input_shape, generator=torch.Generator().manual_seed(seed)).to(device)
            module = loaded.module
            with torch.no_grad():
                module(x)
    except GateRejection as exc:
        return Evaluation(passed=False, reason=str(exc))

    def call() -> object:
        with torch.no_grad():
            return module(x)

    profile = measure_latency(call, device, settings)
    return Evaluation(
        passed=True, drift=gate.drift, fp32_drift=gate.fp32_drift, stable=gate.stable,
        latency_ms_mean=profile.mean_ms, latency_ms_p50=profile.p50_ms, latency_ms_p99=profile.p99_ms,
        throughput_per_s=profile.throughput_per_s, memory_mb_peak=mem.peak_mb, cv=profile.cv, calls=profile.calls,
    )
