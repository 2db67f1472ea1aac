"""Tamiyo v2: a learned policy picks the action, the heuristic keeps the lifecycle safe.

At each boundary the policy builds seed 004's observation, masks the actions that cannot be carried
out (a slot that is not dormant and eligible, a blueprint with no fitting kernel, the concurrency cap),
and asks its *actor* for one factored action: the NumPy network of a served artifact
(:class:`~esper_policy.network.PolicyNetwork`), or Simic's agent while it trains.

The heuristic stays in charge of the rest and holds a veto:

* every live seed is still steered by the heuristic's readiness moves and gates (a regression is culled
  whatever the network says);
* a dangerous action becomes WAIT and is counted as a veto: germinating during a rollback storm (a
  rollback in the last ``VETO_ROLLBACK_WINDOW`` epochs), before the warm-up or after the last
  germination epoch; culling a seed in its first epoch; fossilizing (ADVANCE) a seed that is below its
  baseline by more than the cull tolerance.

An action the mask forbids (possible only from an external actor) is a no-op, counted as invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from esper_contracts import (
    ACTIVE_STAGES,
    AdaptationSignal,
    CompiledKernelArtifact,
    FieldReport,
    KasminaControlCommand,
    Outcome,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
)

from .base import Adaptation, next_stage
from .config import TamiyoConfig
from .heuristic import HeuristicPolicy
from .network import PolicyNetwork
from .observation import BLUEPRINTS, MAX_SLOTS, N_ACTIONS, Action, ObservationBuilder, Op, blueprint_index, decode
from .protocols import KernelSelector

#: A germination within this many epochs of a rollback is vetoed.
VETO_ROLLBACK_WINDOW = 3

Actor = Callable[[list[float], list[bool]], int]


class LearnedPolicy(HeuristicPolicy):
    """The network (or an external actor) decides; the heuristic steers live seeds and vetoes danger."""

    def __init__(self, config: TamiyoConfig | None = None, kernels: KernelSelector | None = None, *,
                 network: PolicyNetwork | None = None, actor: Actor | None = None) -> None:
        super().__init__(config, kernels)
        if actor is None and network is None:
            raise ValueError("LearnedPolicy needs a network (a policy artifact) or an actor")
        self.network = network
        self.actor: Actor = actor if actor is not None else network.act  # type: ignore[union-attr]
        self.builder = ObservationBuilder()
        self.vetoes = 0
        self.invalid = 0
        self.veto_log: list[str] = []
        self.last_observation: list[float] = []
        self.last_mask: list[bool] = []
        self.last_action = Action(Op.WAIT)  # what the actor chose
        self.last_applied = Action(Op.WAIT)  # what was carried out after mask and veto
        self._rollbacks: list[int] = []
        self._chosen = Action(Op.WAIT)
        self._slots: list[SeedTelemetry] = []
        self._kernels_by_slot: list[dict[int, CompiledKernelArtifact]] = []

    # ------------------------------------------------------------------------------------------ the boundary

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """Observe, mask, ask the actor, apply the veto, then let the heuristic machinery issue the commands."""
        self._epoch, self._hardware = packet.epoch, packet.hardware
        observation = self.builder.observe(packet)
        mask = self.action_mask(packet)
        chosen = decode(self.actor(observation, mask))
        applied = chosen
        if not mask[chosen.encode()]:
            self.invalid += 1
            self.veto_log.append(f"epoch {packet.epoch}: invalid {chosen.describe()} ignored")
            applied = Action(Op.WAIT)
        else:
            why = self.veto_reason(chosen, packet)
            if why is not None:
                self.vetoes += 1
                self.veto_log.append(f"epoch {packet.epoch}: vetoed {chosen.describe()}: {why}")
                applied = Action(Op.WAIT)
        self.veto_log = self.veto_log[-50:]
        self.last_observation, self.last_mask, self.last_action, self.last_applied = observation, mask, chosen, applied
        self._chosen = applied
        return super().decide(packet)

    def action_mask(self, packet: SystemStatePacket) -> list[bool]:
        """Which of the ``N_ACTIONS`` actions can be carried out at this boundary (WAIT always can)."""
        mask = [False] * N_ACTIONS
        mask[0] = True
        self._slots = list(packet.seeds)[:MAX_SLOTS]
        self._kernels_by_slot = []
        live = sum(1 for t in packet.seeds if t.stage in ACTIVE_STAGES)
        cap = self.config.max_germinations
        may_grow = live < self.config.max_concurrent_adaptations and (cap is None or self._germinations < cap)
        cache: dict[Any, list[CompiledKernelArtifact]] = {}
        for slot, t in enumerate(self._slots):
            kernels: dict[int, CompiledKernelArtifact] = {}
            if may_grow and t.stage is SeedStage.DORMANT and self._eligible(t):
                for artifact in self._candidate_kernels(t, cache):
                    kernels.setdefault(blueprint_index(artifact.tags), artifact)
                for b in kernels:
                    mask[Action(Op.GERMINATE, slot, b).encode()] = True
            self._kernels_by_slot.append(kernels)
            if t.stage in (SeedStage.EVALUATING, SeedStage.FINE_TUNING):
                mask[Action(Op.ADVANCE, slot).encode()] = True
            if t.stage in ACTIVE_STAGES:
                mask[Action(Op.CULL, slot).encode()] = True
        return mask

    def veto_reason(self, action: Action, packet: SystemStatePacket) -> str | None:
        """Why the heuristic refuses ``action`` now (None: allowed)."""
        cfg = self.config
        if action.op is Op.GERMINATE:
            if any(packet.epoch - e < VETO_ROLLBACK_WINDOW for e in self._rollbacks):
                return "rollback storm: a rollback in the last epochs"
            if packet.epoch < cfg.warmup_epochs:
                return f"warm-up (epoch {packet.epoch} < {cfg.warmup_epochs})"
            if cfg.last_germination_epoch is not None and packet.epoch > cfg.last_germination_epoch:
                return f"too late to finish a lifecycle (after epoch {cfg.last_germination_epoch})"
            return None
        if action.op is Op.WAIT or action.slot is None:
            return None
        t = self._slots[action.slot]
        rec = self._live.get(t.seed_id)
        if action.op is Op.CULL and (rec is None or packet.epoch - rec.germinated_epoch <= 1):
            return "culling a seed in its first epoch"
        regressed = rec is not None and packet.validation_metric < rec.baseline - cfg.cull_regression_tolerance
        if action.op is Op.ADVANCE and rec is not None and regressed:
            return f"fossilizing a regression ({packet.validation_metric:.4f} < baseline {rec.baseline:.4f})"
        return None

    # ------------------------------------------------------------------------------------------ the hooks

    def _may_germinate(self, packet: SystemStatePacket, live: int) -> bool:
        return self._chosen.op is Op.GERMINATE

    def _germinate(self, packet: SystemStatePacket, dormant: list[SeedTelemetry], live: int, metric: float
                   ) -> list[KasminaControlCommand]:
        action = self._chosen
        assert action.slot is not None and action.blueprint is not None
        t = self._slots[action.slot]
        artifact = self._kernels_by_slot[action.slot][action.blueprint]
        why = f"learned policy: {action.describe()}"
        return self._germinate_with(t, artifact, metric, why)

    def _steer(self, t: SeedTelemetry, rec: Adaptation, packet: SystemStatePacket, metric: float
               ) -> KasminaControlCommand | None:
        action = self._chosen
        chosen_here = action.slot is not None and action.slot < len(self._slots) and \
            self._slots[action.slot].seed_id == t.seed_id
        if chosen_here and action.op is Op.CULL:
            return self._end(t, rec, packet, Outcome.CULLED, "learned policy: cull")
        if chosen_here and action.op is Op.ADVANCE:
            target = next_stage(t.stage, rec.trainable)
            if target is SeedStage.FOSSILIZED:
                return self._end(t, rec, packet, Outcome.FOSSILIZED, "learned policy: fossilize")
            if target is not None:
                return self._advance(t, target, "learned policy: advance")
        return super()._steer(t, rec, packet, metric)

    def observe_outcomes(self, reports: Sequence[FieldReport]) -> None:
        """Remember rollbacks (the storm veto reads them), then the base bookkeeping."""
        for report in reports:
            if report.outcome is Outcome.ROLLED_BACK:
                self._rollbacks.append(self._epoch)
                self.builder.note_rollback(self._epoch)
        super().observe_outcomes(reports)

    # ------------------------------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, Any]:
        """Veto and invalid-action counts, and the network's version (reported with the run)."""
        return {"policy": "learned", "version": self.network.version if self.network else "external-actor",
                "vetoes": self.vetoes, "invalid_actions": self.invalid, "veto_log": list(self.veto_log[-10:])}

    def state_dict(self) -> dict[str, Any]:
        """Heuristic state plus the observation builder, rollbacks and counters."""
        state = super().state_dict()
        state["learned"] = {"builder": self.builder.state_dict(), "rollbacks": list(self._rollbacks),
                            "vetoes": self.vetoes, "invalid": self.invalid, "veto_log": list(self.veto_log)}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; a heuristic's state (Tamiyo switching policy) starts counts afresh."""
        super().load_state_dict(state)
        if "learned" not in state:
            return
        learned = state["learned"]
        self.builder.load_state_dict(learned["builder"])
        self._rollbacks = [int(e) for e in learned["rollbacks"]]
        self.vetoes, self.invalid = int(learned["vetoes"]), int(learned["invalid"])
        self.veto_log = [str(v) for v in learned["veto_log"]]


__all__ = ["BLUEPRINTS", "VETO_ROLLBACK_WINDOW", "Actor", "LearnedPolicy"]
