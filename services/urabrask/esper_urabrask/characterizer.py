"""The characterizer: per-hardware distributions of every metric, and the tags they imply.

Tags are relative: a kernel is ``high_speed`` when its latency is in the fastest quarter of the kernels
measured on the same hardware, ``low_speed`` in the slowest quarter, ``medium_speed`` in between;
``high_memory``/``low_memory`` likewise for peak memory. Until a hardware target has ``min_population``
kernels the percentiles mean little, so a rule-based fallback applies: fixed thresholds per device class,
chosen to be conservative for blueprint-sized kernels. ``numerically_stable`` comes from the gatekeeper's
stability probe and does not depend on the population.

Each artifact counts once (a re-measurement replaces its earlier figures), so redelivered jobs do not
skew the distributions. The state is rebuilt at start-up from the reports Urza already holds.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

#: Rule-based thresholds until the population is large enough: (fast below, slow above) in ms, and
#: (small below, large above) in MB, per device class.
RULES = {
    "cpu": {"latency_ms": (0.1, 1.0), "memory_mb": (1.0, 64.0)},
    "cuda": {"latency_ms": (0.02, 0.2), "memory_mb": (4.0, 256.0)},
}
METRICS = ("latency_ms", "memory_mb", "drift")


@dataclass
class _Population:
    """One hardware target's figures: artifact id -> metrics, plus a sorted copy per metric."""

    by_artifact: dict[str, dict[str, float]] = field(default_factory=dict)
    sorted_values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})

    def put(self, artifact_id: str, metrics: dict[str, float]) -> None:
        old = self.by_artifact.get(artifact_id)
        if old is not None:
            for name, value in old.items():
                values = self.sorted_values[name]
                del values[bisect.bisect_left(values, value)]
        self.by_artifact[artifact_id] = dict(metrics)
        for name, value in metrics.items():
            bisect.insort(self.sorted_values[name], value)

    def percentile(self, metric: str, value: float) -> float:
        """Share of the population strictly below ``value``, plus half of the ties (mid-rank), in [0, 1]."""
        values = self.sorted_values[metric]
        if not values:
            return 0.5
        below = bisect.bisect_left(values, value)
        ties = bisect.bisect_right(values, value) - below
        return (below + 0.5 * ties) / len(values)


@dataclass(frozen=True)
class Characterization:
    """Tags, how they were decided, and the percentiles behind them (None under rules)."""

    tags: list[str]
    mode: str  # "rules" or "percentiles"
    latency_percentile: float | None
    memory_percentile: float | None


class Characterizer:
    """Thread-safe per-hardware distributions and tagging."""

    def __init__(self, min_population: int = 20, fast_quantile: float = 0.25, slow_quantile: float = 0.75) -> None:
        if not 0.0 < fast_quantile < slow_quantile < 1.0:
            raise ValueError(f"need 0 < fast_quantile < slow_quantile < 1, got {fast_quantile}, {slow_quantile}")
        self.min_population = min_population
        self.fast_q = fast_quantile
        self.slow_q = slow_quantile
        self._pop: dict[str, _Population] = {}
        self._lock = threading.Lock()

    def population(self, hardware: str) -> int:
        """How many distinct artifacts have been measured on ``hardware``."""
        with self._lock:
            pop = self._pop.get(hardware)
            return len(pop.by_artifact) if pop else 0

    def record(self, hardware: str, artifact_id: str, latency_ms: float, memory_mb: float, drift: float) -> None:
        """Add (or replace) one artifact's figures without tagging it (used to seed from Urza)."""
        with self._lock:
            self._pop.setdefault(hardware, _Population()).put(
                artifact_id, {"latency_ms": latency_ms, "memory_mb": memory_mb, "drift": drift})

    def characterize(self, hardware: str, artifact_id: str, latency_ms: float, memory_mb: float, drift: float,
                     stable: bool) -> Characterization:
        """Tag one artifact against the population measured before it, then add it to that population."""
        with self._lock:
            pop = self._pop.setdefault(hardware, _Population())
            others = len(pop.by_artifact) - (artifact_id in pop.by_artifact)
            if others >= self.min_population:
                lat_p = pop.percentile("latency_ms", latency_ms)
                mem_p = pop.percentile("memory_mb", memory_mb)
                speed = self._band(lat_p, "high_speed", "medium_speed", "low_speed")
                memory = self._band(mem_p, "low_memory", None, "high_memory")
                mode: str = "percentiles"
                lat_pct, mem_pct = lat_p, mem_p
            else:
                fast, slow = self._rules(hardware)["latency_ms"]
                small, large = self._rules(hardware)["memory_mb"]
                speed = "high_speed" if latency_ms < fast else "low_speed" if latency_ms > slow else "medium_speed"
                memory = "low_memory" if memory_mb < small else "high_memory" if memory_mb > large else None
                mode, lat_pct, mem_pct = "rules", None, None
            pop.put(artifact_id, {"latency_ms": latency_ms, "memory_mb": memory_mb, "drift": drift})
        tags = [t for t in (speed, memory) if t] + (["numerically_stable"] if stable else [])
        return Characterization(tags, mode, lat_pct, mem_pct)

    def _band(self, p: float, low: str, mid: str | None, high: str) -> str | None:
        return low if p <= self.fast_q else high if p >= self.slow_q else mid

    @staticmethod
    def _rules(hardware: str) -> dict[str, tuple[float, float]]:
        return RULES["cuda" if hardware.startswith(("cuda", "gpu")) else "cpu"]
