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

Transitions happen only in ``apply_command`` and at epoch boundaries (``begin_boundary``). A kernel that
raises at runtime is replaced by the identity for that step and every later one (it is never called
again), reported as an event, and culled at the next boundary; kernel loads finish in the background
and are picked up at boundaries.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future
from typing import Any

import torch
import torch.nn.functional as F_nn
from torch import nn

from esper_contracts import GraftingStrategy, KasminaControlCommand, SeedId, SeedStage, SeedTelemetry, blueprint_id_of
from esper_kernels import KernelSource

from .blending import STRATEGIES, ChunkLayout, alpha_at, blend, chunk_bounds
from .config import KasminaConfig
from .grafted import GraftedModule, HostAttributeFallback
from .lifecycle import MODULE_STAGES, TRAINED_STAGES, SeedFacts, resolve_command
from .loader import build_kernel, submit_load
from .state import F, SeedStateTable
from .telemetry import EventKind, HealthAccumulator, SeedEvent, finite, recon_estimate

S = SeedStage
_RELEASE_STAGES = frozenset({S.CULLED, S.CANCELLED, S.ROLLED_BACK, S.DORMANT})
_STATE_VERSION = 1


class KasminaLayer(HostAttributeFallback):
    """Seed slots around one host module (see the module docstring for the per-stage behaviour)."""

    def __init__(self, host: nn.Module, layer_id: str, config: KasminaConfig, kernels: KernelSource,
                 layout: str, features: int, seq_first: bool = False, infer_layout: bool = False) -> None:
        super().__init__()
        self.host = host
        self.seeds = nn.ModuleDict()
        self.layer_id = layer_id
        self.config = config
        self.kernels = kernels
        self.chunks = ChunkLayout(layout, features, tuple(chunk_bounds(features, config.chunks_per_layer)), seq_first)
        self.seed_state = SeedStateTable(len(self.chunks.bounds))
        self.health = HealthAccumulator(self.chunks, config.telemetry_max_rows)
        self.kernel_table: list[str] = []  # F.KERNEL_SLOT indexes this list
        self._infer_layout = infer_layout  # a Linear learns BD vs BTD from its first output
        self._pending: dict[int, Future[nn.Module]] = {}
        self._events: list[SeedEvent] = []
        self._recon: list[torch.Tensor] = []
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
            self._sample(out)
        if not self._plan:
            return out
        return self._forward_seeds(out, sample)

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
        replaced: dict[int, torch.Tensor] = {}
        for i, stage, module in self._plan:
            if st.get(F.FAILED, i):
                continue
            chunk = self.chunks.take(out, i)
            if stage is S.TRAINING:
                if not (training and torch.is_grad_enabled()):
                    continue
                st.add(F.STEPS_IN_STAGE, i)
                target = chunk.detach()
                y = self._run(i, module, target, sample)
                if y is not None:
                    mse = F_nn.mse_loss(y, target)
                    self._recon.append(mse)
                    self.health.add_reconstruction(i, mse.detach() / (target.var(correction=0) + 1e-8))
                continue
            if stage is S.GRAFTING:
                if training:
                    st.add(F.STEPS_IN_STAGE, i)
                    strategy = STRATEGIES[int(st.get(F.STRATEGY, i))]
                    steps = int(st.get(F.STEPS_IN_STAGE, i))
                    st.set(F.ALPHA, i, alpha_at(steps, self.config.alpha_ramp_steps, strategy))
                y = self._run(i, module, chunk.detach(), sample)
                if y is not None:
                    replaced[i] = blend(chunk, y, st.get(F.ALPHA, i))
                continue
            if stage is S.EVALUATING or (training and stage in (S.STABILIZATION, S.FINE_TUNING)):
                st.add(F.STEPS_IN_STAGE, i)
            y = self._run(i, module, chunk, sample)
            if y is not None:
                replaced[i] = y
        return self.chunks.compose(out, replaced)

    def _run(self, i: int, module: nn.Module, x: torch.Tensor, sample: bool) -> torch.Tensor | None:
        """The seed's output on ``x``, or None (identity fallback) when the kernel raises."""
        try:
            t0 = time.perf_counter() if sample else 0.0
            y = self.chunks.run(module, x)
            if sample:
                self.seed_state.add(F.LATENCY_US_SUM, i, (time.perf_counter() - t0) * 1e6)
                self.seed_state.add(F.LATENCY_SAMPLES, i)
            if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise RuntimeError(f"kernel output {got} does not match its chunk {tuple(x.shape)}")
            return y
        except Exception as exc:  # any kernel failure must leave the step intact
            self._kernel_failed(i, EventKind.RUNTIME_ERROR, f"{type(exc).__name__}: {exc}", self._boundary + 1)
            return None

    def _kernel_failed(self, i: int, kind: EventKind, message: str, epoch: int) -> None:
        st = self.seed_state
        st.set(F.FAILED, i, 1.0)
        st.add(F.ERROR_COUNT, i)
        kernel = self.kernel_id(i)
        self._events.append(SeedEvent(self.layer_id, i, kind, f"kernel {kernel}: {message}", epoch))
        evict = getattr(self.kernels, "evict", None)
        if kernel and callable(evict):
            evict(kernel)  # a faulty kernel is not served from the cache again
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
        res = resolve_command(facts, cmd.command, cmd.target_stage, cmd.kernel_artifact_id, epoch)
        if res.error is not None or res.target is None:
            return f"{where}: {cmd.command.value} refused: {res.error}"
        if res.note:
            self._events.append(SeedEvent(self.layer_id, i, EventKind.REDIRECTED, res.note, epoch))
        strategy = cmd.grafting_strategy if "grafting_strategy" in cmd.model_fields_set else self.config.alpha_strategy
        self._enter(i, res.target, epoch, kernel_id=cmd.kernel_artifact_id, strategy=strategy)
        return None

    def _facts(self, i: int) -> SeedFacts:
        st = self.seed_state
        trainable = st.get(F.TRAINABLE, i)
        embargo = st.get(F.EMBARGO_UNTIL, i)
        return SeedFacts(stage=st.stage(i), kernel_loaded=str(i) in self.seeds,
                         trainable=None if trainable < 0 else bool(trainable), alpha=st.get(F.ALPHA, i),
                         embargo_until=None if embargo < 0 else int(embargo), kernel_id=self.kernel_id(i))

    def _enter(self, i: int, target: SeedStage, epoch: int, *, kernel_id: str | None = None,
               strategy: GraftingStrategy | None = None) -> None:
        """Move seed ``i`` into ``target`` (already checked legal) and set up what the stage needs."""
        st = self.seed_state
        if target is S.DORMANT:
            st.reset(i)
        st.set(F.STAGE, i, target.code)
        for f in (F.STEPS_IN_STAGE, F.EPOCHS_IN_STAGE, F.READY):
            st.set(f, i, 0.0)
        st.set(F.LAST_UPDATE_EPOCH, i, epoch)
        if target is S.GERMINATED:
            assert kernel_id is not None
            if kernel_id not in self.kernel_table:
                self.kernel_table.append(kernel_id)
            st.set(F.KERNEL_SLOT, i, self.kernel_table.index(kernel_id))
            for f in (F.ERROR_COUNT, F.FAILED, F.ALPHA, F.EMBARGO_UNTIL):
                st.set(f, i, -1.0 if f is F.EMBARGO_UNTIL else 0.0)
            st.set(F.TRAINABLE, i, -1.0)
        elif target is S.LOADING:
            self._submit(i)
        elif target is S.TRAINING:
            self.health.reset_reconstruction(i)
        elif target is S.GRAFTING:
            chosen = strategy or self.config.alpha_strategy
            st.set(F.STRATEGY, i, STRATEGIES.index(chosen))
            st.set(F.ALPHA, i, alpha_at(0, self.config.alpha_ramp_steps, chosen))
        elif target in (S.STABILIZATION, S.EVALUATING, S.FINE_TUNING, S.FOSSILIZED):
            st.set(F.ALPHA, i, 1.0)
        if target in _RELEASE_STAGES:
            self._release(i)
            st.set(F.ALPHA, i, 0.0)
        if target is S.CULLED:
            st.set(F.EMBARGO_UNTIL, i, epoch + self.config.embargo_epochs)
            self._events.append(SeedEvent(self.layer_id, i, EventKind.CULLED,
                                          f"culled; embargo until epoch {epoch + self.config.embargo_epochs}", epoch))
        if str(i) in self.seeds:
            self.seeds[str(i)].requires_grad_(target in TRAINED_STAGES)
        self._rebuild_plan()

    def _release(self, i: int) -> None:
        future = self._pending.pop(i, None)
        if future is not None:
            future.cancel()
        if str(i) in self.seeds:
            del self.seeds[str(i)]

    def _submit(self, i: int) -> None:
        kernel = self.kernel_id(i)
        assert kernel is not None
        register = getattr(self.kernels, "register_interface", None)
        if callable(register):  # a library that builds kernels per interface must know this chunk's (idempotent)
            register(self.chunks.interface(i))
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
        st.row(F.EPOCHS_IN_STAGE)[:] += 1
        if health.sampled:
            st.row(F.VARIANCE)[:] = health.variance
            st.row(F.DEAD_RATIO)[:] = health.dead_ratio
            st.row(F.CORRELATION)[:] = health.correlation
            st.row(F.SPARSITY)[:] = health.sparsity
        if health.graded:
            st.row(F.GRAD_NORM)[:] = health.gradient_norm
        for i in range(st.n):
            stage = st.stage(i)
            if stage is S.TRAINING:
                st.set(F.RECON_LOSS, i, recon_estimate(float(recon[i]), int(st.get(F.STEPS_IN_STAGE, i))))
            # At most one automatic transition per seed per boundary.
            if st.get(F.FAILED, i) and stage in (MODULE_STAGES | {S.LOADING}) - {S.FOSSILIZED}:
                self._enter(i, S.CULLED, epoch)
            elif stage is S.CULLED and epoch >= st.get(F.EMBARGO_UNTIL, i):
                self._enter(i, S.DORMANT, epoch)
                self._events.append(SeedEvent(self.layer_id, i, EventKind.DORMANT_AGAIN, "embargo over", epoch))
            elif stage is S.CANCELLED:
                self._enter(i, S.DORMANT, epoch)
            was_ready = bool(st.get(F.READY, i))
            st.set(F.READY, i, float(self._ready(i)))
            if st.get(F.READY, i) and not was_ready:
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

    def _restart_loads(self) -> None:
        """Submit the load of every LOADING seed that has no module and no load under way (after a copy or a
        restore)."""
        st = self.seed_state
        for i in range(st.n):
            if (st.stage(i) is S.LOADING and i not in self._pending and str(i) not in self.seeds
                    and not st.get(F.FAILED, i)):
                self._submit(i)

    def _attach(self, i: int, module: nn.Module) -> None:
        device, dtype = self._placement()
        module.to(device=device, dtype=dtype)
        module.train(self.training)
        trainable = any(p.requires_grad for p in module.parameters())
        module.requires_grad_(self.seed_state.stage(i) in TRAINED_STAGES)
        self.seeds[str(i)] = module
        self.seed_state.set(F.TRAINABLE, i, float(trainable))
        self._rebuild_plan()

    def _ready(self, i: int) -> bool:
        st, cfg = self.seed_state, self.config
        stage, steps = st.stage(i), st.get(F.STEPS_IN_STAGE, i)
        if st.get(F.FAILED, i):
            return False
        if stage is S.LOADING:
            return str(i) in self.seeds
        if stage is S.TRAINING:
            converged = steps >= cfg.training_min_steps and st.get(F.RECON_LOSS, i) < cfg.training_ready_loss
            return converged or steps >= cfg.training_max_steps
        if stage is S.GRAFTING:
            return st.get(F.ALPHA, i) >= 1.0
        wanted = {S.STABILIZATION: cfg.stabilization_steps, S.EVALUATING: cfg.evaluation_steps,
                  S.FINE_TUNING: cfg.fine_tuning_steps}.get(stage)
        return wanted is not None and steps >= wanted

    def _rebuild_plan(self) -> None:
        """Derive the forward's work list from the state: seeds whose module runs, in chunk order."""
        st = self.seed_state
        self._plan = [(i, st.stage(i), self.seeds[str(i)]) for i in range(st.n)
                      if st.stage(i) in MODULE_STAGES and str(i) in self.seeds and not st.get(F.FAILED, i)]

    def _set_layout(self, layout: str) -> None:
        self._infer_layout = False
        if layout != self.chunks.layout:
            self.chunks = ChunkLayout(layout, self.chunks.features, self.chunks.bounds, self.chunks.seq_first)
            self.health.layout = self.chunks

    # ------------------------------------------------------------------ queries

    def kernel_id(self, i: int) -> str | None:
        """Artifact id of the kernel seed ``i`` holds (or last held, while CULLED)."""
        slot = int(self.seed_state.get(F.KERNEL_SLOT, i))
        return self.kernel_table[slot] if slot >= 0 else None

    def stage(self, i: int) -> SeedStage:
        """Current stage of seed ``i``."""
        return self.seed_state.stage(i)

    def alpha(self, i: int) -> float:
        """Current blend weight of seed ``i``."""
        return self.seed_state.get(F.ALPHA, i)

    def is_ready(self, i: int) -> bool:
        """Readiness as of the last boundary."""
        return bool(self.seed_state.get(F.READY, i))

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
            lat_n = st.get(F.LATENCY_SAMPLES, i)
            embargo = int(st.get(F.EMBARGO_UNTIL, i))
            out.append(SeedTelemetry(
                layer_id=self.layer_id, seed_index=i, epoch=epoch, stage=stage,
                alpha=finite(st.get(F.ALPHA, i), 0.0, 1.0),
                epochs_in_stage=int(st.get(F.EPOCHS_IN_STAGE, i)),
                chunk_variance=finite(st.get(F.VARIANCE, i), 0.0),
                dead_node_ratio=finite(st.get(F.DEAD_RATIO, i), 0.0, 1.0),
                avg_correlation=finite(st.get(F.CORRELATION, i), -1.0, 1.0),
                gradient_norm=finite(st.get(F.GRAD_NORM, i), 0.0),
                activation_sparsity=finite(st.get(F.SPARSITY, i), 0.0, 1.0),
                is_ready_for_transition=bool(st.get(F.READY, i)),
                kernel_artifact_id=kernel, blueprint_id=blueprint_id_of(kernel),
                execution_latency_us=finite(st.get(F.LATENCY_US_SUM, i) / lat_n, 0.0) if lat_n else 0.0,
                error_count=int(st.get(F.ERROR_COUNT, i)),
                embargo_until_epoch=embargo if stage is S.CULLED and embargo >= 0 else None,
                interface=self.chunks.interface(i),
            ))
        st.row(F.LATENCY_US_SUM)[:] = 0.0
        st.row(F.LATENCY_SAMPLES)[:] = 0.0
        return out

    def drain_events(self) -> list[SeedEvent]:
        """Events since the last call (each returned once)."""
        events, self._events = self._events, []
        return events

    def seed_parameters(self) -> list[nn.Parameter]:
        """Parameters of seeds being trained (TRAINING, GRAFTING, FINE_TUNING)."""
        return [p for i, stage, module in self._plan if stage in TRAINED_STAGES for p in module.parameters()]

    def reconstruction_loss(self) -> torch.Tensor | None:
        """Sum of this layer's TRAINING seeds' MSE from its last training forward, or None."""
        return torch.stack(self._recon).sum() if self._recon else None

    def seed_parameter_count(self) -> int:
        """Parameters held by this layer's attached seed modules, in any stage."""
        return sum(p.numel() for p in self.seeds.parameters())

    def host_parameter_count(self) -> int:
        """Parameters of the wrapped host module."""
        return sum(p.numel() for p in self.host.parameters())

    def merged(self) -> nn.Module:
        """The host alone, or a GraftedModule with the fossilized (and healthy) seeds: no Kasmina machinery."""
        self.close()
        st = self.seed_state
        keep = {i: self.seeds[str(i)] for i in range(st.n)
                if st.stage(i) is S.FOSSILIZED and str(i) in self.seeds and not st.get(F.FAILED, i)}
        return GraftedModule(self.host, keep, self.chunks) if keep else self.host

    def close(self) -> None:
        """Cancel background loads."""
        for i in list(self._pending):
            self._pending.pop(i).cancel()

    # ------------------------------------------------------------------ checkpoints and copies

    def get_extra_state(self) -> dict[str, Any]:
        """The state tensor, health accumulator, kernel table and which seeds hold a module."""
        return {
            "version": _STATE_VERSION, "state": self.seed_state.tensor.clone(), "health": self.health.state(),
            "kernels": list(self.kernel_table), "attached": sorted(int(k) for k in self.seeds),
            "layout": self.chunks.layout, "infer_layout": self._infer_layout, "countdown": self._countdown[0],
            "boundary": self._boundary,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint: rebuild every saved seed module through the KernelSource (its weights are then
        loaded from the same state dict) and restart loads that were under way."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"{self.layer_id}: unsupported Kasmina state version {state.get('version')!r}")
        self.close()
        self.seed_state.load(state["state"])
        self.health.load(state["health"])
        self.kernel_table = list(state["kernels"])
        self._set_layout(state["layout"])
        self._infer_layout = bool(state["infer_layout"])
        self._countdown, self._boundary = [int(state["countdown"])], int(state["boundary"])
        self._recon = []
        for key in list(self.seeds):
            del self.seeds[key]
        register = getattr(self.kernels, "register_interface", None)
        device, dtype = self._placement()
        for i in state["attached"]:
            kernel = self.kernel_id(i)
            if kernel is None:
                raise ValueError(f"{SeedId(self.layer_id, i)}: checkpoint has a seed module but no kernel id")
            if callable(register):
                register(self.chunks.interface(i))
            module = build_kernel(self.kernels, kernel, device, dtype)
            module.train(self.training)
            module.requires_grad_(self.seed_state.stage(i) in TRAINED_STAGES)
            self.seeds[str(i)] = module
        self._restart_loads()
        self._rebuild_plan()

    def __getstate__(self) -> dict[str, Any]:
        # Futures and autograd graphs cannot be copied; a copy restarts unfinished loads at its next boundary.
        state = self.__dict__.copy()
        state["_pending"], state["_recon"] = {}, []
        return state

    def extra_repr(self) -> str:
        stages = [self.seed_state.stage(i).value for i in range(self.seed_state.n)]
        c = self.chunks
        return f"layer_id={self.layer_id!r}, layout={c.layout}, features={c.features}, seeds={stages}"
