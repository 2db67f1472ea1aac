"""The loss-spike guard: tells an epoch that diverged from one that was merely noisy.

A spike is judged against a robust baseline of the recent accepted epoch losses, their median and median
absolute deviation (MAD), so that one odd epoch in the window does not move the bar:

* **explosion** (roll back at once): a non-finite loss, or a loss above ``explosion_ratio`` × max(median,
  floor) — the floor keeps a loss of a few thousandths from calling an ordinary 0.3 an explosion;
* **spike**: a loss above ``ratio`` × median *and* above median + max(``mad_k`` × MAD, floor). A spike
  alone is tolerated (the epoch is kept, its loss stays out of the baseline); ``patience`` spikes in a row
  roll back to the checkpoint before the first of them.

Easy tasks whose loss falls to a few thousandths jump to 0.1–0.4 for an epoch now and then: ratio tests
alone call that a spike, and rolling back into the same data order replays it (docs/decisions/0012).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

#: MAD × this estimates the standard deviation of normally distributed losses.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Verdict:
    """What to do with one epoch: ``ok`` (keep it), ``tolerated`` (a lone spike: keep it, watch) or
    ``rollback``; ``streak`` is how many spiking epochs in a row this one ends (0 for ``ok``)."""

    action: Literal["ok", "tolerated", "rollback"]
    reason: str = ""
    streak: int = 0


class LossSpikeGuard:
    """Judges each epoch's training loss against the median + MAD of the last ``window`` accepted ones."""

    def __init__(self, *, window: int = 5, ratio: float = 3.0, floor: float = 0.1, mad_k: float = 5.0,
                 patience: int = 2, explosion_ratio: float = 10.0, losses: Iterable[float] = ()) -> None:
        self.ratio, self.floor, self.mad_k = ratio, floor, mad_k
        self.patience, self.explosion_ratio = patience, explosion_ratio
        self.losses: deque[float] = deque(losses, maxlen=window)
        self.streak = 0  # spiking epochs in a row so far

    def baseline(self) -> tuple[float, float] | None:
        """(median, MAD) of the recent accepted losses; None until two are known."""
        if len(self.losses) < 2:
            return None
        median = statistics.median(self.losses)
        return median, statistics.median(abs(x - median) for x in self.losses)

    def judge(self, loss: float) -> Verdict:
        """The verdict on one epoch's loss; an accepted epoch's loss joins the baseline."""
        if not math.isfinite(loss):
            return Verdict("rollback", f"non-finite training loss ({loss})", self.streak + 1)
        base = self.baseline()
        if base is None:
            self.losses.append(loss)
            return Verdict("ok")
        median, mad = base
        explosion = self.explosion_ratio * max(median, self.floor)
        if loss > explosion:
            return Verdict("rollback", f"loss spike (explosion): {loss:.4g} > {self.explosion_ratio:g} x "
                           f"max(median {median:.4g}, floor {self.floor:g})", self.streak + 1)
        bar = median + max(self.mad_k * MAD_TO_SIGMA * mad, self.floor)
        if loss > self.ratio * median and loss > bar:
            self.streak += 1
            reason = (f"loss spike: {loss:.4g} > median {median:.4g} + max({self.mad_k:g} MAD, {self.floor:g}) "
                      f"for {self.streak} epoch(s) in a row")
            if self.streak >= self.patience:
                return Verdict("rollback", reason, self.streak)
            return Verdict("tolerated", reason, self.streak)
        self.streak = 0
        self.losses.append(loss)
        return Verdict("ok")

    def reset(self, losses: Iterable[float]) -> None:
        """Start again from ``losses`` (a restored checkpoint's), with no spike streak."""
        self.losses = deque(losses, maxlen=self.losses.maxlen)
        self.streak = 0
