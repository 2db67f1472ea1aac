"""The structure-of-arrays state of every seed in one KasminaLayer: one float64 tensor, one row per field.

Row ``f`` column ``i`` is field ``f`` of seed ``i``. The tensor is the single source of truth for the
lifecycle (stage code, kernel slot, alpha, counters, embargo, errors, the epoch's health summary);
everything else a layer keeps (the active-seed plan, the all-dormant flag) is derived from it and
rebuilt whenever it changes. It lives in host memory, not on the accelerator: the forward pass reads a
stage or writes a counter every step, and a device tensor would cost a synchronisation each time. A
numpy view over the same memory makes those scalar accesses cheap. float64 holds every integer
field exactly (below 2**53), so a checkpoint round-trips bit-identically.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

from esper_contracts import SeedStage


class StateField(IntEnum):
    """Rows of the state tensor: one field of every seed."""

    STAGE = 0  # SeedStage.code
    KERNEL_SLOT = 1  # index into the layer's kernel table, -1 when the seed holds none
    ALPHA = 2  # blend weight of the seed's output
    STRATEGY = 3  # GraftingStrategy index for the current ramp
    STEPS_IN_STAGE = 4  # forwards counted by the stage's rule since entering it
    EPOCHS_IN_STAGE = 5  # epoch boundaries passed since entering the stage
    LAST_UPDATE_EPOCH = 6  # epoch of the last transition
    EMBARGO_UNTIL = 7  # epoch from which a culled slot may return to DORMANT; -1 when none
    ERROR_COUNT = 8  # kernel runtime / load errors of the current adaptation
    FAILED = 9  # 1 when the kernel failed: identity from then on, culled at the next boundary
    READY = 10  # is_ready_for_transition, refreshed at boundaries
    TRAINABLE = 11  # 1 when the loaded kernel has trainable parameters, -1 before loading
    LATENCY_US_SUM = 12  # sampled seed execution time this epoch
    LATENCY_SAMPLES = 13
    # The last epoch's health summary (folded in from the on-device accumulators at each boundary).
    VARIANCE = 14
    DEAD_RATIO = 15
    CORRELATION = 16
    SPARSITY = 17
    GRAD_NORM = 18
    RECON_LOSS = 19  # running reconstruction MSE relative to the chunk's variance (TRAINING)


_DEFAULTS = {StateField.STAGE: float(SeedStage.DORMANT.code), StateField.KERNEL_SLOT: -1.0,
             StateField.EMBARGO_UNTIL: -1.0, StateField.TRAINABLE: -1.0, StateField.LAST_UPDATE_EPOCH: 0.0}


class SeedStateTable:
    """The state tensor of ``n`` seeds plus typed accessors."""

    def __init__(self, n: int) -> None:
        self.tensor = torch.zeros(len(StateField), n, dtype=torch.float64)
        self._np: np.ndarray = self.tensor.numpy()  # shares memory with the tensor
        for i in range(n):
            self.reset(i)

    @property
    def n(self) -> int:
        """Number of seeds."""
        return self.tensor.shape[1]

    def reset(self, i: int) -> None:
        """Every field of seed ``i`` back to its DORMANT default (the epoch of the last update is kept)."""
        last = self._np[StateField.LAST_UPDATE_EPOCH, i]
        self._np[:, i] = 0.0
        for f, v in _DEFAULTS.items():
            self._np[f, i] = v
        self._np[StateField.LAST_UPDATE_EPOCH, i] = last

    def stage(self, i: int) -> SeedStage:
        """Current stage of seed ``i``."""
        return SeedStage.from_code(int(self._np[StateField.STAGE, i]))

    def get(self, f: StateField, i: int) -> float:
        """Field ``f`` of seed ``i``."""
        return float(self._np[f, i])

    def set(self, f: StateField, i: int, value: float) -> None:
        """Set field ``f`` of seed ``i``."""
        self._np[f, i] = value

    def add(self, f: StateField, i: int, value: float = 1.0) -> None:
        """Increment field ``f`` of seed ``i``."""
        self._np[f, i] += value

    def row(self, f: StateField) -> np.ndarray:
        """A writable view of field ``f`` for every seed."""
        return self._np[f]

    def load(self, tensor: torch.Tensor) -> None:
        """Copy a saved state tensor in (shape checked); values are copied bit for bit."""
        if tensor.shape != self.tensor.shape or tensor.dtype != torch.float64:
            raise ValueError(f"state tensor of shape {tuple(tensor.shape)} / {tensor.dtype} does not fit "
                             f"{tuple(self.tensor.shape)} / float64")
        self.tensor.copy_(tensor)
