"""``esper.TamiyoController``: Tamiyo in the trainer's process, choosing among the kernels the model can load."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from esper_contracts import AdaptationSignal, FieldReport, KernelSelector, SystemStatePacket
from esper_policy import ControlPolicy, TamiyoConfig, build_policy

from .kasmina import kasmina_layers


class TamiyoController:
    """The control policy ``config.policy`` names, over the kernel source the wrapped ``model`` loads from.

    Tamiyo and Kasmina must agree on where kernels come from (Tamiyo picks an artifact id, Kasmina loads it),
    so the controller asks the model's own seed slots rather than taking a second source. A ControlPolicy:
    pass it to :class:`esper.TolariaTrainer` as ``controller``.
    """

    def __init__(self, model: nn.Module, config: TamiyoConfig | None = None) -> None:
        layers = kasmina_layers(model)
        if not layers:
            raise ValueError("TamiyoController needs a wrapped model: call esper.wrap(model, config.kasmina) first")
        source = next(iter(layers.values())).kernels
        if not isinstance(source, KernelSelector):
            raise TypeError(f"the model's kernel source {type(source).__name__} cannot answer kernel queries; "
                            f"wrap with a library Tamiyo can query (LocalKernelLibrary, UrzaKernelSource)")
        self.policy: ControlPolicy = build_policy(config, source)

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """The policy's answer to one epoch's heartbeat."""
        return self.policy.decide(packet)

    def observe_outcomes(self, reports: Sequence[FieldReport]) -> None:
        """Pass outcomes decided outside the policy to it."""
        self.policy.observe_outcomes(reports)

    def drain_field_reports(self) -> list[FieldReport]:
        """Field reports of the adaptations the policy ended since the last call."""
        return self.policy.drain_field_reports()

    def stats(self) -> dict[str, Any] | None:
        """The policy's own counters (a learned policy's vetoes and invalid actions), None if it keeps none."""
        stats = getattr(self.policy, "stats", None)
        return stats() if callable(stats) else None

    def state_dict(self) -> dict[str, Any]:
        """The policy's state (checkpointed by Tolaria)."""
        return self.policy.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.policy.load_state_dict(state)
