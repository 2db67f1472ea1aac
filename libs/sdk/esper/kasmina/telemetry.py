"""Health telemetry of seed chunks: sampled activation statistics, gradient norms, events.

Statistics are taken every ``telemetry_every`` forwards under ``torch.no_grad`` and accumulated in a
small float32 tensor on the activation's device, so sampling never waits for the accelerator; the
accumulator is read back once per epoch, at the boundary. Definitions (per chunk, ``eps`` = 1% of the
layer output's RMS, so they do not depend on the layer's scale):

* ``chunk_variance``: mean over the chunk's units of each unit's variance across rows.
* ``dead_node_ratio``: fraction of units never above ``eps`` in the sample (dead under a rectifier).
* ``activation_sparsity``: fraction of entries with ``|x| <= eps``.
* ``avg_correlation``: mean off-diagonal Pearson correlation among up to 16 of the chunk's units.
* ``gradient_norm``: L2 norm of the loss gradient reaching the chunk of the host output (sampled steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, StrEnum

import numpy as np
import torch

from .blending import ChunkLayout

_CORR_UNITS = 16


class EventKind(StrEnum):
    """What a SeedEvent reports."""

    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    RUNTIME_ERROR = "runtime_error"
    READY = "ready"
    CULLED = "culled"
    REDIRECTED = "redirected"
    DORMANT_AGAIN = "dormant_again"


@dataclass(frozen=True)
class SeedEvent:
    """Something that happened to a seed outside the command flow (reported through ``drain_events``)."""

    slot: str
    seed_index: int
    kind: EventKind
    message: str
    epoch: int


class H(IntEnum):
    """Rows of the on-device health accumulator."""

    VARIANCE = 0
    DEAD = 1
    CORRELATION = 2
    SPARSITY = 3
    SAMPLES = 4
    GRAD_NORM = 5
    GRAD_SAMPLES = 6
    RECON_EMA = 7  # exponential moving average of relative reconstruction MSE (TRAINING)


RECON_DECAY = 0.9


class HealthAccumulator:
    """Per-chunk statistics summed over the sampled forwards of one epoch."""

    def __init__(self, layout: ChunkLayout, max_rows: int) -> None:
        self.layout = layout
        self.max_rows = max_rows
        n = len(layout.bounds)
        self.acc = torch.zeros(len(H), n)
        unit_chunk = torch.empty(layout.features, dtype=torch.long)
        for i, (lo, hi) in enumerate(layout.bounds):
            unit_chunk[lo:hi] = i
        self._unit_chunk = unit_chunk
        self._sizes = torch.tensor([hi - lo for lo, hi in layout.bounds], dtype=torch.float32)
        m = min(_CORR_UNITS, min(hi - lo for lo, hi in layout.bounds))
        # m units spread evenly over each chunk: (chunks, m) indices into the feature axis
        self._corr_idx = torch.tensor(
            [[lo + (k * (hi - lo)) // m for k in range(m)] for lo, hi in layout.bounds], dtype=torch.long)

    def _on(self, device: torch.device) -> None:
        if self.acc.device != device:
            self.acc = self.acc.to(device)
            self._unit_chunk = self._unit_chunk.to(device)
            self._sizes = self._sizes.to(device)
            self._corr_idx = self._corr_idx.to(device)

    def _per_chunk(self, per_unit: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(self._sizes).index_add_(0, self._unit_chunk, per_unit)

    @torch.no_grad()
    def sample(self, out: torch.Tensor) -> None:
        """Accumulate the statistics of one host output."""
        self._on(out.device)
        x = self.layout.to_rows(out.detach()).float()
        if x.shape[0] > self.max_rows:
            x = x[:: x.shape[0] // self.max_rows][: self.max_rows]
        eps = 0.01 * x.pow(2).mean().sqrt() + 1e-12
        self.acc[H.VARIANCE] += self._per_chunk(x.var(0, unbiased=False)) / self._sizes
        self.acc[H.DEAD] += self._per_chunk((x.amax(0) <= eps).float()) / self._sizes
        self.acc[H.SPARSITY] += self._per_chunk((x.abs() <= eps).float().mean(0)) / self._sizes
        m = self._corr_idx.shape[1]
        if m >= 2 and x.shape[0] >= 2:
            xs = x[:, self._corr_idx]  # (rows, chunks, m)
            xs = xs - xs.mean(0)
            xs = xs / (xs.pow(2).mean(0).sqrt() + 1e-8)  # constant units become zeros: correlation 0
            c = torch.einsum("rnm,rnk->nmk", xs, xs) / x.shape[0]
            off = c.sum((1, 2)) - c.diagonal(dim1=1, dim2=2).sum(1)
            self.acc[H.CORRELATION] += (off / (m * (m - 1))).clamp(-1.0, 1.0)
        self.acc[H.SAMPLES] += 1

    @torch.no_grad()
    def add_gradient(self, grad: torch.Tensor) -> None:
        """Accumulate per-chunk gradient norms (called from a hook on the host output)."""
        self._on(grad.device)
        g = self.layout.to_rows(grad).float()
        self.acc[H.GRAD_NORM] += self._per_chunk(g.pow(2).sum(0)).sqrt()
        self.acc[H.GRAD_SAMPLES] += 1

    @torch.no_grad()
    def add_reconstruction(self, i: int, relative_mse: torch.Tensor) -> None:
        """Fold one step's relative reconstruction MSE of seed ``i`` into its moving average."""
        self.acc[H.RECON_EMA, i].mul_(RECON_DECAY).add_(relative_mse.detach().float(), alpha=1 - RECON_DECAY)

    def reset_reconstruction(self, i: int) -> None:
        """Start seed ``i``'s reconstruction average afresh (on entering TRAINING)."""
        self.acc[H.RECON_EMA, i] = 0.0

    def drain(self) -> np.ndarray:
        """Read the epoch's sums (one device sync) and zero them; the reconstruction average is kept."""
        values = self.acc.cpu().numpy().astype(np.float64)
        recon = self.acc[H.RECON_EMA].clone()
        self.acc.zero_()
        self.acc[H.RECON_EMA] = recon
        return values

    def state(self) -> torch.Tensor:
        """The accumulator as a CPU tensor (for checkpoints)."""
        return self.acc.detach().cpu().clone()

    def load(self, acc: torch.Tensor) -> None:
        """Restore a saved accumulator (kept on its current device)."""
        self.acc = acc.to(self.acc.device, torch.float32).clone()


def finite(value: float, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``value`` clipped to [lo, hi], with NaN and infinities mapped to 0 (contracts reject them)."""
    if not math.isfinite(value):
        return 0.0
    return min(max(value, lo), hi)


def recon_estimate(ema: float, steps: int) -> float:
    """Bias-corrected moving average after ``steps`` updates (inf when there were none)."""
    if steps <= 0:
        return math.inf
    return ema / (1 - RECON_DECAY ** steps)
