"""Tolaria: the training loop, its epoch-boundary heartbeat, checkpoints and rollback.

One epoch, top to bottom (``train`` repeats it):

1. train the host (host optimizer) and the live seeds (seed optimizer) on every batch; TRAINING seeds
   add their reconstruction loss, whose graph touches seed parameters only;
2. validate;
3. stop and roll back on a non-finite loss, an explosion, or a loss spike that persists (``guard.py``: a
   robust median + MAD baseline; after a rollback the training data is reshuffled, so the retry does not
   replay the same trajectory);
4. boundary: Kasmina's boundary work runs (it culls seeds whose kernel failed); the kernel errors and every
   stage change Kasmina reports are recorded, a SystemStatePacket goes to the controller, its
   AdaptationSignal's commands are applied, and the seed optimizer is rebuilt if needed;
5. checkpoint (model with seeds, optimizers, controller, lineage, history) with a sha256 beside it.

Rollback restores host, seeds, controller and trainer state together from the newest checkpoint that
passes its checksum, then locks the seeds that were live (ROLLED_BACK) and reports them.

Multi-rank training (torchrun, DDP): only rank 0 asks the controller; the signal is broadcast and every rank
applies the same commands at the same boundary; losses, rollbacks, kernel failures and checkpoints are
decided collectively and only rank 0 writes. The collectives live in ``distributed.py``
(docs/decisions/0003-tolaria-boundary-protocol.md, 0009-distributed-training.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from opentelemetry import trace
from torch import nn

from esper_contracts import (
    AdaptationSignal,
    CommandType,
    KasminaControlCommand,
    Outcome,
    SeedId,
    SeedStage,
    SystemStatePacket,
)
from esper_policy import ControlPolicy
from esper_policy.observation import ObservationBuilder

from ..config import TolariaConfig
from ..kasmina import (
    EventKind,
    begin_boundary,
    collect_telemetry,
    drain_events,
    drain_transitions,
    host_parameter_count,
    kasmina_layers,
    reconstruction_loss,
    seed_parameter_count,
    seed_parameters,
    seed_stages,
    wait_for_loads,
)
from ..kasmina.scaffold import ScaffoldSupervisor
from ..lineage import Lineage, attach_lineage
from .checkpoint import CheckpointStore
from .distributed import (
    RankGroup,
    agree_on_start,
    broadcast_object,
    broadcast_signal,
    is_rank_zero,
    model_signature,
    resolve_device,
)
from .guard import LossSpikeGuard
from .records import RunRecords, TrainingHistory
from .runlog import ConsoleProgress, RunLog

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_tracer = trace.get_tracer("esper.tolaria")


class TrainingDivergedError(RuntimeError):
    """The run rolled back more often than ``max_rollbacks`` allows."""


@dataclass
class TrainerHooks:
    """Optional callbacks (used by tests and tools): after each checkpointed epoch, right after a restore."""

    on_epoch_end: Callable[[TolariaTrainer], None] | None = None
    on_restore: Callable[[TolariaTrainer, Path], None] | None = None


def make_optimizer(kind: str, params: list[nn.Parameter], lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    """One of adam / adamw / sgd over ``params``."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn = F.cross_entropy,
             device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``batches`` (eval mode; the previous mode is restored)."""
    total_loss, correct, count = evaluate_totals(model, batches, loss_fn, device)
    return total_loss / max(count, 1), correct / max(count, 1)


@torch.no_grad()
def evaluate_totals(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn = F.cross_entropy,
                    device: torch.device | str = "cpu") -> tuple[float, int, int]:
    """(summed loss, correct predictions, examples) of ``model`` over ``batches``: what ranks add up."""
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
    return total_loss, correct, count


def _kernel_names(model: nn.Module) -> Callable[[str], str | None]:
    """Readable kernel names for logs and lineage, from the model's kernel source."""
    layers = list(kasmina_layers(model).values())
    if not layers:
        return lambda kernel_id: None
    return layers[0].kernels.describe


def _data_from_config(cfg: TolariaConfig, train_data: Iterable[Batch] | None,
                      val_data: Iterable[Batch] | None) -> tuple[Iterable[Batch], Iterable[Batch]]:
    """Batches of ``cfg.task`` for whichever of the two the caller did not give (the design's 3-argument form)."""
    from ..config import ConfigError
    from ..data import Batches
    from ..tasks import load_task

    if cfg.task is None:
        raise ConfigError("TolariaTrainer needs train_data and val_data, or tolaria.task naming what to train on")
    task = load_task(cfg.task, cfg.seed)
    return (train_data if train_data is not None else Batches(task.train, cfg.batch_size, seed=cfg.seed),
            val_data if val_data is not None else Batches(task.val, 1024, shuffle=False))


class TolariaTrainer(RunRecords):
    """Trains a Kasmina-wrapped model under a control policy; ``train()`` returns (model, history)."""

    def __init__(
        self,
        model: nn.Module,
        controller: ControlPolicy,
        config: TolariaConfig | None = None,
        *,
        train_data: Iterable[Batch] | None = None,
        val_data: Iterable[Batch] | None = None,
        loss_fn: LossFn = F.cross_entropy,
        blueprint_names: Callable[[str], str | None] | None = None,
        hooks: TrainerHooks | None = None,
    ) -> None:
        self.config = cfg = config or TolariaConfig()
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.hardware = cfg.hardware  # the label of the compiled kernels Tamiyo may choose (None: any)
        self.model = model.to(self.device)
        # Several ranks (torch.distributed): the same config and model on each, checked before anything else.
        self.ranks = RankGroup.current(self.device)
        if self.ranks is not None:
            agree_on_start("trainer config and model",
                           {"tolaria": cfg.model_dump(mode="json"), "model": model_signature(model)})
        self.controller = controller
        if train_data is None or val_data is None:
            train_data, val_data = _data_from_config(cfg, train_data, val_data)
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            if isinstance(data, Iterator):  # a generator is spent after one pass: epoch 2 would see no batches
                raise TypeError(f"TolariaTrainer: {name} is a one-pass iterator ({type(data).__name__}); pass "
                                f"something it can iterate every epoch (a list, a DataLoader, esper.Batches)")
        self.train_data, self.val_data, self.loss_fn = train_data, val_data, loss_fn
        self._lifecycle_in_steps(model, train_data)
        self.blueprint_names = blueprint_names or _kernel_names(model)
        self.hooks = hooks or TrainerHooks()
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        self.run_id = broadcast_object(cfg.run_id or f"run-{stamp}-{uuid.uuid4().hex[:6]}")
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
        self.guard = LossSpikeGuard(window=cfg.spike_window, ratio=cfg.max_loss_spike_ratio,
                                    floor=cfg.spike_min_increase, mad_k=cfg.spike_mad_k,
                                    patience=cfg.spike_patience, explosion_ratio=cfg.explosion_ratio)
        self._observer = ObservationBuilder()  # the episode's observation vectors (episode.jsonl)
        # Kasmina's side of scaffolds: adopts those Tamiyo germinates, weans them, retires them (decision 0014).
        self.scaffolds = ScaffoldSupervisor(model)
        self._rebuild_seed_optimizer()
        # The module the training step calls: the host under DDP when there are several ranks.
        self._step_model = self.ranks.wrap(self.model) if self.ranks is not None else self.model

    @staticmethod
    def _lifecycle_in_steps(model: nn.Module, train_data: Iterable[Batch]) -> None:
        """Convert lifecycle lengths given in epochs to steps of this training data's batches per epoch."""
        layers = [layer for layer in kasmina_layers(model).values() if layer.config.counts_in_epochs]
        if not layers:
            return
        try:
            batches = len(train_data)  # type: ignore[arg-type]
        except TypeError:
            from ..config import ConfigError

            raise ConfigError(f"kasmina lifecycle lengths are given in epochs, but the training data "
                              f"({type(train_data).__name__}) has no len(): pass a sized loader (a DataLoader, a "
                              f"list, esper.Batches) or give the lengths in *_steps") from None
        for layer in layers:
            layer.config = layer.config.in_steps(max(batches, 1))

    # ------------------------------------------------------------------------------------ the loop

    def train(self) -> tuple[nn.Module, TrainingHistory]:
        """Run ``config.epochs`` epochs (rolled-back epochs are retried); return (model, history)."""
        cfg = self.config
        writer = is_rank_zero()  # only rank 0 writes the run directory and prints
        self.log = RunLog(self.run_dir, fresh=self.epoch == 0) if writer else None
        if writer:
            self.checkpoints.discard_after(self.epoch)  # a reused run directory must not offer stale rollback points
        self.progress = ConsoleProgress(cfg.epochs, title=self.run_id, bar=cfg.progress_bar if writer else False,
                                        lines=cfg.log_lines and writer)
        try:
            with self.progress:
                begin_boundary(self.model, self.epoch)
                # The seeds as they stand now are the run's starting point: earlier moves are not its history.
                drain_transitions(self.model)
                self._checkpoint()  # the rollback point of the first epoch
                while self.epoch < cfg.epochs:
                    self._run_epoch(self.epoch + 1)
                self._report_unfinished()
        finally:
            if self.log is not None:
                self.log.close()
        return self.model, self.history

    def _run_epoch(self, epoch: int) -> None:
        start = time.perf_counter()
        train_loss, train_acc = self._train_one_epoch(epoch)
        if not math.isfinite(train_loss):
            self.rollback(epoch, f"non-finite training loss ({train_loss})")
            return
        val_loss, val_acc = self._validate()
        if not math.isfinite(val_loss):
            self.rollback(epoch, f"non-finite validation loss ({val_loss})")
            return
        verdict = self.guard.judge(train_loss)
        if verdict.action == "rollback":
            self.rollback(epoch, verdict.reason, streak=verdict.streak)
            return
        if verdict.action == "tolerated":  # one odd epoch is noise; the guard rolls back if it persists
            self._event(epoch, "loss_spike_tolerated", reason=verdict.reason)
            self._say(f"epoch {epoch:3d}  {verdict.reason}: tolerated")

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
        assert self.progress is not None
        if self.log is not None:
            self.log.metrics(record)
        self._checkpoint()
        active = len(self._live_seeds())
        self.progress.update(epoch, f"val_acc {val_acc:.3f}  seeds live {active}")
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(self)

    def _train_one_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training data; returns (mean loss, accuracy), or (nan, ...) at the first bad loss.

        With several ranks the means are over every rank's examples, and a bad loss on any rank stops every
        rank at the same step (each step's vote travels while backward runs).
        """
        self.model.train()
        ranks = self.ranks
        if ranks is not None and ranks.needs_rewrap(self.model):  # after a boundary, a rollback or a resume
            self._step_model = self.model  # the old wrapper and its gradient hooks go first
            self._step_model = ranks.wrap(self.model)
        total, correct, count = 0.0, 0, 0
        for x, y in self.train_data if ranks is None else ranks.batches(self.train_data):
            x, y = x.to(self.device), y.to(self.device)
            logits = self._step_model(x)  # (B, classes)
            loss = self.loss_fn(logits, y)
            objective = loss
            # Reconstruction (its graph from detached host activations: seed grads only), and a weaning
            # scaffold's distillation and L1 anchor (host grads).
            for extra in (reconstruction_loss(self.model), self.scaffolds.loss()):
                if extra is not None:
                    objective = objective + extra
            if ranks is None and not torch.isfinite(objective):
                return math.nan, 0.0  # stop before a bad step reaches the weights
            vote = ranks.vote(not torch.isfinite(objective)) if ranks is not None else None
            self.host_optimizer.zero_grad(set_to_none=True)
            if self.seed_optimizer is not None:
                self.seed_optimizer.zero_grad(set_to_none=True)
            objective.backward()  # every rank runs it, even on a bad loss: DDP's gradient all-reduce needs all
            if ranks is not None and vote is not None:
                if vote.any_bad():
                    return math.nan, 0.0
                ranks.sync_seed_gradients(self.seed_optimizer.param_groups[0]["params"] if self.seed_optimizer
                                          else [])
            if self.config.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(self.host_params, self.config.grad_clip_norm)
            self.host_optimizer.step()
            if self.seed_optimizer is not None:
                self.seed_optimizer.step()
            self.global_step += 1
            total += loss.item() * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            count += len(y)
        if ranks is not None:
            return ranks.global_means(total, correct, count)
        return total / max(count, 1), correct / max(count, 1)

    def _validate(self) -> tuple[float, float]:
        """Validation loss and accuracy (over every rank's validation data when there are several)."""
        if self.ranks is None:
            return evaluate(self.model, self.val_data, self.loss_fn, self.device)
        return self.ranks.global_means(*evaluate_totals(self.model, self.val_data, self.loss_fn, self.device))

    # ------------------------------------------------------------------------------------ the boundary

    def _boundary(self, epoch: int, metrics: dict[str, float], elapsed: float) -> AdaptationSignal:
        """Kasmina's moves, heartbeat, decision, commands; returns the controller's signal.

        The boundary is one trace: the packet, the controller's decision (across the bus when it is Tamiyo's
        service), the commands, Kasmina's transitions and the field reports.
        """
        with _tracer.start_as_current_span("tolaria.boundary", attributes={"esper.run_id": self.run_id,
                                                                           "esper.epoch": epoch}):
            return self._traced_boundary(epoch, metrics, elapsed)

    def _traced_boundary(self, epoch: int, metrics: dict[str, float], elapsed: float) -> AdaptationSignal:
        wait_for_loads(self.model)  # loads take milliseconds; waiting keeps runs reproducible
        if self.ranks is not None:
            self.ranks.agree_kernel_failures(self.model, epoch)  # a kernel that failed on any rank fails on all
        for sunset in self.scaffolds.boundary(epoch, metrics["val_loss"]):  # scaffolds move on before telemetry
            self._event(epoch, "scaffold_sunset", seed=sunset.seed_id, outcome=sunset.outcome,
                        escalate=sunset.escalate)
            self._say(f"epoch {epoch:3d}  {sunset.seed_id}  scaffold left: {sunset.outcome}")
        telemetry = collect_telemetry(self.model, epoch)  # runs Kasmina's boundary work (culls failed kernels)
        if self.ranks is not None:
            self.ranks.share_new_seeds(self.model)  # kernels attached just now start from rank 0's weights
        self._record_kasmina_moves(epoch, metrics)

        packet = SystemStatePacket(
            run_id=self.run_id, epoch=epoch, global_step=self.global_step, train_loss=metrics["train_loss"],
            val_loss=metrics["val_loss"], val_accuracy=metrics["val_accuracy"],
            learning_rate=self.host_optimizer.param_groups[0]["lr"],
            host_parameters=host_parameter_count(self.model), seed_parameters=seed_parameter_count(self.model),
            epoch_time_s=elapsed, device=str(self.device), hardware=self.hardware,
            metrics={"train_accuracy": metrics["train_accuracy"]}, seeds=telemetry,
        )
        observation = self._observer.observe(packet) if self.log is not None else []
        signal = broadcast_signal(self.controller.decide(packet) if is_rank_zero() else None)
        if signal.emergency_rollback_required:
            return signal
        self._apply(epoch, signal.commands, metrics)
        reports = self.controller.drain_field_reports() if is_rank_zero() else []
        for report in reports:
            self._record_report(epoch, report)
        if self.log is not None:
            self._record_step(packet, observation, signal, reports)
        self._rebuild_seed_optimizer(force=signal.optimizer_rebuild_required)
        if self.ranks is not None:
            self.ranks.check_lifecycle(self.model, epoch)
        return signal

    def _apply(self, epoch: int, commands: list[KasminaControlCommand], metrics: dict[str, Any]) -> None:
        """Apply commands one by one, log refusals, and record the transition each command made.

        One at a time so that a GERMINATE followed by an ADVANCE of the same seed shows both steps.
        """
        if commands:
            with _tracer.start_as_current_span("kasmina.apply", attributes={"esper.commands": len(commands)}):
                self._apply_each(epoch, commands, metrics)

    def _apply_each(self, epoch: int, commands: list[KasminaControlCommand], metrics: dict[str, Any]) -> None:
        for cmd in commands:
            errors = self.scaffolds.apply([cmd], epoch)  # apply_commands, adopting scaffolds germinated
            for error in errors:
                self._event(epoch, "command_refused", message=error)
                self._say(f"epoch {epoch:3d}  command refused: {error}")
            for move in drain_transitions(self.model):
                self._transition(epoch, move, metrics)

    def _record_kasmina_moves(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Record what Kasmina did on its own at this boundary: kernel errors, then its stage changes.

        A seed whose failed kernel Kasmina culled is reported CULLED to the controller, which did not
        decide it (the controller only learns outcomes it did not cause through ``observe_outcomes``).
        """
        for event in drain_events(self.model):
            if event.kind in (EventKind.RUNTIME_ERROR, EventKind.LOAD_FAILED):
                self._event(epoch, "kernel_error", seed=event.seed_id, message=event.message,
                            error_kind=event.kind.value)
                self._say(f"epoch {epoch:3d}  {event.seed_id}  kernel error: {event.message}")
        culled: list[str] = []
        for move in drain_transitions(self.model):
            self._transition(epoch, move, metrics)
            if move.new is SeedStage.CULLED and not move.commanded:
                culled.append(move.seed_id)
        germinated = {g.seed_id for g in self.lineage.germinations}
        reports = [self._report_for(sid, Outcome.CULLED, metrics) for sid in culled if sid in germinated]
        if not reports:
            return
        if is_rank_zero():  # only rank 0 talks to the controller
            self.controller.observe_outcomes(reports)
        for report in reports:
            self._record_report(epoch, report)

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
            "train_losses": list(self.guard.losses), "lineage": self.lineage.to_dict(),
        }
        scaffolds = self.scaffolds.state_dict()
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "host_optimizer": self.host_optimizer.state_dict(),
            "seed_optimizer": self.seed_optimizer.state_dict() if self.seed_optimizer is not None else None,
            "controller": json.dumps(self.controller.state_dict(), allow_nan=False),
            "trainer": json.dumps(trainer, allow_nan=False, default=str),
            "scaffolds": json.dumps(scaffolds["records"], allow_nan=False),
            "scaffold_anchors": scaffolds["anchors"],
        }

    def _checkpoint(self) -> Path:
        if not is_rank_zero():  # every rank holds the same state; rank 0 writes it
            return self.checkpoints.path_for(self.epoch)
        return self.checkpoints.save(self.epoch, self._state())

    def _load_latest_good(self) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that passes its checksum; with several ranks, the one rank 0 chose, on each."""
        if self.ranks is None:
            return self.checkpoints.load_latest_good()
        return self.ranks.load_latest_good(self.checkpoints)

    def _discard_after(self, epoch: int) -> None:
        if is_rank_zero():
            self.checkpoints.discard_after(epoch)

    def resume(self) -> int:
        """Continue this run directory from its newest good checkpoint (model, seeds, optimizers, controller,
        lineage, history); returns the epoch it had completed. ``train()`` then runs the remaining epochs.

        Raises NoGoodCheckpointError when the directory holds no checkpoint that passes its checksum.
        """
        path, state = self._load_latest_good()
        self._restore(state)
        self._discard_after(self.epoch)
        if is_rank_zero():  # the lost attempt of the next epoch is not history
            RunLog.truncate_after(self.run_dir, self.epoch)
        self._event(self.epoch, "resumed", checkpoint=path.name)
        return self.epoch

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.host_optimizer.load_state_dict(state["host_optimizer"])
        if is_rank_zero():  # the controller lives on rank 0; the other ranks never consult theirs
            self.controller.load_state_dict(json.loads(state["controller"]))
        trainer = json.loads(state["trainer"])
        self.epoch, self.global_step = int(trainer["epoch"]), int(trainer["global_step"])
        self.history.epochs = list(trainer["epochs"])
        self.guard.reset(trainer["train_losses"])
        self.scaffolds.load_state_dict({"records": json.loads(state.get("scaffolds", "[]")),
                                        "anchors": state.get("scaffold_anchors") or {}})
        self.lineage = Lineage.from_dict(trainer["lineage"])
        attach_lineage(self.model, self.lineage)
        self._seed_param_ids = []
        self.seed_optimizer = None
        self._rebuild_seed_optimizer()
        if self.seed_optimizer is not None and state["seed_optimizer"] is not None:
            with contextlib.suppress(ValueError):  # the parameter groups changed shape: keep the fresh optimizer
                self.seed_optimizer.load_state_dict(state["seed_optimizer"])

    def rollback(self, failed_epoch: int, reason: str, *, streak: int = 1) -> Path:
        """Restore the newest good checkpoint from before the last ``streak`` epochs (the spike's start), lock
        the seeds that were live, report them, and reshuffle the training data; returns the path used."""
        live = self._live_seeds()
        self.history.rollbacks.append({"epoch": failed_epoch, "reason": reason, "seeds": live})
        self._event(failed_epoch, "rollback", reason=reason, seeds=live)
        self._observer.note_rollback(failed_epoch)
        if self.log is not None:
            self.log.episode({"epoch": failed_epoch, "rollback": reason, "seeds": live})
        self._say(f"epoch {failed_epoch:3d}  ROLLBACK: {reason}; seeds locked: {', '.join(live) or 'none'}")
        if len(self.history.rollbacks) > self.config.max_rollbacks:
            raise TrainingDivergedError(f"{len(self.history.rollbacks)} rollbacks (max {self.config.max_rollbacks}); "
                                        f"last: {reason}")
        if streak > 1:  # the tolerated spiking epochs were checkpointed: go back to before the first of them
            self._discard_checkpoints_of_streak(failed_epoch - streak)
        path, state = self._load_latest_good()
        self._restore(state)
        self._discard_after(self.epoch)
        self._reshuffle(len(self.history.rollbacks))
        if self.hooks.on_restore is not None:
            self.hooks.on_restore(self, path)

        metrics = self.history.epochs[-1] if self.history.epochs else {}
        # A seed live at failure is live in the checkpoint too (commands only land at boundaries), unless the
        # newest checkpoint was corrupt and an older one was used: such a seed is locked in the policy only.
        restored_live = set(self._live_seeds())
        where: dict[str, tuple[str, int]] = {SeedId(layer_id, i): (layer_id, i)
                                              for layer_id, i, _ in seed_stages(self.model)}
        lock = [KasminaControlCommand(layer_id=where[sid][0], seed_index=where[sid][1],
                                      command=CommandType.ADVANCE, target_stage=SeedStage.ROLLED_BACK,
                                      issued_at_epoch=self.epoch, reason=f"rollback: {reason}"[:2000])
                for sid in live if sid in restored_live]
        self._apply(self.epoch, lock, metrics)
        reports = [self._report_for(sid, Outcome.ROLLED_BACK, metrics) for sid in live]
        if is_rank_zero():
            self.controller.observe_outcomes(reports)
        for report in reports:
            self._record_report(self.epoch, report)
        self._rebuild_seed_optimizer(force=True)
        return self._checkpoint()  # the locks are part of the rollback point from now on

    def _discard_checkpoints_of_streak(self, before: int) -> None:
        """Drop checkpoints after epoch ``before`` when one at or before it is still kept (else keep the oldest)."""
        if is_rank_zero() and any(int(p.stem.split("-")[1]) <= before for p in self.checkpoints.paths()):
            self.checkpoints.discard_after(before)

    def _reshuffle(self, rollbacks: int) -> None:
        """A new data order and a new torch random stream after a rollback, the same on every rank.

        Retrying a failed epoch on the same batches in the same order would replay the same trajectory into
        the same spike. ``Batches`` (and anything with a ``reseed(seed)`` method) is reseeded; a DataLoader's
        own generator, when it has one, is reseeded too.
        """
        seed = self.config.seed + 7919 * rollbacks  # a prime stride keeps the streams apart
        torch.manual_seed(seed)
        reseed = getattr(self.train_data, "reseed", None)
        if callable(reseed):
            reseed(seed)
            return
        generator = getattr(self.train_data, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
