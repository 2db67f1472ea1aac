"""The lifecycle rules Kasmina enforces on top of LEGAL_TRANSITIONS, as one pure function.

``resolve_command`` turns a command and the facts about a seed into either a destination stage or a
refusal naming the reason. It never mutates anything, so the rules can be read (and property-tested)
in isolation from the layer that applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper_contracts import LEGAL_TRANSITIONS, CommandType, SeedStage

#: Stages in which a seed's module is attached and may run.
MODULE_STAGES = frozenset({SeedStage.TRAINING, SeedStage.GRAFTING, SeedStage.STABILIZATION, SeedStage.EVALUATING,
                           SeedStage.FINE_TUNING, SeedStage.FOSSILIZED})
#: Stages whose seed parameters are trained (by reconstruction in TRAINING, by the task loss otherwise).
TRAINED_STAGES = frozenset({SeedStage.TRAINING, SeedStage.GRAFTING, SeedStage.FINE_TUNING})
#: Where an ADVANCE into a trainable-only stage goes for a fixed-function kernel.
FIXED_FUNCTION_REDIRECT = {SeedStage.TRAINING: SeedStage.GRAFTING, SeedStage.FINE_TUNING: SeedStage.FOSSILIZED}


@dataclass(frozen=True)
class SeedFacts:
    """What the rules need to know about one seed besides its stage."""

    stage: SeedStage
    kernel_loaded: bool = False  # the kernel's module is built and attached
    trainable: bool | None = None  # None until the kernel is loaded
    alpha: float = 0.0
    embargo_until: int | None = None
    kernel_id: str | None = None


@dataclass(frozen=True)
class Resolution:
    """A destination stage, or a refusal; ``note`` explains a redirect."""

    target: SeedStage | None = None
    error: str | None = None
    note: str | None = None


def _refuse(msg: str) -> Resolution:
    return Resolution(error=msg)


def resolve_command(facts: SeedFacts, command: CommandType, target_stage: SeedStage | None,
                    kernel_artifact_id: str | None, epoch: int) -> Resolution:
    """Decide where ``command`` takes a seed described by ``facts`` at boundary ``epoch``."""
    stage = facts.stage
    if stage is SeedStage.ROLLED_BACK:
        return _refuse("seed is locked: ROLLED_BACK is terminal")
    if stage is SeedStage.FOSSILIZED:
        return _refuse("seed is FOSSILIZED: it is permanent")
    if command is CommandType.GERMINATE:
        if stage is SeedStage.CULLED:
            return _refuse(f"slot is under embargo after a cull until epoch {facts.embargo_until} (now {epoch})")
        if stage is not SeedStage.DORMANT:
            return _refuse(f"cannot germinate a seed in {stage.value}: only a DORMANT seed can germinate")
        target = SeedStage.GERMINATED
    elif command is CommandType.CULL:
        target = SeedStage.CULLED
    elif command is CommandType.CANCEL:
        target = SeedStage.CANCELLED
    else:
        if target_stage is None:
            return _refuse("ADVANCE needs a target_stage")
        target = target_stage
    note = None
    if facts.trainable is False and target in FIXED_FUNCTION_REDIRECT:
        redirected = FIXED_FUNCTION_REDIRECT[target]
        note = f"fixed-function kernel: {target.value} skipped, going to {redirected.value}"
        target = redirected
    if target not in LEGAL_TRANSITIONS[stage]:
        legal = sorted(s.value for s in LEGAL_TRANSITIONS[stage])
        return _refuse(f"illegal transition {stage.value} -> {target.value}; legal from {stage.value}: {legal}")
    if target is SeedStage.GERMINATED and not kernel_artifact_id:
        return _refuse("germination needs a kernel_artifact_id")
    if stage is SeedStage.LOADING and target in (SeedStage.TRAINING, SeedStage.GRAFTING) and not facts.kernel_loaded:
        return _refuse(f"kernel {facts.kernel_id} is still loading")
    if stage is SeedStage.GRAFTING and target is SeedStage.STABILIZATION and facts.alpha < 1.0:
        return _refuse(f"alpha ramp unfinished (alpha={facts.alpha:.3f} < 1)")
    if (stage is SeedStage.CULLED and target is SeedStage.DORMANT and facts.embargo_until is not None
            and epoch < facts.embargo_until):
        return _refuse(f"slot is under embargo after a cull until epoch {facts.embargo_until} (now {epoch})")
    return Resolution(target=target, note=note)
