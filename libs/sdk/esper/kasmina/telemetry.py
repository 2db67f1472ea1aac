"""Health telemetry of seed chunks: sampled activation statistics, gradient norms, events and transitions.

Every ``telemetry_every`` forwards the layer hands its host output to a :class:`HealthAccumulator`, which
adds *sufficient statistics* to small buffers on the activation's device with a fixed dozen tensor ops
(no host synchronisation): per-unit sums of x and x², per-unit maxima, near-zero counts, and the
cross-products of up to 16 units per chunk. Everything is turned into per-chunk numbers once per epoch,
at the boundary. Definitions (over all rows sampled in the epoch; a row is one batch/token/pixel position;
``eps`` is 1% of the output's RMS, so nothing depends on the layer's scale):

* ``chunk_variance``: mean over the chunk's units of each unit's variance.
* ``dead_node_ratio``: fraction of units never above ``eps`` (dead under a rectifier).
* ``activation_sparsity``: fraction of entries with ``|x| < eps`` (eps of the sample they were in).
* ``avg_correlation``: mean off-diagonal Pearson correlation among up to 16 evenly spaced units of the chunk.
* ``gradient_norm``: root-mean-square over sampled steps of the L2 norm of the loss gradient reaching the
  chunk of the host output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from esper_contracts import SeedId, SeedStage

from .blending import ChunkLayout

_CORR_UNITS = 16
RECON_DECAY = 0.9


class EventKind(StrEnum):
    """What a SeedEvent reports (stage changes are SeedTransitions, not events)."""

    LOADED = "loaded"
    LOAD_FAILED = "load_failed"
    RUNTIME_ERROR = "runtime_error"
    READY = "ready"
    REDIRECTED = "redirected"


@dataclass(frozen=True)
class SeedEvent:
    """Something that happened to a seed outside the command flow (reported through ``drain_events``)."""

    slot: str
    seed_index: int
    kind: EventKind
    message: str
    epoch: int

    @property
    def seed_id(self) -> str:
        """``<layer path>[<index>]``."""
        return SeedId(self.slot, self.seed_index)


@dataclass(frozen=True)
class SeedTransition:
    """One stage change of one seed, reported through ``drain_transitions`` in the order Kasmina made them.

    ``commanded`` is False for the moves Kasmina makes on its own at a boundary (a failed kernel culled,
    an embargo lifted, a cancelled slot released); ``reason`` is then Kasmina's, otherwise the command's.
    ``kernel_artifact_id`` is the kernel the seed holds after the move (the last one it held, when culled).
    """

    layer_id: str
    seed_index: int
    old: SeedStage
    new: SeedStage
    reason: str
    epoch: int
    kernel_artifact_id: str | None
    commanded: bool

    @property
    def seed_id(self) -> str:
        """``<layer path>[<index>]``."""
        return SeedId(self.layer_id, self.seed_index)


@dataclass(frozen=True)
class HealthSummary:
    """One epoch's per-chunk health (arrays of length chunks); ``sampled``/``graded`` say which chunks have data."""

    sampled: bool
    graded: bool
    variance: np.ndarray
    dead_ratio: np.ndarray
    sparsity: np.ndarray
    correlation: np.ndarray
    gradient_norm: np.ndarray


class HealthAccumulator:
    """Sufficient statistics of the sampled host outputs and gradients of one epoch."""

    def __init__(self, layout: ChunkLayout, max_rows: int) -> None:
        self.layout = layout
        self.max_rows = max_rows
        f, n = layout.features, len(layout.bounds)
        member = torch.zeros(f, n)  # member[u, c] = 1 when unit u is in chunk c
        for i, (lo, hi) in enumerate(layout.bounds):
            member[lo:hi, i] = 1.0
        self._member = member
        m = min(_CORR_UNITS, min(hi - lo for lo, hi in layout.bounds))
        # m units spread evenly over each chunk, chunk-major: (chunks * m) indices into the feature axis
        self._corr_idx = torch.tensor(
            [lo + (k * (hi - lo)) // m for lo, hi in layout.bounds for k in range(m)], dtype=torch.long)
        self._m = m
        self.sums = torch.zeros(3, f)  # per unit: sum x, sum x^2, count |x| <= eps
        self.maxes = torch.full((f,), -math.inf)
        self.cross = torch.zeros(n, m, m)  # per chunk: sum of x_i * x_j over the sampled units
        self.grad_sq = torch.zeros(f)
        self.recon = torch.zeros(n)  # moving average of relative reconstruction MSE (TRAINING)
        self.rows = 0
        self.samples = 0
        self.grad_samples = 0

    def _on(self, device: torch.device) -> None:
        if self.sums.device != device:
            for name in ("_member", "_corr_idx", "sums", "maxes", "cross", "grad_sq", "recon"):
                setattr(self, name, getattr(self, name).to(device))

    @torch.no_grad()
    def sample(self, out: torch.Tensor) -> None:
        """Accumulate the statistics of one host output (about a dozen ops, no synchronisation)."""
        self._on(out.device)
        x = self.layout.to_rows(out.detach()).float()
        if x.shape[0] > self.max_rows:
            x = x[:: x.shape[0] // self.max_rows][: self.max_rows]
        rows = x.shape[0]
        x2 = x * x
        # |x| < 1% of this sample's RMS, counted in float arithmetic (a bool sum over dim 0 is ~3x slower on CPU)
        near_zero = (x2.mean() * 1e-4 - x2).clamp_min_(0.0).sign_().sum(0)
        self.sums += torch.stack((x.sum(0), x2.sum(0), near_zero))
        torch.maximum(self.maxes, x.amax(0), out=self.maxes)
        xs = x.index_select(1, self._corr_idx).view(rows, -1, self._m).transpose(0, 1)  # (chunks, rows, m)
        self.cross.baddbmm_(xs.transpose(1, 2), xs)
        self.rows += rows
        self.samples += 1

    @torch.no_grad()
    def add_gradient(self, grad: torch.Tensor) -> None:
        """Accumulate per-unit squared gradients (called from a hook on the host output)."""
        self._on(grad.device)
        self.grad_sq += self.layout.to_rows(grad).float().pow(2).sum(0)
        self.grad_samples += 1

    @torch.no_grad()
    def add_reconstruction(self, i: int, relative_mse: torch.Tensor) -> None:
        """Fold one step's relative reconstruction MSE of seed ``i`` into its moving average."""
        self.recon[i].mul_(RECON_DECAY).add_(relative_mse.detach().float(), alpha=1 - RECON_DECAY)

    def reset_reconstruction(self, i: int) -> None:
        """Start seed ``i``'s reconstruction average afresh (on entering TRAINING)."""
        self.recon[i] = 0.0

    def reconstruction(self) -> np.ndarray:
        """The reconstruction moving averages (one device sync)."""
        return self.recon.cpu().double().numpy()

    @torch.no_grad()
    def drain(self) -> HealthSummary:
        """Turn the epoch's statistics into per-chunk health (one device sync) and start a new epoch."""
        n, m = len(self.layout.bounds), self._m
        sums, maxes, cross, grad_sq = (t.double().cpu() for t in (self.sums, self.maxes, self.cross, self.grad_sq))
        member = self._member.double().cpu()
        size = member.sum(0)
        rows = max(self.rows, 1)
        mean = sums[0] / rows
        var = (sums[1] / rows - mean * mean).clamp_min(0.0)
        eps = 0.01 * math.sqrt(float(sums[1].sum()) / (rows * self.layout.features))
        dead = (maxes <= eps).double()
        sparsity = sums[2] / rows
        idx = self._corr_idx.cpu()
        mu = mean[idx].view(n, m)
        cov = cross / rows - mu.unsqueeze(2) * mu.unsqueeze(1)
        std = cov.diagonal(dim1=1, dim2=2).clamp_min(0.0).sqrt()
        denom = std.unsqueeze(2) * std.unsqueeze(1)
        corr = torch.where(denom > 1e-12, cov / denom.clamp_min(1e-12), torch.zeros_like(cov)).clamp(-1.0, 1.0)
        off = corr.sum((1, 2)) - corr.diagonal(dim1=1, dim2=2).sum(1)
        summary = HealthSummary(
            sampled=self.samples > 0, graded=self.grad_samples > 0,
            variance=((var @ member) / size).numpy(), dead_ratio=((dead @ member) / size).numpy(),
            sparsity=((sparsity @ member) / size).numpy(),
            correlation=(off / (m * (m - 1)) if m >= 2 else torch.zeros(n)).numpy(),
            gradient_norm=((grad_sq @ member) / max(self.grad_samples, 1)).sqrt().numpy(),
        )
        self.sums.zero_()
        self.maxes.fill_(-math.inf)
        self.cross.zero_()
        self.grad_sq.zero_()
        self.rows = self.samples = self.grad_samples = 0
        return summary

    _TENSORS = ("sums", "maxes", "cross", "grad_sq", "recon")

    def state(self) -> dict[str, torch.Tensor | int]:
        """Everything accumulated so far, on CPU (for checkpoints)."""
        out: dict[str, torch.Tensor | int] = {k: getattr(self, k).detach().cpu().clone() for k in self._TENSORS}
        out.update(rows=self.rows, samples=self.samples, grad_samples=self.grad_samples)
        return out

    def load(self, state: dict[str, torch.Tensor | int]) -> None:
        """Restore :meth:`state` (tensors keep their current device)."""
        for k in self._TENSORS:
            saved = state[k]
            assert isinstance(saved, torch.Tensor)
            current = getattr(self, k)
            if saved.shape != current.shape:
                raise ValueError(f"health accumulator {k} of shape {tuple(saved.shape)} does not fit "
                                 f"{tuple(current.shape)}")
            setattr(self, k, saved.to(current.device, current.dtype).clone())
        self.rows, self.samples, self.grad_samples = (int(state[k]) for k in ("rows", "samples", "grad_samples"))


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
