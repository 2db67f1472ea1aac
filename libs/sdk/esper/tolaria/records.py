"""What a Tolaria run writes down: stage changes into the lineage and the event log, field reports, one
episode line per boundary (episode.jsonl, Simic's input), epoch records and console lines.

A mixin of :class:`~esper.tolaria.trainer.TolariaTrainer`, kept apart so the training loop reads in one sitting;
the attributes below are the trainer's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from torch import nn

from esper_contracts import (
    ACTIVE_STAGES,
    AdaptationSignal,
    FieldReport,
    Outcome,
    SeedId,
    SeedStage,
    SystemStatePacket,
    blueprint_id_of,
    field_report,
    validation_metric,
)
from esper_policy import ControlPolicy
from esper_policy.observation import OBSERVATION_VERSION, action_of_signal

from ..kasmina import SeedTransition, host_parameter_count, seed_parameter_count, seed_stages
from ..lineage import Lineage
from .runlog import ConsoleProgress, RunLog

_tracer = trace.get_tracer("esper.tolaria")


@dataclass
class TrainingHistory:
    """Per-epoch metrics (restored on rollback, so they describe the final model) and the append-only event log."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    field_reports: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # seeds live when training ended (neither kept nor culled)


class RunRecords:
    """The trainer's record keeping (mixed into TolariaTrainer)."""

    model: nn.Module
    controller: ControlPolicy
    run_id: str
    epoch: int
    global_step: int
    history: TrainingHistory
    lineage: Lineage
    log: RunLog | None
    progress: ConsoleProgress | None
    blueprint_names: Callable[[str], str | None]

    def _report_unfinished(self) -> None:
        """Name the seeds whose lifecycle the run's end cut short: they count in the model's parameters and its
        outputs (blended in part) but were never judged, so they are reported UNFINISHED, not as kept."""
        self.history.unfinished = self._live_seeds()
        if self.history.unfinished:
            self._event(self.epoch, "unfinished", seeds=self.history.unfinished)
            self._say(f"training ended with {len(self.history.unfinished)} seed(s) UNFINISHED (still in the model, "
                      f"never fossilized): {', '.join(self.history.unfinished)}")

    # ------------------------------------------------------------------------------------ lifecycle log

    def _transition(self, epoch: int, move: SeedTransition, metrics: Mapping[str, Any]) -> None:
        """Log one stage change Kasmina reported and record it in the lineage."""
        kernel, sid, reason = move.kernel_artifact_id, move.seed_id, move.reason
        old, new = move.old.value, move.new.value
        attributes: dict[str, str | bool] = {"esper.seed_id": sid, "esper.stage.old": str(old),
                                             "esper.stage.new": str(new), "esper.commanded": move.commanded}
        with _tracer.start_as_current_span("kasmina.transition", attributes=attributes):
            pass  # a point in the trace: the stage change at this boundary, under the command that made it
        name = self.blueprint_names(kernel) if kernel else None
        metric_view = {k: metrics.get(k) for k in ("val_loss", "val_accuracy", "train_loss")}
        self.lineage.record(seed_id=sid, layer_id=move.layer_id, seed_index=move.seed_index, old=old, new=new,
                            epoch=epoch, metrics=metric_view, blueprint_id=blueprint_id_of(kernel),
                            blueprint_name=name, kernel_artifact_id=kernel, reason=reason)
        self._event(epoch, "transition", seed=sid, old=old, new=new, blueprint=name, kernel=kernel, reason=reason)
        shown = f"  {name}" if move.new is SeedStage.GERMINATED and name else ""
        why = f"  ({reason})" if reason else ""
        self._say(f"epoch {epoch:3d}  {sid}  {old} -> {new}{shown}{why}")

    def _report_for(self, seed_id: str, outcome: Outcome, metrics: Mapping[str, Any]) -> FieldReport:
        """A field report for an outcome Tolaria decided (rollback, crashed kernel), from the lineage."""
        germ = next((g for g in reversed(self.lineage.germinations) if g.seed_id == seed_id), None)

        def score(m: Mapping[str, Any]) -> float:
            return validation_metric(m.get("val_accuracy"), m.get("val_loss"))

        return field_report(
            seed_id=seed_id, outcome=outcome, run_id=self.run_id, epoch=self.epoch,
            blueprint_id=germ.blueprint_id if germ else None,
            kernel_artifact_id=germ.kernel_artifact_id if germ else None,
            germinated_epoch=germ.germinated_epoch if germ else None,
            pre_metric=score(germ.metrics_before) if germ else 0.0, post_metric=score(metrics),
        )

    def _record_step(self, packet: SystemStatePacket, observation: list[float], signal: AdaptationSignal,
                     reports: list[FieldReport]) -> None:
        """One line of episode.jsonl: what the controller saw, what it did, and what came of it."""
        assert self.log is not None
        action = action_of_signal(packet, signal)
        stats = getattr(self.controller, "stats", None)
        self.log.episode({
            "epoch": packet.epoch, "observation_version": OBSERVATION_VERSION, "observation": observation,
            "action": action.encode(), "action_name": action.describe(), "commands": len(signal.commands),
            "outcomes": {"val_accuracy": packet.val_accuracy, "val_loss": packet.val_loss,
                         "seed_parameters": packet.seed_parameters,
                         "reports": [{"seed_id": r.seed_id, "outcome": r.outcome.value, "blueprint_id": r.blueprint_id}
                                     for r in reports]},
            "controller": stats() if callable(stats) else None,
        })

    def _record_report(self, epoch: int, report: FieldReport) -> None:
        data = report.model_dump(mode="json")
        self.history.field_reports.append(data)
        self._event(epoch, "field_report", report=data)

    def _live_seeds(self) -> list[str]:
        """Seeds whose stage holds a kernel now (GERMINATED .. FINE_TUNING), in model order."""
        return [SeedId(layer_id, i) for layer_id, i, stage in seed_stages(self.model) if stage in ACTIVE_STAGES]

    def _epoch_record(self, epoch: int, metrics: dict[str, float], elapsed: float) -> dict[str, Any]:
        host, seeds = host_parameter_count(self.model), seed_parameter_count(self.model)
        stages: dict[str, int] = {}
        for _, _, stage in seed_stages(self.model):
            stages[stage.value] = stages.get(stage.value, 0) + 1
        return {"epoch": epoch, **metrics, "host_params": host, "seed_params": seeds, "total_params": host + seeds,
                "global_step": self.global_step, "epoch_time_s": round(elapsed, 4), "stages": stages}

    def _event(self, epoch: int, kind: str, **fields: Any) -> None:
        record = {"kind": kind, "epoch": epoch, **fields}
        self.history.events.append(record)
        if self.log is not None:
            self.log.event(kind, epoch, **fields)

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.log(line)
