"""Tamiyo's control policies over contracts only: no torch, no SDK.

A policy reads a :class:`~esper_contracts.SystemStatePacket` at each epoch boundary and answers with an
:class:`~esper_contracts.AdaptationSignal`. Tolaria calls one in-process today; the Tamiyo service will
serve the same :class:`ControlPolicy` interface over the bus.
"""

from .base import Adaptation, PolicyBase, artifact_name, next_stage
from .baselines import NullPolicy, RandomGerminationPolicy
from .config import TamiyoConfig
from .heuristic import HeuristicPolicy, PlateauDetector, unhealthiness
from .protocols import ControlPolicy, KernelSelector
from .risk import kernel_risk


def build_policy(config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> ControlPolicy:
    """The policy named by ``config.policy`` ("heuristic", "random" or "none")."""
    config = config or TamiyoConfig()
    if config.policy == "heuristic":
        return HeuristicPolicy(config, kernels)
    if config.policy == "random":
        return RandomGerminationPolicy(config, kernels)
    return NullPolicy(config, kernels)


__all__ = [
    "Adaptation",
    "ControlPolicy",
    "HeuristicPolicy",
    "KernelSelector",
    "NullPolicy",
    "PlateauDetector",
    "PolicyBase",
    "RandomGerminationPolicy",
    "TamiyoConfig",
    "artifact_name",
    "build_policy",
    "kernel_risk",
    "next_stage",
    "unhealthiness",
]
