"""Bookkeeping every germinating policy shares.

A policy keeps a small ledger of the adaptations it has started (what kernel went where, and the
validation metric it has to beat), embargoes and locks on slots, and the field reports it owes.
Subclasses decide *when* and *where* to germinate and *whether* a seed passes its gates; this module
walks the packet, moves seeds through the readiness-driven stages and keeps the books.

The packet's metric is "higher is better": validation accuracy when Tolaria reports one, otherwise
minus the validation loss (``SystemStatePacket.validation_metric``, the rule every field report uses).
"""

from __future__ import annotations

import fnmatch
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from esper_contracts import (
    ACTIVE_STAGES,
    AdaptationSignal,
    CommandType,
    CompiledKernelArtifact,
    FieldReport,
    KasminaControlCommand,
    KernelQuery,
    Outcome,
    ProtectedZone,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    field_report,
)

from .config import TamiyoConfig
from .protocols import KernelSelector

STATE_VERSION = 1

#: Stages a seed leaves as soon as it says it is ready (no judgement needed), and where it goes next.
#: LOADING and EVALUATING depend on whether the kernel is trainable; see :func:`next_stage`.
_READY_NEXT = {
    SeedStage.TRAINING: SeedStage.GRAFTING,
    SeedStage.GRAFTING: SeedStage.STABILIZATION,
    SeedStage.STABILIZATION: SeedStage.EVALUATING,
}


def next_stage(stage: SeedStage, trainable: bool | None) -> SeedStage | None:
    """The stage an ADVANCE moves a seed to from ``stage`` on the success path (None at the end).

    ``trainable`` is what Kasmina's telemetry says of the seed's kernel; None (not loaded yet) plans the
    trainable path, which Kasmina redirects past TRAINING and FINE_TUNING for a fixed-function kernel.
    """
    if stage is SeedStage.GERMINATED:
        return SeedStage.LOADING
    if stage is SeedStage.LOADING:
        return SeedStage.GRAFTING if trainable is False else SeedStage.TRAINING
    if stage is SeedStage.EVALUATING:
        return SeedStage.FOSSILIZED if trainable is False else SeedStage.FINE_TUNING
    if stage is SeedStage.FINE_TUNING:
        return SeedStage.FOSSILIZED
    return _READY_NEXT.get(stage)


def artifact_name(artifact: CompiledKernelArtifact) -> str:
    """A readable name for a kernel: its first tag (blueprint names travel as tags), else a short id."""
    return artifact.tags[0] if artifact.tags else artifact.blueprint_id[:12]


@dataclass
class Adaptation:
    """One adaptation the policy started: where, which kernel, and the baseline it must beat."""

    seed_id: str
    blueprint_id: str
    kernel_id: str
    blueprint_name: str
    trainable: bool | None  # whether the kernel has trainable parameters, as Kasmina last reported (None: not yet)
    germinated_epoch: int
    baseline: float
    stage: str = SeedStage.GERMINATED.value
    boundaries_in_stage: int = 0
    scores: list[float] = field(default_factory=list)  # val metric at each boundary since grafting finished


class PolicyBase:
    """Ledger, embargoes, locks, field reports and the readiness-driven part of the lifecycle."""

    def __init__(self, config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> None:
        self.config = config or TamiyoConfig()
        self.kernels = kernels
        self._live: dict[str, Adaptation] = {}
        self._embargo: dict[str, int] = {}  # seed id -> first epoch it may regrow
        self._locked: set[str] = set()  # rolled-back seeds: never touched again
        self._failed: dict[str, list[str]] = {}  # seed id -> blueprints culled there (not retried)
        self._reports: list[FieldReport] = []
        self._recent: deque[float] = deque(maxlen=self.config.plateau_patience_epochs)
        self._germinations = 0
        self._last_germination: int | None = None
        self._epoch = 0
        self._hardware: str | None = None  # the trainer's, from its packets: kernels are queried for it
        # Protected zones in force (set by Tamiyo's scaffold steward or from the bus): no germination inside
        # a zone or its embargo ring. Scaffold seeds are left to Kasmina's scaffold supervisor.
        self.zones: list[ProtectedZone] = []
        self.hands_off: set[str] = set()

    # ----------------------------------------------------------------------------------- the boundary

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """Steer every live seed, release expired embargoes, then maybe germinate one or more slots."""
        self._epoch = packet.epoch
        self._hardware = packet.hardware
        metric = packet.validation_metric
        self._observe(packet, metric)
        commands: list[KasminaControlCommand] = []
        dormant: list[SeedTelemetry] = []
        live = 0
        for t in packet.seeds:  # one pass; cheap attribute reads only, so 1000 seeds cost well under a ms
            stage, sid = t.stage, t.seed_id
            if sid in self.hands_off:  # a scaffold: it counts against the caps, Kasmina steers it
                live += stage in ACTIVE_STAGES
                continue
            if stage in ACTIVE_STAGES:
                rec = self._live.get(sid) or self._adopt(t, metric)
                if t.kernel_trainable is not None:
                    rec.trainable = t.kernel_trainable
                if rec.stage != stage.value:
                    rec.stage, rec.boundaries_in_stage = stage.value, 0
                rec.boundaries_in_stage += 1
                cmd = self._steer(t, rec, packet, metric)
                if cmd is not None:
                    commands.append(cmd)
                if sid in self._live:
                    live += 1
                continue
            if self._live and sid in self._live:  # it ended without this policy's command
                self._forget(t, packet)
            if stage is SeedStage.DORMANT:
                dormant.append(t)
            elif stage in (SeedStage.CULLED, SeedStage.CANCELLED):
                commands.extend(self._release(t))
        self._recent.append(metric)
        if dormant and self._may_germinate(packet, live):
            commands.extend(self._germinate(packet, dormant, live, metric))
        reason = "; ".join(sorted({c.reason for c in commands if c.reason}))[:2000]
        return AdaptationSignal(
            epoch=packet.epoch, commands=commands, optimizer_rebuild_required=bool(commands), reason=reason
        )

    # Subclasses override these four.
    def _observe(self, packet: SystemStatePacket, metric: float) -> None:
        """Update trend trackers with this boundary's metrics (before any decision)."""

    def _may_germinate(self, packet: SystemStatePacket, live: int) -> bool:
        """Whether this boundary may start a new adaptation."""
        return False

    def _germinate(
        self, packet: SystemStatePacket, dormant: list[SeedTelemetry], live: int, metric: float
    ) -> list[KasminaControlCommand]:
        """GERMINATE commands for chosen dormant seeds."""
        return []

    def _steer(
        self, t: SeedTelemetry, rec: Adaptation, packet: SystemStatePacket, metric: float
    ) -> KasminaControlCommand | None:
        """The command (if any) for one live seed; the default advances on readiness, without gates.

        A seed whose kernel failed is not this policy's to cull: Kasmina culls it at the boundary, and
        Tolaria reports the outcome through ``observe_outcomes``.
        """
        if t.stage in (SeedStage.EVALUATING, SeedStage.FINE_TUNING):
            rec.scores.append(packet.validation_metric)
            cfg = self.config
            wanted = cfg.evaluation_epochs if t.stage is SeedStage.EVALUATING else cfg.fine_tuning_epochs
            if rec.boundaries_in_stage < wanted:
                return None
            target = next_stage(t.stage, rec.trainable)
            assert target is not None  # EVALUATING and FINE_TUNING always have a successor
            if target is SeedStage.FOSSILIZED:
                return self._end(t, rec, packet, Outcome.FOSSILIZED, "fine-tuning finished")
            return self._advance(t, target, "evaluation finished")
        return self._advance_when_ready(t, rec, packet)

    # ------------------------------------------------------------------------------ shared moves

    def _advance_when_ready(
        self, t: SeedTelemetry, rec: Adaptation, packet: SystemStatePacket
    ) -> KasminaControlCommand | None:
        """Move a seed on from a readiness-driven stage; time out a stage that never gets ready."""
        stage = t.stage
        if stage is SeedStage.GERMINATED:  # promotion to LOADING needs no readiness: the kernel is queued
            return self._advance(t, SeedStage.LOADING, "kernel queued for loading")
        target = next_stage(stage, rec.trainable)
        if target is None or target is SeedStage.FOSSILIZED or stage in (SeedStage.EVALUATING, SeedStage.FINE_TUNING):
            return None
        if t.is_ready_for_transition:
            return self._advance(t, target, f"{stage.value.lower()} ready")
        if rec.boundaries_in_stage >= self.config.stage_timeout_epochs:
            if stage is SeedStage.LOADING:
                return self._end(t, rec, packet, Outcome.CULLED, "kernel never finished loading")
            if stage is SeedStage.TRAINING:
                return self._end(t, rec, packet, Outcome.CULLED, "reconstruction never converged")
            return self._advance(t, target, f"{stage.value.lower()} timed out")
        return None

    def _advance(self, t: SeedTelemetry, target: SeedStage, reason: str) -> KasminaControlCommand:
        return KasminaControlCommand(
            layer_id=t.layer_id,
            seed_index=t.seed_index,
            command=CommandType.ADVANCE,
            target_stage=target,
            issued_at_epoch=self._epoch,
            reason=reason,
        )

    def _end(
        self, t: SeedTelemetry, rec: Adaptation, packet: SystemStatePacket, outcome: Outcome, reason: str
    ) -> KasminaControlCommand:
        """Fossilize or cull a seed, writing its field report now (the command is legal by construction)."""
        self._report(rec, packet.validation_metric, outcome, packet)
        if outcome is Outcome.FOSSILIZED:
            return self._advance(t, SeedStage.FOSSILIZED, reason)
        return KasminaControlCommand(
            layer_id=t.layer_id,
            seed_index=t.seed_index,
            command=CommandType.CULL,
            issued_at_epoch=self._epoch,
            reason=reason,
        )

    def _report(self, rec: Adaptation, post: float, outcome: Outcome, packet: SystemStatePacket | None) -> None:
        """Close one adaptation: its field report, and an embargo and a blacklisted blueprint if it failed."""
        del self._live[rec.seed_id]
        if outcome is Outcome.ROLLED_BACK:
            self._locked.add(rec.seed_id)
        if outcome is not Outcome.FOSSILIZED:
            self._failed.setdefault(rec.seed_id, []).append(rec.blueprint_id)
            self._embargo[rec.seed_id] = self._epoch + self.config.embargo_epochs
        eval_metrics = {"baseline": rec.baseline}
        if packet is not None:
            eval_metrics["val_loss"] = packet.val_loss
        self._reports.append(field_report(
            seed_id=rec.seed_id, outcome=outcome, blueprint_id=rec.blueprint_id, kernel_artifact_id=rec.kernel_id,
            run_id=packet.run_id if packet is not None else None, pre_metric=rec.baseline, post_metric=post,
            epoch=self._epoch, germinated_epoch=rec.germinated_epoch, eval_metrics=eval_metrics,
        ))

    def _forget(self, t: SeedTelemetry, packet: SystemStatePacket) -> None:
        """Close the books on a seed that left the active stages without a command from this policy."""
        outcome = {SeedStage.FOSSILIZED: Outcome.FOSSILIZED, SeedStage.ROLLED_BACK: Outcome.ROLLED_BACK,
                   SeedStage.CANCELLED: Outcome.CANCELLED}.get(t.stage, Outcome.CULLED)
        self._report(self._live[t.seed_id], packet.validation_metric, outcome, packet)

    def _release(self, t: SeedTelemetry) -> list[KasminaControlCommand]:
        """Return a culled or cancelled slot to DORMANT once its embargo is over."""
        until = max(self._embargo.get(t.seed_id, 0), t.embargo_until_epoch or 0)
        if t.stage is SeedStage.CULLED and self._epoch < until:
            return []
        return [self._advance(t, SeedStage.DORMANT, "embargo over" if t.stage is SeedStage.CULLED else "slot released")]

    def _adopt(self, t: SeedTelemetry, metric: float) -> Adaptation:
        """Track a live seed the policy did not start (restored model, or a command it thought failed)."""
        rec = Adaptation(
            seed_id=t.seed_id,
            blueprint_id=t.blueprint_id or "unknown",
            kernel_id=t.kernel_artifact_id or "unknown",
            blueprint_name=t.blueprint_id or "unknown",
            trainable=t.kernel_trainable,
            germinated_epoch=self._epoch,
            baseline=metric,
            stage=t.stage.value,
        )
        self._live[t.seed_id] = rec
        return rec

    # ------------------------------------------------------------------------------ germination helpers

    def _eligible(self, t: SeedTelemetry) -> bool:
        """A dormant seed the policy may grow into: not locked, not embargoed, not protected."""
        sid = t.seed_id
        if sid in self._locked:
            return False
        if self._epoch < max(self._embargo.get(sid, 0), t.embargo_until_epoch or 0):
            return False
        if any(z.covers(sid, self._epoch) for z in self.zones):
            return False
        return not any(fnmatch.fnmatchcase(t.layer_id, p) for p in self.config.protected_regions)

    def _candidate_kernels(self, t: SeedTelemetry, cache: dict[Any, list[CompiledKernelArtifact]]) -> list[
        CompiledKernelArtifact
    ]:
        """Kernels that fit the seed's interface, in preference order, minus those already culled here."""
        if self.kernels is None or t.interface is None:
            return []
        key = (t.interface.layout, t.interface.features)
        if key not in cache:
            query = KernelQuery(
                interface=t.interface,
                tags_required=self.config.kernel_tags_required,
                tags_excluded=self.config.kernel_tags_excluded,
                status=self.config.kernel_status,
                hardware=self._hardware,
                limit=100,
            )
            found = list(self.kernels.query(query).artifacts)
            prefs = self.config.blueprint_preference

            def rank(a: CompiledKernelArtifact) -> int:
                return min((prefs.index(tag) for tag in a.tags if tag in prefs), default=len(prefs))

            cache[key] = sorted(found, key=rank)  # stable: the library's own order breaks ties
        failed = self._failed.get(t.seed_id, ())
        return [a for a in cache[key] if a.blueprint_id not in failed]

    def _germinate_with(
        self, t: SeedTelemetry, artifact: CompiledKernelArtifact, metric: float, reason: str
    ) -> list[KasminaControlCommand]:
        """Record a new adaptation: GERMINATE, then promote straight to LOADING in the same boundary.

        The concurrency cap already guarantees the resources, so the GERMINATED queue would only cost an
        epoch; the kernel then loads in the background during the next epoch.
        """
        baseline = sum(self._recent) / len(self._recent) if self._recent else metric
        self._live[t.seed_id] = Adaptation(
            seed_id=t.seed_id,
            blueprint_id=artifact.blueprint_id,
            kernel_id=artifact.artifact_id,
            blueprint_name=artifact_name(artifact),
            trainable=None,  # Kasmina's telemetry tells once the kernel is loaded
            germinated_epoch=self._epoch,
            baseline=baseline,
        )
        self._germinations += 1
        self._last_germination = self._epoch
        germinate = KasminaControlCommand(
            layer_id=t.layer_id,
            seed_index=t.seed_index,
            command=CommandType.GERMINATE,
            kernel_artifact_id=artifact.artifact_id,
            blueprint_id=artifact.blueprint_id,
            selected_for_tags=list(artifact.tags)[:16],
            issued_at_epoch=self._epoch,
            reason=reason,
        )
        return [germinate, self._advance(t, SeedStage.LOADING, "kernel queued for loading")]

    def _under_caps(self, live: int) -> bool:
        """Concurrency, total-germination and cooldown limits all allow one more adaptation."""
        cfg = self.config
        if live >= cfg.max_concurrent_adaptations:
            return False
        if cfg.max_germinations is not None and self._germinations >= cfg.max_germinations:
            return False
        if self._epoch < cfg.warmup_epochs:
            return False
        if cfg.last_germination_epoch is not None and self._epoch > cfg.last_germination_epoch:
            return False
        last = self._last_germination
        return last is None or self._epoch - last >= cfg.germination_cooldown_epochs

    # ------------------------------------------------------------------------------ outcomes and state

    def observe_outcomes(self, reports: Sequence[FieldReport]) -> None:
        """Forget seeds that Tolaria ended; lock rolled-back seeds and embargo crashed ones."""
        for report in reports:
            self._live.pop(report.seed_id, None)
            if report.outcome is Outcome.ROLLED_BACK:
                self._locked.add(report.seed_id)
            elif report.outcome is Outcome.CULLED:
                self._failed.setdefault(report.seed_id, []).append(report.blueprint_id)
                self._embargo[report.seed_id] = self._epoch + self.config.embargo_epochs

    def drain_field_reports(self) -> list[FieldReport]:
        """Field reports written since the last call."""
        reports, self._reports = self._reports, []
        return reports

    def state_dict(self) -> dict[str, Any]:
        """The whole policy state as plain JSON values."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "live": {sid: asdict(rec) for sid, rec in self._live.items()},
            "embargo": dict(self._embargo),
            "locked": sorted(self._locked),
            "failed": {sid: list(bps) for sid, bps in self._failed.items()},
            "reports": [r.model_dump(mode="json") for r in self._reports],
            "recent": list(self._recent),
            "germinations": self._germinations,
            "last_germination": self._last_germination,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output exactly."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"policy state version {state.get('version')!r} is not {STATE_VERSION}")
        self._epoch = int(state["epoch"])
        self._live = {sid: Adaptation(**rec) for sid, rec in state["live"].items()}
        self._embargo = {sid: int(e) for sid, e in state["embargo"].items()}
        self._locked = set(state["locked"])
        self._failed = {sid: list(bps) for sid, bps in state["failed"].items()}
        self._reports = [FieldReport.model_validate(r) for r in state["reports"]]
        self._recent = deque((float(m) for m in state["recent"]), maxlen=self.config.plateau_patience_epochs)
        self._germinations = int(state["germinations"])
        self._last_germination = state["last_germination"]
