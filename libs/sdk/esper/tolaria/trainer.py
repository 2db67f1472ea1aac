"""Tolaria: the training loop, its epoch-boundary heartbeat, checkpoints and rollback.

One epoch, top to bottom (``train`` repeats it):

1. train the host (host optimizer) and the live seeds (seed optimizer) on every batch; TRAINING seeds
   add their reconstruction loss, whose graph touches seed parameters only;
2. validate;
3. stop and roll back on a non-finite loss or a loss spike (train loss > ratio × recent mean);
4. boundary: kernel errors are logged and their seeds culled, a SystemStatePacket goes to the controller,
   its AdaptationSignal's commands are applied, and the seed optimizer is rebuilt if needed;
5. checkpoint (model with seeds, optimizers, controller, lineage, history) with a sha256 beside it.

Rollback restores host, seeds, controller and trainer state together from the newest checkpoint that
passes its checksum, then locks the seeds that were live (ROLLED_BACK) and reports them.

Multi-rank training: only rank 0 asks the controller; the signal is broadcast and every rank applies
the same commands at the same boundary (docs/decisions/0003-tolaria-boundary-protocol.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from esper_contracts import (
    ACTIVE_STAGES,
    AdaptationSignal,
    CommandType,
    FieldReport,
    KasminaControlCommand,
    Outcome,
    SeedId,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    blueprint_id_of,
    field_report,
    validation_metric,
)
from esper_policy import ControlPolicy

from ..config import TolariaConfig
from ..kasmina import (
    EventKind,
    apply_commands,
    collect_telemetry,
    drain_events,
    host_parameter_count,
    kasmina_layers,
    reconstruction_loss,
    seed_parameter_count,
    seed_parameters,
    wait_for_loads,
)
from ..lineage import Lineage, attach_lineage
from .checkpoint import CheckpointStore
from .runlog import ConsoleProgress, RunLog

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
S = SeedStage


class TrainingDivergedError(RuntimeError):
    """The run rolled back more often than ``max_rollbacks`` allows."""


@dataclass
class TrainerHooks:
    """Optional callbacks (used by tests and tools): after each checkpointed epoch, right after a restore."""

    on_epoch_end: Callable[[TolariaTrainer], None] | None = None
    on_restore: Callable[[TolariaTrainer, Path], None] | None = None


@dataclass
class TrainingHistory:
    """Per-epoch metrics (restored on rollback, so they describe the final model) and the append-only event log."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    field_reports: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)


def make_optimizer(kind: str, params: list[nn.Parameter], lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    """One of adam / adamw / sgd over ``params``."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn = F.cross_entropy,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``batches`` (eval mode; the previous mode is restored)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)  # (B, classes)
        total_loss += float(loss_fn(logits, y)) * len(y)
        correct += int((logits.argmax(-1) == y).sum())
        count += len(y)
    model.train(was_training)
    return total_loss / max(count, 1), correct / max(count, 1)


def broadcast_signal(signal: AdaptationSignal | None) -> AdaptationSignal:
    """Rank 0's signal on every rank (a no-op outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        assert signal is not None
        return signal
    box = [signal.model_dump_json() if signal is not None else None]
    dist.broadcast_object_list(box, src=0)
    decided = box[0]
    assert decided is not None  # rank 0 always decides
    return AdaptationSignal.model_validate_json(decided)


def _library_names(model: nn.Module) -> Callable[[str], str | None]:
    """Blueprint names from the model's kernel source when it can tell them (LocalKernelLibrary can)."""
    sources = [layer.kernels for layer in kasmina_layers(model).values()]
    lookup = getattr(sources[0], "blueprint", None) if sources else None

    def name(kernel_id: str) -> str | None:
        try:
            return str(lookup(kernel_id).name) if lookup is not None else None
        except Exception:  # an unknown kernel id: fall back to the id itself in logs
            return None

    return name


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TolariaTrainer:
    """Trains a Kasmina-wrapped model under a control policy; ``train()`` returns (model, history)."""

    def __init__(
        self,
        model: nn.Module,
        controller: ControlPolicy,
        config: TolariaConfig | None = None,
        *,
        train_data: Iterable[Batch],
        val_data: Iterable[Batch],
        loss_fn: LossFn = F.cross_entropy,
        blueprint_names: Callable[[str], str | None] | None = None,
        hooks: TrainerHooks | None = None,
    ) -> None:
        self.config = cfg = config or TolariaConfig()
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device)
        self.controller = controller
        self.train_data, self.val_data, self.loss_fn = train_data, val_data, loss_fn
        self.blueprint_names = blueprint_names or _library_names(model)
        self.hooks = hooks or TrainerHooks()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.run_id = cfg.run_id or f"run-{stamp}-{uuid.uuid4().hex[:6]}"
        self.run_dir = Path(cfg.run_dir) / self.run_id
        self.checkpoints = CheckpointStore(self.run_dir / "checkpoints", keep=cfg.checkpoints_kept)
        self.log: RunLog | None = None
        self.progress: ConsoleProgress | None = None

        # Host parameters are fixed for the run; seed parameters come and go with the lifecycle.
        seed_ids = {id(p) for layer in kasmina_layers(model).values() for p in layer.seeds.parameters()}
        self.host_params = [p for p in model.parameters() if p.requires_grad and id(p) not in seed_ids]
        self.host_optimizer = make_optimizer(cfg.optimizer, self.host_params, cfg.learning_rate, cfg.weight_decay,
                                             cfg.momentum)
        self.seed_optimizer: torch.optim.Optimizer | None = None
        self._seed_param_ids: list[int] = []

        self.epoch = 0  # epochs completed (and checkpointed)
        self.global_step = 0
        self.history = TrainingHistory()
        self.lineage = Lineage(self.run_id)
        attach_lineage(model, self.lineage)
        self._stages: dict[str, tuple[str, int, str]] = {}  # seed id -> (layer id, index, last stage seen)
        self._train_losses: deque[float] = deque(maxlen=cfg.spike_window)
        self._rebuild_seed_optimizer()

    # ------------------------------------------------------------------------------------ the loop

    def train(self) -> tuple[nn.Module, TrainingHistory]:
        """Run ``config.epochs`` epochs (rolled-back epochs are retried); return (model, history)."""
        cfg = self.config
        self.log = RunLog(self.run_dir, fresh=self.epoch == 0)
        self.checkpoints.discard_after(self.epoch)  # a reused run directory must not offer stale rollback points
        self.progress = ConsoleProgress(cfg.epochs, title=self.run_id, bar=cfg.progress_bar, lines=cfg.log_lines)
        try:
            with self.progress:
                self._stages = {t.seed_id: (t.layer_id, t.seed_index, t.stage.value)
                                for t in collect_telemetry(self.model, self.epoch)}
                self._checkpoint()  # the rollback point of the first epoch
                while self.epoch < cfg.epochs:
                    self._run_epoch(self.epoch + 1)
        finally:
            self.log.close()
        return self.model, self.history

    def _run_epoch(self, epoch: int) -> None:
        start = time.perf_counter()
        train_loss, train_acc = self._train_one_epoch(epoch)
        if not math.isfinite(train_loss):
            self.rollback(epoch, f"non-finite training loss ({train_loss})")
            return
        val_loss, val_acc = evaluate(self.model, self.val_data, self.loss_fn, self.device)
        if not math.isfinite(val_loss):
            self.rollback(epoch, f"non-finite validation loss ({val_loss})")
            return
        if self._is_spike(train_loss):
            recent = sum(self._train_losses) / len(self._train_losses)
            self.rollback(epoch, f"loss spike: {train_loss:.4g} > {self.config.max_loss_spike_ratio} x {recent:.4g}")
            return
        self._train_losses.append(train_loss)

        metrics = {"train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                   "val_accuracy": val_acc}
        self._say(f"epoch {epoch:3d}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  "
                  f"params {host_parameter_count(self.model) + seed_parameter_count(self.model)}")
        signal = self._boundary(epoch, metrics, time.perf_counter() - start)
        if signal.emergency_rollback_required:
            self.rollback(epoch, f"controller asked for a rollback: {signal.reason}")
            return
        self.epoch, record = epoch, self._epoch_record(epoch, metrics, time.perf_counter() - start)
        self.history.epochs.append(record)
        assert self.log is not None and self.progress is not None
        self.log.metrics(record)
        self._checkpoint()
        active = len(self._live_seeds())
        self.progress.update(epoch, f"val_acc {val_acc:.3f}  seeds live {active}")
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(self)

    def _is_spike(self, train_loss: float) -> bool:
        """The loss jumped well above its recent mean, by a ratio and by an absolute margin."""
        if len(self._train_losses) < 2:
            return False
        recent = sum(self._train_losses) / len(self._train_losses)
        cfg = self.config
        return train_loss > cfg.max_loss_spike_ratio * recent and train_loss - recent > cfg.spike_min_increase

    def _train_one_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training data; returns (mean loss, accuracy), or (nan, ...) at the first bad loss."""
        self.model.train()
        total, correct, count = 0.0, 0, 0
        for x, y in self.train_data:
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)  # (B, classes)
            loss = self.loss_fn(logits, y)
            recon = reconstruction_loss(self.model)  # graph from detached host activations: seed grads only
            objective = loss if recon is None else loss + recon
            if not torch.isfinite(objective):
                return math.nan, 0.0  # stop before a bad step reaches the weights
            self.host_optimizer.zero_grad(set_to_none=True)
            if self.seed_optimizer is not None:
                self.seed_optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if self.config.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(self.host_params, self.config.grad_clip_norm)
            self.host_optimizer.step()
            if self.seed_optimizer is not None:
                self.seed_optimizer.step()
            self.global_step += 1
            total += loss.item() * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            count += len(y)
        return total / max(count, 1), correct / max(count, 1)

    # ------------------------------------------------------------------------------------ the boundary

    def _boundary(self, epoch: int, metrics: dict[str, float], elapsed: float) -> AdaptationSignal:
        """Kernel errors, heartbeat, decision, commands; returns the controller's signal."""
        wait_for_loads(self.model)  # loads take milliseconds; waiting keeps runs reproducible
        telemetry = collect_telemetry(self.model, epoch)  # runs Kasmina's boundary work (culls failed kernels)
        failures = self._kernel_failures(epoch)
        self._note_transitions(epoch, telemetry, metrics, failures, default_reason="kasmina")
        telemetry = self._cull_failed(epoch, telemetry, metrics, failures)

        packet = SystemStatePacket(
            run_id=self.run_id, epoch=epoch, global_step=self.global_step, train_loss=metrics["train_loss"],
            val_loss=metrics["val_loss"], val_accuracy=metrics["val_accuracy"],
            learning_rate=self.host_optimizer.param_groups[0]["lr"],
            host_parameters=host_parameter_count(self.model), seed_parameters=seed_parameter_count(self.model),
            epoch_time_s=elapsed, device=str(self.device), metrics={"train_accuracy": metrics["train_accuracy"]},
            seeds=telemetry,
        )
        signal = broadcast_signal(self.controller.decide(packet) if _is_rank_zero() else None)
        if signal.emergency_rollback_required:
            return signal
        self._apply(epoch, signal.commands, metrics)
        for report in self.controller.drain_field_reports():
            self._record_report(epoch, report)
        self._rebuild_seed_optimizer(force=signal.optimizer_rebuild_required)
        return signal

    def _apply(self, epoch: int, commands: list[KasminaControlCommand], metrics: dict[str, Any]) -> None:
        """Apply commands one by one, log refusals, and record each transition a command caused.

        One at a time so that a GERMINATE followed by an ADVANCE of the same seed shows both steps.
        """
        layers = kasmina_layers(self.model)
        for cmd in commands:
            errors = apply_commands(self.model, [cmd], epoch)
            for error in errors:
                self._event(epoch, "command_refused", message=error)
                self._say(f"epoch {epoch:3d}  command refused: {error}")
            layer = layers.get(cmd.layer_id)
            if not errors and layer is not None:
                i = cmd.seed_index
                self._transition(epoch, cmd.layer_id, i, layer.stage(i), metrics, cmd.reason, layer.kernel_id(i))

    def _kernel_failures(self, epoch: int) -> dict[str, str]:
        """Drain Kasmina's events; log kernel load/runtime errors and return them by seed id."""
        failures: dict[str, str] = {}
        for event in drain_events(self.model):
            if event.kind in (EventKind.RUNTIME_ERROR, EventKind.LOAD_FAILED):
                seed_id = SeedId(event.slot, event.seed_index)
                failures[seed_id] = f"kernel error: {event.message}"[:2000]
                self._event(epoch, "kernel_error", seed=seed_id, message=event.message, error_kind=event.kind.value)
                self._say(f"epoch {epoch:3d}  {seed_id}  kernel error: {event.message}")
        return failures

    def _cull_failed(self, epoch: int, telemetry: list[SeedTelemetry], metrics: dict[str, float],
                     failures: dict[str, str]) -> list[SeedTelemetry]:
        """Cull failed seeds Kasmina has not culled yet, tell the controller; returns fresh telemetry."""
        if not failures:
            return telemetry
        culls = [KasminaControlCommand(layer_id=t.layer_id, seed_index=t.seed_index, command=CommandType.CULL,
                                       issued_at_epoch=epoch, reason=failures[t.seed_id])
                 for t in telemetry if t.seed_id in failures and t.stage in ACTIVE_STAGES]
        self._apply(epoch, culls, metrics)
        germinated = {g.seed_id for g in self.lineage.germinations}
        reports = [self._report_for(sid, Outcome.CULLED, metrics) for sid in failures if sid in germinated]
        self.controller.observe_outcomes(reports)
        for report in reports:
            self._record_report(epoch, report)
        return collect_telemetry(self.model, epoch)

    # ------------------------------------------------------------------------------------ lifecycle log

    def _note_transitions(self, epoch: int, telemetry: list[SeedTelemetry], metrics: dict[str, Any],
                          reasons: dict[str, str], default_reason: str = "") -> None:
        """Record every seed whose stage in ``telemetry`` differs from the last one seen."""
        for t in telemetry:
            reason = reasons.get(t.seed_id, default_reason)
            self._transition(epoch, t.layer_id, t.seed_index, t.stage, metrics, reason, t.kernel_artifact_id)

    def _transition(self, epoch: int, layer_id: str, index: int, new_stage: SeedStage, metrics: Mapping[str, Any],
                    reason: str, kernel: str | None) -> None:
        """Log one seed's move to ``new_stage`` (if it moved) and record it in the lineage."""
        seed_id = SeedId(layer_id, index)
        old = self._stages.get(seed_id, (layer_id, index, S.DORMANT.value))[2]
        new = new_stage.value
        self._stages[seed_id] = (layer_id, index, new)
        if old == new:
            return
        name = self.blueprint_names(kernel) if kernel else None
        metric_view = {k: metrics.get(k) for k in ("val_loss", "val_accuracy", "train_loss")}
        self.lineage.record(seed_id=seed_id, layer_id=layer_id, seed_index=index, old=old, new=new, epoch=epoch,
                            metrics=metric_view, blueprint_id=blueprint_id_of(kernel), blueprint_name=name,
                            kernel_artifact_id=kernel, reason=reason)
        self._event(epoch, "transition", seed=seed_id, old=old, new=new, blueprint=name, kernel=kernel, reason=reason)
        shown = f"  {name}" if new == S.GERMINATED.value and name else ""
        why = f"  ({reason})" if reason else ""
        self._say(f"epoch {epoch:3d}  {seed_id}  {old} -> {new}{shown}{why}")

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

    def _record_report(self, epoch: int, report: FieldReport) -> None:
        data = report.model_dump(mode="json")
        self.history.field_reports.append(data)
        self._event(epoch, "field_report", report=data)

    # ------------------------------------------------------------------------------------ optimizers

    def _rebuild_seed_optimizer(self, force: bool = False) -> None:
        """A fresh seed optimizer when the trainable seed parameters changed; Adam moments carry over."""
        params = seed_parameters(self.model)
        ids = [id(p) for p in params]
        if ids == self._seed_param_ids and not force:
            return
        old = self.seed_optimizer
        self._seed_param_ids = ids
        if not params:
            self.seed_optimizer = None
            return
        cfg = self.config
        self.seed_optimizer = make_optimizer(cfg.seed_optimizer, params, cfg.seed_learning_rate, 0.0, cfg.momentum)
        if old is not None:
            for p in params:
                if p in old.state:
                    self.seed_optimizer.state[p] = old.state[p]

    # ------------------------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        """Everything a rollback restores: tensors as tensors, the rest as JSON strings (weights_only-safe)."""
        trainer = {
            "epoch": self.epoch, "global_step": self.global_step, "epochs": self.history.epochs,
            "train_losses": list(self._train_losses), "lineage": self.lineage.to_dict(),
            "stages": {sid: list(entry) for sid, entry in self._stages.items()},
        }
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "host_optimizer": self.host_optimizer.state_dict(),
            "seed_optimizer": self.seed_optimizer.state_dict() if self.seed_optimizer is not None else None,
            "controller": json.dumps(self.controller.state_dict(), allow_nan=False),
            "trainer": json.dumps(trainer, allow_nan=False, default=str),
        }

    def _checkpoint(self) -> Path:
        return self.checkpoints.save(self.epoch, self._state())

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.host_optimizer.load_state_dict(state["host_optimizer"])
        self.controller.load_state_dict(json.loads(state["controller"]))
        trainer = json.loads(state["trainer"])
        self.epoch, self.global_step = int(trainer["epoch"]), int(trainer["global_step"])
        self.history.epochs = list(trainer["epochs"])
        self._train_losses = deque(trainer["train_losses"], maxlen=self.config.spike_window)
        self.lineage = Lineage.from_dict(trainer["lineage"])
        attach_lineage(self.model, self.lineage)
        self._stages = {sid: (layer, int(index), stage) for sid, (layer, index, stage) in trainer["stages"].items()}
        self._seed_param_ids = []
        self.seed_optimizer = None
        self._rebuild_seed_optimizer()
        if self.seed_optimizer is not None and state["seed_optimizer"] is not None:
            with contextlib.suppress(ValueError):  # the parameter groups changed shape: keep the fresh optimizer
                self.seed_optimizer.load_state_dict(state["seed_optimizer"])

    def rollback(self, failed_epoch: int, reason: str) -> Path:
        """Restore the newest good checkpoint, lock the seeds that were live, report them; returns the path used."""
        live = self._live_seeds()
        self.history.rollbacks.append({"epoch": failed_epoch, "reason": reason, "seeds": live})
        self._event(failed_epoch, "rollback", reason=reason, seeds=live)
        self._say(f"epoch {failed_epoch:3d}  ROLLBACK: {reason}; seeds locked: {', '.join(live) or 'none'}")
        if len(self.history.rollbacks) > self.config.max_rollbacks:
            raise TrainingDivergedError(f"{len(self.history.rollbacks)} rollbacks (max {self.config.max_rollbacks}); "
                                        f"last: {reason}")
        path, state = self.checkpoints.load_latest_good()
        self._restore(state)
        self.checkpoints.discard_after(self.epoch)
        if self.hooks.on_restore is not None:
            self.hooks.on_restore(self, path)

        metrics = self.history.epochs[-1] if self.history.epochs else {}
        # A seed live at failure is live in the checkpoint too (commands only land at boundaries), unless the
        # newest checkpoint was corrupt and an older one was used: such a seed is locked in the policy only.
        restored_live = set(self._live_seeds())
        lock = [KasminaControlCommand(layer_id=self._stages[sid][0], seed_index=self._stages[sid][1],
                                      command=CommandType.ADVANCE, target_stage=S.ROLLED_BACK,
                                      issued_at_epoch=self.epoch, reason=f"rollback: {reason}"[:2000])
                for sid in live if sid in restored_live]
        self._apply(self.epoch, lock, metrics)
        reports = [self._report_for(sid, Outcome.ROLLED_BACK, metrics) for sid in live]
        self.controller.observe_outcomes(reports)
        for report in reports:
            self._record_report(self.epoch, report)
        self._rebuild_seed_optimizer(force=True)
        return self._checkpoint()  # the locks are part of the rollback point from now on

    # ------------------------------------------------------------------------------------ records

    def _live_seeds(self) -> list[str]:
        """Seeds whose last seen stage holds a kernel (GERMINATED .. FINE_TUNING)."""
        active = {s.value for s in ACTIVE_STAGES}
        return [sid for sid, (_, _, stage) in self._stages.items() if stage in active]

    def _epoch_record(self, epoch: int, metrics: dict[str, float], elapsed: float) -> dict[str, Any]:
        host, seeds = host_parameter_count(self.model), seed_parameter_count(self.model)
        stages: dict[str, int] = {}
        for _, _, stage in self._stages.values():
            stages[stage] = stages.get(stage, 0) + 1
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
