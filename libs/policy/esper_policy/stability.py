"""A region's stability over windows: the "are we safe?" signals of seed 001 §3 B, EWMA-smoothed.

One :class:`StabilityTracker` per region is fed one :class:`StabilityObservation` per window (an epoch
boundary) and returns :class:`StabilitySignals`:

* **rollback rate**: EWMA of "this window rolled back" (Tolaria restored a checkpoint);
* **anomaly rate**: EWMA of "this window saw an anomaly": a non-finite loss or gradient, a kernel error,
  or a *ratio explosion* (the loss or the region's gradient norm jumping by ``explosion_ratio`` or more
  over the previous window, or collapsing by as much);
* **loss jitter**: the standard deviation of the window-to-window relative loss changes over the last
  ``history`` windows (a loss that zig-zags is unstable even when its trend is flat);
* **persistent spike**: the loss stays above ``spike_ratio`` × its pre-spike baseline for ``persistent_windows``
  windows in a row. A single-step spike does not count: one bad batch is noise, not a crisis.

``score`` folds them into one number in [0, 1] (1 = calm), which Narset's allocator takes as its stability
input; ``bad_windows`` counts consecutive windows whose score is below ``bad_below``, the evidence a Narset
worker needs before it asks Tamiyo for a scaffold.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class StabilityConfig:
    """Thresholds and weights of the stability score."""

    smoothing: float = 0.4  # EWMA weight of the newest window for the rates
    history: int = 6  # windows of relative loss changes the jitter is measured over
    explosion_ratio: float = 3.0  # a jump (or collapse) by this factor between windows is an anomaly
    spike_ratio: float = 1.3  # a loss this much above its baseline is spiking
    persistent_windows: int = 2  # ... and a spike lasting this many windows in a row is persistent
    jitter_at_full: float = 0.15  # a relative-change standard deviation of 15% counts as fully jittery
    rollback_weight: float = 0.8  # a rollback is the trainer declaring a window failed: the strongest evidence
    anomaly_weight: float = 0.5
    jitter_weight: float = 0.3
    spike_weight: float = 0.5
    bad_below: float = 0.5  # a window scoring below this is "bad"

    def __post_init__(self) -> None:
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.history < 2 or self.persistent_windows < 1:
            raise ValueError("history must be >= 2 and persistent_windows >= 1")
        if self.explosion_ratio <= 1 or self.spike_ratio <= 1 or self.jitter_at_full <= 0:
            raise ValueError("explosion_ratio and spike_ratio must exceed 1, jitter_at_full must be positive")


@dataclass(frozen=True)
class StabilityObservation:
    """What one window says about a region's safety."""

    loss: float  # the window's (validation) loss; may be NaN or infinite, which is itself an anomaly
    rolled_back: bool = False
    kernel_errors: int = 0  # new kernel failures in the region this window
    gradient_norm: float | None = None  # the region's largest gradient norm, when known


@dataclass(frozen=True)
class StabilitySignals:
    """A region's stability after one window."""

    rollback_rate: float
    anomaly_rate: float
    loss_jitter: float
    spike_windows: int  # consecutive windows the loss has been above spike_ratio × baseline
    persistent_spike: bool
    score: float  # 1 = calm, 0 = melting down
    bad_windows: int  # consecutive windows with score < bad_below


def _clamp(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


def _exploded(previous: float | None, current: float, ratio: float) -> bool:
    """Whether ``current`` is ``ratio`` times above or below ``previous`` (both positive)."""
    if previous is None or previous <= 0 or current <= 0:
        return False
    r = current / previous
    return r >= ratio or r <= 1 / ratio


class StabilityTracker:
    """One region's stability signals, window by window (state is plain JSON, for checkpoints and handovers)."""

    def __init__(self, config: StabilityConfig | None = None) -> None:
        self.config = config or StabilityConfig()
        self.rollback_rate = 0.0
        self.anomaly_rate = 0.0
        self.changes: deque[float] = deque(maxlen=self.config.history)
        self.last_loss: float | None = None
        self.last_gradient: float | None = None
        self.baseline: float | None = None  # the loss before the current spike began (EWMA of calm windows)
        self.spike_windows = 0
        self.bad_windows = 0
        self.last: StabilitySignals | None = None

    def observe(self, obs: StabilityObservation) -> StabilitySignals:
        """Fold one window in and return the signals after it."""
        c = self.config
        finite = math.isfinite(obs.loss)
        gradient_finite = obs.gradient_norm is None or math.isfinite(obs.gradient_norm)
        anomaly = (not finite or not gradient_finite or obs.kernel_errors > 0
                   or (finite and _exploded(self.last_loss, obs.loss, c.explosion_ratio))
                   or (obs.gradient_norm is not None and gradient_finite
                       and _exploded(self.last_gradient, obs.gradient_norm, c.explosion_ratio)))
        self.rollback_rate += c.smoothing * (float(obs.rolled_back) - self.rollback_rate)
        self.anomaly_rate += c.smoothing * (float(anomaly) - self.anomaly_rate)

        if finite:
            if self.last_loss is not None and self.last_loss > 0:
                self.changes.append((obs.loss - self.last_loss) / self.last_loss)
            spiking = self.baseline is not None and obs.loss > c.spike_ratio * self.baseline
            self.spike_windows = self.spike_windows + 1 if spiking else 0
            if not spiking:  # the baseline follows calm windows only, so a long spike does not become normal
                self.baseline = obs.loss if self.baseline is None else 0.5 * (self.baseline + obs.loss)
            self.last_loss = obs.loss
        else:
            self.spike_windows += 1  # a non-finite loss is as bad as a spike
        if obs.gradient_norm is not None and gradient_finite:
            self.last_gradient = obs.gradient_norm

        jitter = statistics.pstdev(self.changes) if len(self.changes) >= 2 else 0.0
        persistent = self.spike_windows >= c.persistent_windows
        badness = (c.rollback_weight * self.rollback_rate + c.anomaly_weight * self.anomaly_rate
                   + c.jitter_weight * _clamp(jitter / c.jitter_at_full, 0.0, 1.0)
                   + c.spike_weight * float(persistent))
        score = 1.0 - _clamp(badness, 0.0, 1.0)
        self.bad_windows = self.bad_windows + 1 if score < c.bad_below else 0
        self.last = StabilitySignals(rollback_rate=self.rollback_rate, anomaly_rate=self.anomaly_rate,
                                     loss_jitter=jitter, spike_windows=self.spike_windows,
                                     persistent_spike=persistent, score=score, bad_windows=self.bad_windows)
        return self.last

    def state_dict(self) -> dict[str, Any]:
        """The tracker's memory as plain JSON."""
        return {"rollback_rate": self.rollback_rate, "anomaly_rate": self.anomaly_rate,
                "changes": list(self.changes), "last_loss": self.last_loss, "last_gradient": self.last_gradient,
                "baseline": self.baseline, "spike_windows": self.spike_windows, "bad_windows": self.bad_windows,
                "last": asdict(self.last) if self.last is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.rollback_rate = float(state["rollback_rate"])
        self.anomaly_rate = float(state["anomaly_rate"])
        self.changes = deque((float(x) for x in state["changes"]), maxlen=self.config.history)
        self.last_loss = state["last_loss"]
        self.last_gradient = state["last_gradient"]
        self.baseline = state["baseline"]
        self.spike_windows = int(state["spike_windows"])
        self.bad_windows = int(state["bad_windows"])
        self.last = StabilitySignals(**state["last"]) if state.get("last") else None
