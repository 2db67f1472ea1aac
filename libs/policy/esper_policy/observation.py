"""Seed 004's observation vector and the factored action space, shared by recording, Simic and serving.

The observation is a fixed-length list of floats: global metrics (epoch, losses, accuracies, plateau
counter, short histories, recent rollbacks) followed by the same features for each of ``MAX_SLOTS``
seed slots (occupied, stage, alpha, epochs in stage, gradient norm, activation sparsity, improvement
since germination). Slots are the packet's seeds in packet order; a model with fewer slots is padded
with zeros, one with more shows only the first ``MAX_SLOTS`` (the others are never acted on).

The action is ``operation × slot × blueprint`` flattened into one integer:
``0`` WAIT, then GERMINATE(slot, blueprint), ADVANCE(slot), CULL(slot). Blueprints are named by the
kernel's first tag (its family) in :data:`BLUEPRINTS`; any other family is the last index.

Pure Python, no torch and no NumPy: Tolaria records it, Simic trains on it and Tamiyo serves with it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from esper_contracts import ACTIVE_STAGES, AdaptationSignal, CommandType, SeedStage, SystemStatePacket

#: Bumped whenever the vector's layout changes: a policy trained on another version is refused.
OBSERVATION_VERSION = 1
MAX_SLOTS = 4
BLUEPRINTS = ("bottleneck", "low_rank_adapter", "residual_mlp", "other")
HISTORY = 3  # epochs of val-accuracy and val-loss deltas in the vector
GLOBAL_FEATURES = 8 + 2 * HISTORY
SLOT_FEATURES = 9
OBSERVATION_SIZE = GLOBAL_FEATURES + MAX_SLOTS * SLOT_FEATURES
EPOCH_SCALE = 50.0  # epochs are divided by this so the features stay near [0, 1]

_STAGE_ORDER = [s for s in SeedStage]


class Op(IntEnum):
    """The operation part of an action."""

    WAIT = 0
    GERMINATE = 1
    ADVANCE = 2
    CULL = 3


N_ACTIONS = 1 + MAX_SLOTS * len(BLUEPRINTS) + 2 * MAX_SLOTS


@dataclass(frozen=True)
class Action:
    """One decoded action: an operation, its slot (None for WAIT) and blueprint (GERMINATE only)."""

    op: Op
    slot: int | None = None
    blueprint: int | None = None

    def encode(self) -> int:
        """The flat index of this action."""
        return encode(self.op, self.slot, self.blueprint)

    def describe(self) -> str:
        """A short readable form, e.g. ``GERMINATE(slot 1, residual_mlp)``."""
        if self.op is Op.WAIT:
            return "WAIT"
        if self.op is Op.GERMINATE:
            return f"GERMINATE(slot {self.slot}, {BLUEPRINTS[self.blueprint or 0]})"
        return f"{self.op.name}(slot {self.slot})"


def encode(op: Op, slot: int | None = None, blueprint: int | None = None) -> int:
    """Flatten (op, slot, blueprint) to an action index."""
    if op is Op.WAIT:
        return 0
    if slot is None or not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"{op.name} needs a slot in 0..{MAX_SLOTS - 1}, got {slot}")
    if op is Op.GERMINATE:
        if blueprint is None or not 0 <= blueprint < len(BLUEPRINTS):
            raise ValueError(f"GERMINATE needs a blueprint in 0..{len(BLUEPRINTS) - 1}, got {blueprint}")
        return 1 + slot * len(BLUEPRINTS) + blueprint
    base = 1 + MAX_SLOTS * len(BLUEPRINTS)
    return base + slot if op is Op.ADVANCE else base + MAX_SLOTS + slot


def decode(index: int) -> Action:
    """The action an index names (ValueError outside ``0..N_ACTIONS-1``)."""
    if not 0 <= index < N_ACTIONS:
        raise ValueError(f"action {index} outside 0..{N_ACTIONS - 1}")
    if index == 0:
        return Action(Op.WAIT)
    index -= 1
    if index < MAX_SLOTS * len(BLUEPRINTS):
        return Action(Op.GERMINATE, index // len(BLUEPRINTS), index % len(BLUEPRINTS))
    index -= MAX_SLOTS * len(BLUEPRINTS)
    return Action(Op.ADVANCE, index) if index < MAX_SLOTS else Action(Op.CULL, index - MAX_SLOTS)


def blueprint_index(tags: Sequence[str]) -> int:
    """The vocabulary index of a kernel from its tags (the first is its family)."""
    family = tags[0] if tags else ""
    return BLUEPRINTS.index(family) if family in BLUEPRINTS[:-1] else len(BLUEPRINTS) - 1


def _squash(value: float) -> float:
    """log1p for non-negative magnitudes (gradient norms, losses), so large values do not dominate."""
    return math.log1p(max(0.0, value)) if math.isfinite(value) else 0.0


class ObservationBuilder:
    """Turns each boundary's packet into seed 004's vector; keeps the short histories it needs.

    ``baselines`` (seed id -> metric when it germinated) gives "improvement since germination"; the
    builder tracks it itself from the stages it sees.
    """

    def __init__(self) -> None:
        self.best_val_loss = math.inf
        self.stale = 0
        self.val_acc: deque[float] = deque(maxlen=HISTORY + 1)
        self.val_loss: deque[float] = deque(maxlen=HISTORY + 1)
        self.rollback_epochs: list[int] = []
        self.baselines: dict[str, float] = {}

    def note_rollback(self, epoch: int) -> None:
        """A rollback happened at ``epoch`` (the vector counts those of the last 5 epochs)."""
        self.rollback_epochs.append(epoch)

    def observe(self, packet: SystemStatePacket) -> list[float]:
        """The vector for this boundary (call once per boundary, in order)."""
        metric = packet.validation_metric
        acc = packet.val_accuracy if packet.val_accuracy is not None else 0.0
        if packet.val_loss < self.best_val_loss - 1e-3:
            self.best_val_loss, self.stale = packet.val_loss, 0
        else:
            self.stale += 1
        self.val_acc.append(acc)
        self.val_loss.append(packet.val_loss)
        accs, losses = list(self.val_acc), list(self.val_loss)
        acc_deltas = [accs[i + 1] - accs[i] for i in range(len(accs) - 1)]
        loss_deltas = [losses[i + 1] - losses[i] for i in range(len(losses) - 1)]
        acc_deltas = [0.0] * (HISTORY - len(acc_deltas)) + acc_deltas
        loss_deltas = [0.0] * (HISTORY - len(loss_deltas)) + loss_deltas
        recent_rollbacks = sum(1 for e in self.rollback_epochs if packet.epoch - e < 5)
        train_acc = float(packet.metrics.get("train_accuracy", 0.0)) if packet.metrics else 0.0
        live = sum(1 for t in packet.seeds if t.stage in ACTIVE_STAGES)
        vector = [
            packet.epoch / EPOCH_SCALE,
            _squash(packet.train_loss),
            _squash(packet.val_loss),
            acc,
            train_acc,
            min(self.stale, 20) / 10.0,
            float(recent_rollbacks),
            float(live),
            *acc_deltas,
            *loss_deltas,
        ]
        for t in list(packet.seeds)[:MAX_SLOTS]:
            sid = t.seed_id
            active = t.stage in ACTIVE_STAGES
            if active and sid not in self.baselines:
                self.baselines[sid] = metric
            elif not active:
                self.baselines.pop(sid, None)
            gain = metric - self.baselines[sid] if active else 0.0
            vector += [
                1.0 if active else 0.0,
                _STAGE_ORDER.index(t.stage) / len(_STAGE_ORDER),
                1.0 if t.stage is SeedStage.DORMANT else 0.0,
                t.alpha,
                min(t.epochs_in_stage, 20) / 10.0,
                _squash(t.gradient_norm),
                t.activation_sparsity,
                gain,
                1.0 if t.is_ready_for_transition else 0.0,
            ]
        vector += [0.0] * (OBSERVATION_SIZE - len(vector))
        return vector

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON state (checkpointed with the policy)."""
        return {"best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss, "stale": self.stale,
                "val_acc": list(self.val_acc), "val_loss": list(self.val_loss),
                "rollback_epochs": list(self.rollback_epochs), "baselines": dict(self.baselines)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        best = state["best_val_loss"]
        self.best_val_loss = math.inf if best is None else float(best)
        self.stale = int(state["stale"])
        self.val_acc = deque((float(v) for v in state["val_acc"]), maxlen=HISTORY + 1)
        self.val_loss = deque((float(v) for v in state["val_loss"]), maxlen=HISTORY + 1)
        self.rollback_epochs = [int(e) for e in state["rollback_epochs"]]
        self.baselines = {k: float(v) for k, v in state["baselines"].items()}


def action_of_signal(packet: SystemStatePacket, signal: AdaptationSignal) -> Action:
    """The factored action a controller's signal amounts to (what an episode records as "the action taken").

    A GERMINATE wins over a CULL, a CULL over a FOSSILIZED advance; readiness advances (LOADING ->
    TRAINING ...) are the lifecycle's bookkeeping, not a decision, and count as WAIT. The blueprint is named
    by the tags the GERMINATE command carries (the kernel's, family first).
    """
    slots = {(t.layer_id, t.seed_index): i for i, t in enumerate(list(packet.seeds)[:MAX_SLOTS])}
    found: dict[Op, Action] = {}
    for cmd in signal.commands:
        slot = slots.get((cmd.layer_id, cmd.seed_index))
        if slot is None:
            continue
        if cmd.command is CommandType.GERMINATE:
            found.setdefault(Op.GERMINATE, Action(Op.GERMINATE, slot, blueprint_index(cmd.selected_for_tags)))
        elif cmd.command is CommandType.CULL:
            found.setdefault(Op.CULL, Action(Op.CULL, slot))
        elif cmd.command is CommandType.ADVANCE and cmd.target_stage is SeedStage.FOSSILIZED:
            found.setdefault(Op.ADVANCE, Action(Op.ADVANCE, slot))
    for op in (Op.GERMINATE, Op.CULL, Op.ADVANCE):
        if op in found:
            return found[op]
    return Action(Op.WAIT)
