"""Control policies to compare Tamiyo against.

* :class:`RandomGerminationPolicy` grows a random eligible dormant seed with a random fitting kernel
  at random boundaries, and walks every seed to FOSSILIZED as soon as it is ready — no plateau
  detection, no health targeting, no gates. If the heuristic does no better than this, its
  judgement is worth nothing.
* :class:`NullPolicy` never does anything: the host-only baseline, trained through the same loop.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from esper_contracts import (
    AdaptationSignal,
    CompiledKernelArtifact,
    FieldReport,
    KasminaControlCommand,
    SeedTelemetry,
    SystemStatePacket,
)

from .base import PolicyBase
from .config import TamiyoConfig
from .protocols import KernelSelector


class RandomGerminationPolicy(PolicyBase):
    """Germinates at random (probability ``random_germination_probability`` per boundary), never judges."""

    def __init__(self, config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> None:
        super().__init__(config, kernels)
        self._rng = random.Random(self.config.seed)

    def _may_germinate(self, packet: SystemStatePacket, live: int) -> bool:
        # Draw every boundary, even when capped, so the random stream does not depend on the caps.
        draw = self._rng.random()
        return self._under_caps(live) and draw < self.config.random_germination_probability

    def _germinate(
        self, packet: SystemStatePacket, dormant: list[SeedTelemetry], live: int, metric: float
    ) -> list[KasminaControlCommand]:
        eligible = [t for t in dormant if self._eligible(t)]
        self._rng.shuffle(eligible)
        cache: dict[Any, list[CompiledKernelArtifact]] = {}
        for t in eligible[:8]:
            kernels = self._candidate_kernels(t, cache)
            if kernels:
                return self._germinate_with(t, self._rng.choice(kernels), metric, "random germination")
        return []

    def state_dict(self) -> dict[str, Any]:
        """Base state plus the generator's exact position (as JSON lists)."""
        state = super().state_dict()
        version, internal, gauss = self._rng.getstate()
        state["rng"] = [version, list(internal), gauss]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the base state and the generator."""
        super().load_state_dict(state)
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))


class NullPolicy:
    """Never germinates, never moves a seed: Esper's machinery with no controller in charge."""

    def __init__(self, config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> None:
        self.config = config or TamiyoConfig()

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """Always an empty signal."""
        return AdaptationSignal(epoch=packet.epoch)

    def observe_outcomes(self, reports: Sequence[FieldReport]) -> None:
        """Nothing to learn."""

    def drain_field_reports(self) -> list[FieldReport]:
        """Never any."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Stateless."""
