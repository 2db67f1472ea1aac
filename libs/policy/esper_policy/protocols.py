"""The two interfaces a control policy lives between.

``ControlPolicy`` is what Tolaria calls at every epoch boundary; the Tamiyo service will later serve
exactly this interface over the bus, so every argument and result is a contract model or plain JSON.
``KernelSelector`` (declared in the contracts, re-exported here) is what a policy asks for kernels; the
in-process kernel library and Urza's client both satisfy it structurally, so this package needs neither
torch nor the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from esper_contracts import AdaptationSignal, FieldReport, KernelSelector, SystemStatePacket


@runtime_checkable
class ControlPolicy(Protocol):
    """Tamiyo's contract with Tolaria: one decision per epoch boundary, and a restorable state.

    ``state_dict`` must return plain JSON values only (dicts, lists, str, int, float, bool, None):
    Tolaria stores it inside checkpoints and restores it together with the model on rollback.
    """

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """Read one epoch's heartbeat and answer with the commands to apply at this boundary."""
        ...

    def observe_outcomes(self, reports: Sequence[FieldReport]) -> None:
        """Learn about outcomes decided outside the policy (a rollback, a kernel that crashed and was culled)."""
        ...

    def drain_field_reports(self) -> list[FieldReport]:
        """Field reports for adaptations the policy ended since the last call (each returned once)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the policy exactly, as plain JSON values."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`."""
        ...


__all__ = ["ControlPolicy", "KernelSelector"]
