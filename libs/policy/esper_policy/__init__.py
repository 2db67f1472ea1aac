"""Tamiyo's control policies over contracts only: no torch, no SDK.

A policy reads a :class:`~esper_contracts.SystemStatePacket` at each epoch boundary and answers with an
:class:`~esper_contracts.AdaptationSignal`. Tolaria calls one in-process today; the Tamiyo service will
serve the same :class:`ControlPolicy` interface over the bus.
"""

import json
from pathlib import Path

from .base import Adaptation, PolicyBase, artifact_name, next_stage
from .baselines import NullPolicy, RandomGerminationPolicy
from .config import TamiyoConfig
from .heuristic import HeuristicPolicy, PlateauDetector, unhealthiness
from .learned import LearnedPolicy
from .network import PolicyArtifactError, PolicyNetwork, load_artifact
from .protocols import ControlPolicy, KernelSelector
from .risk import kernel_risk


def build_policy(config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> ControlPolicy:
    """The policy named by ``config.policy`` ("heuristic", "random", "none" or "learned").

    "learned" reads the artifact at ``config.learned_policy_path``; a missing or bad artifact is a ValueError
    (PolicyArtifactError) that says why.
    """
    config = config or TamiyoConfig()
    if config.policy == "learned":
        return LearnedPolicy(config, kernels, network=read_artifact(config.learned_policy_path))
    if config.policy == "heuristic":
        return HeuristicPolicy(config, kernels)
    if config.policy == "random":
        return RandomGerminationPolicy(config, kernels)
    return NullPolicy(config, kernels)


def read_artifact(path: str | None) -> PolicyNetwork:
    """The network stored in a policy artifact file (JSON, no pickle)."""
    if not path:
        raise PolicyArtifactError("policy: learned needs tamiyo.learned_policy_path (a policy artifact file)")
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyArtifactError(f"cannot read the policy artifact {path}: {exc}") from None
    return load_artifact(document)


__all__ = [
    "Adaptation",
    "ControlPolicy",
    "HeuristicPolicy",
    "KernelSelector",
    "LearnedPolicy",
    "NullPolicy",
    "PlateauDetector",
    "PolicyArtifactError",
    "PolicyBase",
    "PolicyNetwork",
    "RandomGerminationPolicy",
    "TamiyoConfig",
    "artifact_name",
    "build_policy",
    "kernel_risk",
    "load_artifact",
    "next_stage",
    "read_artifact",
    "unhealthiness",
]
