"""KasminaLayer: one host module, its output split into chunks, one seed slot per chunk.

Per-step behaviour by stage (the host always runs first; ``chunk`` is the seed's slice of its output):

* DORMANT, GERMINATED, LOADING, CULLED, CANCELLED, ROLLED_BACK: the host output object is returned
  untouched. When no seed of the layer executes, the forward is one flag check plus a telemetry sample
  every ``telemetry_every`` calls.
* TRAINING: the seed learns ``seed(chunk.detach()) ≈ chunk.detach()`` (``reconstruction_loss``); the
  output is still the host's own object, so it is bit-identical and no gradient reaches the host.
* GRAFTING: ``(1-α)·chunk + α·seed(chunk.detach())``, α ramping over ``alpha_ramp_steps`` training forwards.
* STABILIZATION, EVALUATING, FINE_TUNING, FOSSILIZED: α = 1, ``seed(chunk)``. The input is no longer
  detached: once blended in, the seed is part of the network and the host upstream keeps learning
  through it. Seed parameters are frozen except in FINE_TUNING.
* A scaffold being weaned (``set_wean_alpha``, driven by :class:`~esper.kasmina.scaffold.ScaffoldSupervisor`):
  ``(1-α)·chunk + α·seed(chunk)`` with α ramping down, and the host chunk is distilled towards that blended
  output (``distillation_loss``). A scaffold never goes to EVALUATING, FINE_TUNING or FOSSILIZED; it leaves
  through ``retire_scaffold`` (back to DORMANT, its module and parameters gone).

Transitions happen only in ``apply_command`` and at epoch boundaries (``begin_boundary``), and each one
is reported as a SeedTransition (``drain_transitions``). Kasmina alone makes the automatic moves: a
kernel that raises at runtime is replaced by the identity for that step and every later one (it is
never called again), reported as an event, and culled at the next boundary; a kernel that fails to load
is culled at the boundary that notices; kernel loads finish in the background and are picked up at
boundaries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import Future
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from esper_contracts import (
    CommandType,
    GraftingStrategy,
    KasminaControlCommand,
    SeedId,
    SeedStage,
    SeedTelemetry,
    blueprint_id_of,
)
from esper_kernels import KernelSource

from . import layer_state
from .blending import STRATEGIES, ChunkLayout, alpha_at, blend, chunk_bounds
from .config import KasminaConfig
from .grafted import GraftedModule, HostAttributeFallback
from .lifecycle import MODULE_STAGES, TRAINED_STAGES, SeedFacts, resolve_command
from .loader import submit_load
from .state import SeedStateTable, StateField
from .targets import OutputGeometry
from .telemetry import EventKind, HealthAccumulator, SeedEvent, SeedTransition, finite, recon_estimate

_RELEASE_STAGES = frozenset({SeedStage.CULLED, SeedStage.CANCELLED, SeedStage.ROLLED_BACK, SeedStage.DORMANT})
#: Stages a failed kernel is culled from at the next boundary (a FOSSILIZED seed is permanent: it stays the
#: identity instead).
_CULLED_ON_FAILURE = (MODULE_STAGES | {SeedStage.LOADING}) - {SeedStage.FOSSILIZED}
#: Stages in which a seed holds (or is loading) a kernel, so a kernel failure still matters.
_HOLDS_KERNEL = MODULE_STAGES | {SeedStage.LOADING}
#: Stages whose seed output is part of the layer's output.
_BLENDED_STAGES = frozenset({SeedStage.GRAFTING, SeedStage.STABILIZATION, SeedStage.EVALUATING,
                             SeedStage.FINE_TUNING, SeedStage.FOSSILIZED})
#: Stages a scaffold never enters: it is weaned off and leaves instead of being kept.
_NEVER_SCAFFOLD = frozenset({SeedStage.EVALUATING, SeedStage.FINE_TUNING, SeedStage.FOSSILIZED})


class KasminaLayer(HostAttributeFallback):
    """Seed slots around one host module (see the module docstring for the per-stage behaviour)."""

    def __init__(self, host: nn.Module, layer_id: str, config: KasminaConfig, kernels: KernelSource,
                 geometry: OutputGeometry) -> None:
        super().__init__()
        self.host = host
        self.seeds = nn.ModuleDict()
        self.layer_id = layer_id
        self.config = config
        self.kernels = kernels
        g = geometry
        self.chunks = ChunkLayout(g.layout, g.features, tuple(chunk_bounds(g.features, config.chunks_per_layer)),
                                  g.seq_first, g.channels_first, g.output_index)
        self.seed_state = SeedStateTable(len(self.chunks.bounds))
        self.health = HealthAccumulator(self.chunks, config.telemetry_max_rows)
        self.kernel_table: list[str] = []  # StateField.KERNEL_SLOT indexes this list
        self._infer_layout = g.infer_layout  # a Linear learns BD vs BTD from its first output
        self._pending: dict[int, Future[nn.Module]] = {}
        self._events: list[SeedEvent] = []
        self._transitions: list[SeedTransition] = []
        self._failures: dict[int, str] = {}  # seed -> why its kernel failed, until the cull that follows
        self._recon: list[torch.Tensor] = []
        self.scaffold_seeds: set[int] = set()  # seeds holding a scaffold (they never fossilize)
        self._wean_alpha: dict[int, float] = {}  # scaffold seeds being weaned -> their current alpha
        self._distill: list[torch.Tensor] = []
        # Forwards until the next telemetry sample, in a list so the hot path mutates it without going through
        # nn.Module.__setattr__. The first forward is sampled, so telemetry exists from the first boundary.
        self._countdown = [1]
        self._boundary = -1  # last epoch whose boundary work ran
        self._plan: list[tuple[int, SeedStage, nn.Module]] = []
        self._rebuild_plan()

    # ------------------------------------------------------------------ forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the host, then the seeds of the chunks whose stage affects or learns from the output."""
        out = self.host(*args, **kwargs)
        countdown = self._countdown
        countdown[0] -= 1
        sample = countdown[0] <= 0
        if sample:
            countdown[0] = self.config.telemetry_every
            self._sample(self.chunks.tensor_of(out))
        if not self._plan:
            return out
        return self.chunks.apply(out, lambda t: self._forward_seeds(t, sample))

    def _sample(self, out: Any) -> None:
        if not isinstance(out, torch.Tensor) or out.is_nested:
            return
        if self._infer_layout:
            self._set_layout("BTD" if out.dim() == 3 else "BD")
        self.health.sample(out)
        if self.training and out.requires_grad:
            out.register_hook(self._gradient_hook)

    def _gradient_hook(self, grad: torch.Tensor) -> None:
        self.health.add_gradient(grad)

    def _forward_seeds(self, out: torch.Tensor, sample: bool) -> torch.Tensor:
        st, training = self.seed_state, self.training
        if training:
            self._recon.clear()
            self._distill.clear()
        replaced: dict[int, torch.Tensor] = {}
        for i, stage, module in self._plan:
            if st.get(StateField.FAILED, i):
                continue
            chunk = self.chunks.take(out, i)
            if stage is SeedStage.TRAINING:
                if not (training and torch.is_grad_enabled()):
                    continue
                st.add(StateField.STEPS_IN_STAGE, i)
                target = chunk.detach()
                y = self._run(i, module, target, sample)
                if y is not None:
                    mse = F.mse_loss(y, target)
                    self._recon.append(mse)
                    self.health.add_reconstruction(i, mse.detach() / (target.var(correction=0) + 1e-8))
                continue
            if stage is SeedStage.GRAFTING:
                if training:
                    st.add(StateField.STEPS_IN_STAGE, i)
                    strategy = STRATEGIES[int(st.get(StateField.STRATEGY, i))]
                    steps = int(st.get(StateField.STEPS_IN_STAGE, i))
                    st.set(StateField.ALPHA, i, alpha_at(steps, self.config.alpha_ramp_steps, strategy))
                y = self._run(i, module, chunk.detach(), sample)
                if y is not None:
                    replaced[i] = blend(chunk, y, st.get(StateField.ALPHA, i))
                continue
            if stage is SeedStage.EVALUATING or (
                    training and stage in (SeedStage.STABILIZATION, SeedStage.FINE_TUNING)):
                st.add(StateField.STEPS_IN_STAGE, i)
            y = self._run(i, module, chunk, sample)
            if y is not None:
                wean = self._wean_alpha.get(i)
                if wean is not None:  # a scaffold being weaned: blend, and the host learns the blended output
                    y = blend(chunk, y, wean)
                    if training and torch.is_grad_enabled():
                        self._distill.append(F.mse_loss(chunk, y.detach()))
                replaced[i] = y
        return self.chunks.compose(out, replaced)

    def _run(self, i: int, module: nn.Module, x: torch.Tensor, sample: bool) -> torch.Tensor | None:
        """The seed's output on ``x``, or None (identity fallback) when the kernel raises."""
        try:
            t0 = time.perf_counter() if sample else 0.0
            y = self.chunks.run(module, x)
            if sample:
                self.seed_state.add(StateField.LATENCY_US_SUM, i, (time.perf_counter() - t0) * 1e6)
                self.seed_state.add(StateField.LATENCY_SAMPLES, i)
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise RuntimeError(f"kernel output {got} does not match its chunk {tuple(x.shape)}")
            return y
        except Exception as exc:  # any kernel failure must leave the step intact
            self._kernel_failed(i, EventKind.RUNTIME_ERROR, f"{type(exc).__name__}: {exc}", self._boundary + 1)
            return None

    def _kernel_failed(self, i: int, kind: EventKind, message: str, epoch: int) -> None:
        """Mark seed ``i``'s kernel failed (identity from now on); ``begin_boundary`` culls it."""
        st = self.seed_state
        st.set(StateField.FAILED, i, 1.0)
        st.add(StateField.ERROR_COUNT, i)
        kernel = self.kernel_id(i)
        described = f"kernel {kernel}: {message}"
        self._events.append(SeedEvent(self.layer_id, i, kind, described, epoch))
        self._failures[i] = f"kernel error: {described}"[:2000]
        if kernel:
            self.kernels.evict(kernel)  # a faulty kernel is not served from the cache again
        self._rebuild_plan()

    # ------------------------------------------------------------------ commands and boundaries

    def apply_command(self, cmd: KasminaControlCommand, epoch: int) -> str | None:
        """Apply one lifecycle command at boundary ``epoch``; returns None, or why it was refused."""
        self.begin_boundary(epoch)
        i = cmd.seed_index
        where = SeedId(self.layer_id, i)
        if i >= self.seed_state.n:
            return f"{where}: no such seed; layer {self.layer_id!r} has {self.seed_state.n} seed(s)"
        facts = self._facts(i)
        if i in self.scaffold_seeds and cmd.command is CommandType.ADVANCE and cmd.target_stage in _NEVER_SCAFFOLD:
            return f"{where}: {cmd.command.value} refused: a scaffold never goes to {cmd.target_stage.value}"
        res = resolve_command(facts, cmd.command, cmd.target_stage, cmd.kernel_artifact_id, epoch)
        if res.error is not None or res.target is None:
            return f"{where}: {cmd.command.value} refused: {res.error}"
        if res.note:
            self._events.append(SeedEvent(self.layer_id, i, EventKind.REDIRECTED, res.note, epoch))
        strategy = cmd.grafting_strategy if "grafting_strategy" in cmd.model_fields_set else self.config.alpha_strategy
        self._enter(i, res.target, epoch, cmd.reason, commanded=True, kernel_id=cmd.kernel_artifact_id,
                    strategy=strategy)
        return None

    def _facts(self, i: int) -> SeedFacts:
        st = self.seed_state
        trainable = st.get(StateField.TRAINABLE, i)
        embargo = st.get(StateField.EMBARGO_UNTIL, i)
        return SeedFacts(stage=st.stage(i), kernel_loaded=str(i) in self.seeds,
                         trainable=None if trainable < 0 else bool(trainable), alpha=st.get(StateField.ALPHA, i),
                         embargo_until=None if embargo < 0 else int(embargo), kernel_id=self.kernel_id(i))

    def _enter(self, i: int, target: SeedStage, epoch: int, reason: str, *, commanded: bool,
               kernel_id: str | None = None, strategy: GraftingStrategy | None = None) -> None:
        """Move seed ``i`` into ``target`` (already checked legal), set up what the stage needs, and report the
        move as a SeedTransition."""
        st = self.seed_state
        old = st.stage(i)
        # Transitions happen between steps: the last forward's reconstruction losses were used (their graph is
        # freed), and a forward that runs no seed would not clear them.
        self._recon, self._distill = [], []
        if target in _RELEASE_STAGES:
            self._wean_alpha.pop(i, None)
        if target is SeedStage.DORMANT:
            st.reset(i)
            self.scaffold_seeds.discard(i)
        st.set(StateField.STAGE, i, target.code)
        for f in (StateField.STEPS_IN_STAGE, StateField.EPOCHS_IN_STAGE, StateField.READY):
            st.set(f, i, 0.0)
        st.set(StateField.LAST_UPDATE_EPOCH, i, epoch)
        if target is SeedStage.GERMINATED:
            assert kernel_id is not None
            if kernel_id not in self.kernel_table:
                self.kernel_table.append(kernel_id)
            st.set(StateField.KERNEL_SLOT, i, self.kernel_table.index(kernel_id))
            for f in (StateField.ERROR_COUNT, StateField.FAILED, StateField.ALPHA, StateField.EMBARGO_UNTIL):
                st.set(f, i, -1.0 if f is StateField.EMBARGO_UNTIL else 0.0)
            st.set(StateField.TRAINABLE, i, -1.0)
            self._failures.pop(i, None)
        elif target is SeedStage.LOADING:
            self._submit(i)
        elif target is SeedStage.TRAINING:
            self.health.reset_reconstruction(i)
        elif target is SeedStage.GRAFTING:
            chosen = strategy or self.config.alpha_strategy
            st.set(StateField.STRATEGY, i, STRATEGIES.index(chosen))
            st.set(StateField.ALPHA, i, alpha_at(0, self.config.alpha_ramp_steps, chosen))
        elif target in (SeedStage.STABILIZATION, SeedStage.EVALUATING, SeedStage.FINE_TUNING, SeedStage.FOSSILIZED):
            st.set(StateField.ALPHA, i, 1.0)
        if target in _RELEASE_STAGES:
            self._release(i)
            st.set(StateField.ALPHA, i, 0.0)
        if target is SeedStage.CULLED:
            st.set(StateField.EMBARGO_UNTIL, i, epoch + self.config.embargo_epochs)
        if str(i) in self.seeds:
            self.seeds[str(i)].requires_grad_(target in TRAINED_STAGES)
        self._rebuild_plan()
        self._transitions.append(SeedTransition(self.layer_id, i, old, target, reason, epoch, self.kernel_id(i),
                                                commanded))

    def _release(self, i: int) -> None:
        future = self._pending.pop(i, None)
        if future is not None:
            future.cancel()
        if str(i) in self.seeds:
            del self.seeds[str(i)]

    def _submit(self, i: int) -> None:
        kernel = self.kernel_id(i)
        assert kernel is not None
        self.kernels.register_interface(self.chunks.interface(i))  # idempotent
        device, dtype = self._placement()
        self._pending[i] = submit_load(self.kernels, kernel, device, dtype, self.chunks.interface(i))

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        """Device and floating dtype of the host (seeds live where the host lives)."""
        for t in (*self.host.parameters(), *self.host.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
        return torch.device("cpu"), torch.get_default_dtype()

    def begin_boundary(self, epoch: int) -> None:
        """Epoch-boundary work, once per epoch: pick up finished loads, cull failed kernels, lift embargoes,
        summarise the epoch's health and refresh readiness. Later calls for the same epoch do nothing."""
        if epoch <= self._boundary:
            return
        self._boundary = epoch
        self._poll_loads(epoch)
        health = self.health.drain()
        recon = self.health.reconstruction()
        st = self.seed_state
        st.row(StateField.EPOCHS_IN_STAGE)[:] += 1
        if health.sampled:
            st.row(StateField.VARIANCE)[:] = health.variance
            st.row(StateField.DEAD_RATIO)[:] = health.dead_ratio
            st.row(StateField.CORRELATION)[:] = health.correlation
            st.row(StateField.SPARSITY)[:] = health.sparsity
        if health.graded:
            st.row(StateField.GRAD_NORM)[:] = health.gradient_norm
        for i in range(st.n):
            stage = st.stage(i)
            if stage is SeedStage.TRAINING:
                steps = int(st.get(StateField.STEPS_IN_STAGE, i))
                st.set(StateField.RECON_LOSS, i, recon_estimate(float(recon[i]), steps))
            # Kasmina's own moves, at most one per seed per boundary. The one place a failed kernel is culled.
            if st.get(StateField.FAILED, i) and stage in _CULLED_ON_FAILURE:
                self._enter(i, SeedStage.CULLED, epoch, self._failures.pop(i, "kernel error"), commanded=False)
            elif stage is SeedStage.CULLED and epoch >= st.get(StateField.EMBARGO_UNTIL, i):
                self._enter(i, SeedStage.DORMANT, epoch, "embargo over", commanded=False)
            elif stage is SeedStage.CANCELLED:
                self._enter(i, SeedStage.DORMANT, epoch, "slot released after a cancel", commanded=False)
            was_ready = bool(st.get(StateField.READY, i))
            st.set(StateField.READY, i, float(self._ready(i)))
            if st.get(StateField.READY, i) and not was_ready:
                self._events.append(SeedEvent(self.layer_id, i, EventKind.READY,
                                              f"{st.stage(i).value} ready for transition", epoch))

    def _poll_loads(self, epoch: int) -> None:
        self._restart_loads()
        for i, future in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[i]
            try:
                module = future.result()
            except Exception as exc:  # load failure (missing, corrupt, unbuildable, wrong shape) -> culled
                self._kernel_failed(i, EventKind.LOAD_FAILED, f"{type(exc).__name__}: {exc}", epoch)
                continue
            self._attach(i, module)
            self._events.append(SeedEvent(self.layer_id, i, EventKind.LOADED, f"kernel {self.kernel_id(i)} loaded",
                                          epoch))

    def poll_loads(self, epoch: int) -> None:
        """Pick up the loads that finished (attach the module, or mark the kernel failed) without the rest of the
        boundary work; ``begin_boundary`` does this too. Multi-rank training calls it first, so that the ranks
        can agree on failures before the boundary culls them."""
        self._poll_loads(epoch)

    def pending_failures(self) -> dict[int, str]:
        """Seeds holding a kernel that failed, by index, with the reason the cull that follows will give (a
        FOSSILIZED seed is not culled: it stays the identity)."""
        st = self.seed_state
        return {i: self._failures.get(i, "kernel error") for i in range(st.n)
                if st.get(StateField.FAILED, i) and st.stage(i) in _HOLDS_KERNEL}

    def share_failure(self, i: int, reason: str, epoch: int) -> None:
        """Fail seed ``i``'s kernel here because it failed on another rank (identity from now on, culled at the
        boundary like a local failure), with ``reason`` as the cull's reason on every rank."""
        if not self.seed_state.get(StateField.FAILED, i):
            kind = EventKind.LOAD_FAILED if self.seed_state.stage(i) is SeedStage.LOADING else EventKind.RUNTIME_ERROR
            self._kernel_failed(i, kind, "failed on another rank", epoch)
        self._failures[i] = reason

    def _restart_loads(self) -> None:
        """Submit the load of every LOADING seed that has no module and no load under way (after a copy or a
        restore)."""
        st = self.seed_state
        for i in range(st.n):
            if (st.stage(i) is SeedStage.LOADING and i not in self._pending and str(i) not in self.seeds
                    and not st.get(StateField.FAILED, i)):
                self._submit(i)

    def _attach(self, i: int, module: nn.Module) -> None:
        device, dtype = self._placement()
        module.to(device=device, dtype=dtype)
        module.train(self.training)
        trainable = any(p.requires_grad for p in module.parameters())
        module.requires_grad_(self.seed_state.stage(i) in TRAINED_STAGES)
        self.seeds[str(i)] = module
        self.seed_state.set(StateField.TRAINABLE, i, float(trainable))
        self._rebuild_plan()

    def _ready(self, i: int) -> bool:
        st, cfg = self.seed_state, self.config
        stage, steps = st.stage(i), st.get(StateField.STEPS_IN_STAGE, i)
        if st.get(StateField.FAILED, i):
            return False
        if stage is SeedStage.LOADING:
            return str(i) in self.seeds
        if stage is SeedStage.TRAINING:
            converged = steps >= cfg.training_min_steps and st.get(StateField.RECON_LOSS, i) < cfg.training_ready_loss
            return converged or steps >= cfg.training_max_steps
        if stage is SeedStage.GRAFTING:
            return st.get(StateField.ALPHA, i) >= 1.0
        wanted = {SeedStage.STABILIZATION: cfg.stabilization_steps, SeedStage.EVALUATING: cfg.evaluation_steps,
                  SeedStage.FINE_TUNING: cfg.fine_tuning_steps}.get(stage)
        return wanted is not None and steps >= wanted

    def _rebuild_plan(self) -> None:
        """Derive the forward's work list from the state: seeds whose module runs, in chunk order."""
        st = self.seed_state
        self._plan = [(i, st.stage(i), self.seeds[str(i)]) for i in range(st.n)
                      if st.stage(i) in MODULE_STAGES and str(i) in self.seeds and not st.get(StateField.FAILED, i)]

    def _set_layout(self, layout: str) -> None:
        self._infer_layout = False
        if layout != self.chunks.layout:
            self.chunks = dataclasses.replace(self.chunks, layout=layout)
            self.health.layout = self.chunks

    # ------------------------------------------------------------------ queries

    def kernel_id(self, i: int) -> str | None:
        """Artifact id of the kernel seed ``i`` holds (or last held, while CULLED)."""
        slot = int(self.seed_state.get(StateField.KERNEL_SLOT, i))
        return self.kernel_table[slot] if slot >= 0 else None

    def stage(self, i: int) -> SeedStage:
        """Current stage of seed ``i``."""
        return self.seed_state.stage(i)

    def alpha(self, i: int) -> float:
        """Current blend weight of seed ``i``."""
        return self.seed_state.get(StateField.ALPHA, i)

    def is_ready(self, i: int) -> bool:
        """Readiness as of the last boundary."""
        return bool(self.seed_state.get(StateField.READY, i))

    def wait_for_loads(self, timeout: float | None = None) -> None:
        """Block until every background load of this layer has finished (for tests and shutdown)."""
        for future in list(self._pending.values()):
            with contextlib.suppress(Exception):  # a failure is reported at the next boundary
                future.result(timeout=timeout)

    def collect_telemetry(self, epoch: int) -> list[SeedTelemetry]:
        """Every seed's SeedTelemetry for boundary ``epoch`` (running the boundary work first)."""
        self.begin_boundary(epoch)
        st, out = self.seed_state, []
        for i in range(st.n):
            stage, kernel = st.stage(i), self.kernel_id(i)
            lat_n = st.get(StateField.LATENCY_SAMPLES, i)
            embargo = int(st.get(StateField.EMBARGO_UNTIL, i))
            trainable = st.get(StateField.TRAINABLE, i)
            out.append(SeedTelemetry(
                layer_id=self.layer_id, seed_index=i, epoch=epoch, stage=stage,
                alpha=finite(st.get(StateField.ALPHA, i), 0.0, 1.0),
                epochs_in_stage=int(st.get(StateField.EPOCHS_IN_STAGE, i)),
                chunk_variance=finite(st.get(StateField.VARIANCE, i), 0.0),
                dead_node_ratio=finite(st.get(StateField.DEAD_RATIO, i), 0.0, 1.0),
                avg_correlation=finite(st.get(StateField.CORRELATION, i), -1.0, 1.0),
                gradient_norm=finite(st.get(StateField.GRAD_NORM, i), 0.0),
                activation_sparsity=finite(st.get(StateField.SPARSITY, i), 0.0, 1.0),
                is_ready_for_transition=bool(st.get(StateField.READY, i)),
                kernel_artifact_id=kernel, blueprint_id=blueprint_id_of(kernel),
                execution_latency_us=finite(st.get(StateField.LATENCY_US_SUM, i) / lat_n, 0.0) if lat_n else 0.0,
                error_count=int(st.get(StateField.ERROR_COUNT, i)),
                embargo_until_epoch=embargo if stage is SeedStage.CULLED and embargo >= 0 else None,
                interface=self.chunks.interface(i),
                kernel_trainable=None if trainable < 0 else bool(trainable),
            ))
        st.row(StateField.LATENCY_US_SUM)[:] = 0.0
        st.row(StateField.LATENCY_SAMPLES)[:] = 0.0
        return out

    def drain_events(self) -> list[SeedEvent]:
        """Events since the last call (each returned once)."""
        events, self._events = self._events, []
        return events

    def drain_transitions(self) -> list[SeedTransition]:
        """Stage changes since the last call, in the order they were made (each returned once)."""
        transitions, self._transitions = self._transitions, []
        return transitions

    def seed_parameters(self) -> list[nn.Parameter]:
        """Parameters of seeds being trained (TRAINING, GRAFTING, FINE_TUNING)."""
        return [p for i, stage, module in self._plan if stage in TRAINED_STAGES for p in module.parameters()]

    def reconstruction_loss(self) -> torch.Tensor | None:
        """Sum of this layer's TRAINING seeds' MSE from its last training forward, or None."""
        return torch.stack(self._recon).sum() if self._recon else None

    # ------------------------------------------------------------------ scaffolds

    def mark_scaffold(self, i: int) -> None:
        """Seed ``i`` holds a scaffold: it will be weaned and retired, never fossilized."""
        self.scaffold_seeds.add(i)

    def set_wean_alpha(self, i: int, alpha: float) -> None:
        """Blend scaffold ``i`` at ``alpha`` (weaning), with the host distilled towards the blend."""
        if i not in self.scaffold_seeds:
            raise ValueError(f"{SeedId(self.layer_id, i)} is not a scaffold")
        a = min(1.0, max(0.0, alpha))
        self._wean_alpha[i] = a
        self.seed_state.set(StateField.ALPHA, i, a)

    def distillation_loss(self) -> torch.Tensor | None:
        """Sum of the weaning scaffolds' host-vs-blend MSE from the last training forward, or None."""
        return torch.stack(self._distill).sum() if self._distill else None

    def retire_scaffold(self, i: int, epoch: int, reason: str) -> None:
        """Convert scaffold ``i`` to a no-op: back to DORMANT, its module and parameters removed."""
        self.begin_boundary(epoch)
        self._wean_alpha.pop(i, None)
        self.scaffold_seeds.discard(i)
        self._distill = []
        self._enter(i, SeedStage.DORMANT, epoch, reason, commanded=False)

    def seed_parameter_count(self) -> int:
        """Parameters held by this layer's attached seed modules, in any stage."""
        return sum(p.numel() for p in self.seeds.parameters())

    def host_parameter_count(self) -> int:
        """Parameters of the wrapped host module."""
        return sum(p.numel() for p in self.host.parameters())

    def live_seeds(self) -> list[tuple[int, SeedStage]]:
        """(index, stage) of every seed in an adaptation that has not ended (neither DORMANT, FOSSILIZED nor
        culled, cancelled or rolled back)."""
        st = self.seed_state
        return [(i, st.stage(i)) for i in range(st.n) if st.stage(i) not in _RELEASE_STAGES | {SeedStage.FOSSILIZED}]

    def merged(self, keep_blended: bool = False) -> nn.Module:
        """The host alone, or a GraftedModule with the fossilized (and healthy) seeds: no Kasmina machinery.

        ``keep_blended`` also keeps the seeds whose output is blended in now (GRAFTING at its current alpha,
        STABILIZATION, EVALUATING, FINE_TUNING), so the eval-mode outputs do not change.
        """
        self.close()
        st = self.seed_state
        stages = _BLENDED_STAGES if keep_blended else {SeedStage.FOSSILIZED}
        keep = {i: self.seeds[str(i)] for i in range(st.n)
                if st.stage(i) in stages and str(i) in self.seeds and not st.get(StateField.FAILED, i)}
        if not keep:
            return self.host
        alphas = {i: st.get(StateField.ALPHA, i) for i in keep if st.stage(i) is SeedStage.GRAFTING}
        kernel_ids = {i: k for i in keep if (k := self.kernel_id(i)) is not None}
        return GraftedModule(self.host, keep, self.chunks, alphas, kernel_ids)

    def close(self) -> None:
        """Cancel background loads."""
        for i in list(self._pending):
            self._pending.pop(i).cancel()

    # ------------------------------------------------------------------ checkpoints and copies

    def get_extra_state(self) -> dict[str, Any]:
        """The state tensor, health accumulator, kernel table and which seeds hold a module."""
        return layer_state.save(self)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint: rebuild every saved seed module through the KernelSource (its weights are then
        loaded from the same state dict) and restart loads that were under way."""
        layer_state.restore(self, state)

    def __getstate__(self) -> dict[str, Any]:
        # Futures and autograd graphs cannot be copied; a copy restarts unfinished loads at its next boundary.
        state = self.__dict__.copy()
        state["_pending"], state["_recon"], state["_distill"] = {}, [], []
        return state

    def extra_repr(self) -> str:
        stages = [self.seed_state.stage(i).value for i in range(self.seed_state.n)]
        c = self.chunks
        return f"layer_id={self.layer_id!r}, layout={c.layout}, features={c.features}, seeds={stages}"
