"""Tolaria on several processes: one decision, the same seeds, on every rank (torch.distributed).

Under ``torchrun`` (or ``esper train --nproc-per-node N``) every rank runs the same trainer on its shard
of the data. What keeps the ranks one model (docs/decisions/0009-distributed-training.md):

* **The host** is wrapped once in DistributedDataParallel; its parameter set is fixed for the run.
* **The seeds** stay outside DDP, because their parameters appear and freeze at boundaries: Tolaria
  averages the trainable seeds' gradients itself, in one flat all-reduce after each backward
  (:meth:`RankGroup.sync_seed_gradients`), and a seed module that appears at a boundary (a finished
  kernel load) gets rank 0's weights (:meth:`RankGroup.share_new_seeds`). Frozen and fossilized seeds
  receive identical updates (none), so they stay identical.
* **One decision**: only rank 0 asks the controller; the AdaptationSignal is broadcast
  (:func:`broadcast_signal`), so every rank applies the same commands at the same boundary. A kernel
  that failed to load or raised on any rank is failed on every rank before Kasmina culls it
  (:meth:`RankGroup.agree_kernel_failures`), and after the commands the ranks compare a digest of
  their seeds' lifecycle (:meth:`RankGroup.check_lifecycle`).
* **Collective rollback**: losses and accuracies are summed over the ranks, and each step's
  "non-finite objective" flag is all-reduced (overlapping the backward), so a NaN on any rank rolls
  every rank back, from the checkpoint rank 0 chose (:meth:`RankGroup.load_latest_good`).
* **One writer**: rank 0 writes checkpoints, logs and reports; the others only read checkpoints.

A rank that dies makes the next collective on every other rank fail at once (the connection drops);
one that hangs is given up after the process group's timeout. Either way the run stops with an error
and ``--resume`` continues it from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from esper_contracts import AdaptationSignal, FieldReport, SeedStage, SystemStatePacket

from ..config import ConfigError
from ..kasmina import (
    StateField,
    kasmina_layers,
    pending_kernel_failures,
    poll_loads,
    seed_stages,
    share_kernel_failure,
)
from .checkpoint import CheckpointStore, load_checkpoint

T = TypeVar("T")

#: Lifecycle fields every rank must agree on after a boundary. The health summary, readiness and the
#: per-stage forward counters are measured on each rank's own data and may differ; only rank 0's reach
#: the controller.
LIFECYCLE_FIELDS = (StateField.STAGE, StateField.KERNEL_SLOT, StateField.ALPHA, StateField.STRATEGY,
                    StateField.EPOCHS_IN_STAGE, StateField.LAST_UPDATE_EPOCH, StateField.EMBARGO_UNTIL,
                    StateField.FAILED, StateField.TRAINABLE)


class RankMismatchError(ConfigError):
    """The ranks of one run were started with different configurations or models (or one could not start)."""


class RankDivergedError(RuntimeError):
    """The ranks' seed lifecycles differ after a boundary: they no longer train one model."""


# ------------------------------------------------------------------------------------------ the process group


def is_distributed() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank_zero() -> bool:
    """True on rank 0, and always outside torch.distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_from_env() -> int:
    """``WORLD_SIZE`` as torchrun (or ``esper train --nproc-per-node``) set it; 1 when unset."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_from_env(timeout_s: float, device: str = "cpu") -> bool:
    """Join the process group the launcher described in the environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT), unless one exists or the world is one process; returns whether training is distributed.

    The backend is NCCL for a CUDA device and gloo otherwise. ``timeout_s`` bounds every collective: a rank
    that stops answering (without dying, which is noticed at once) fails the run after that long.
    """
    if dist.is_available() and not dist.is_initialized() and world_from_env() > 1:
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return is_distributed()


def stop() -> None:
    """Leave the process group (if any); never raises, since it runs while a failed run unwinds."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # a peer already gone: nothing left to tear down cleanly
            dist.destroy_process_group()


def resolve_device(device: str) -> torch.device:
    """The device this rank trains on: a bare ``cuda`` means this rank's own GPU (``LOCAL_RANK``)."""
    if device == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count())))
    return torch.device(device)


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself outside torch.distributed); it must pickle."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_signal(signal: AdaptationSignal | None) -> AdaptationSignal:
    """Rank 0's signal on every rank, sent as its JSON (a no-op outside torch.distributed)."""
    if not is_distributed():
        assert signal is not None
        return signal
    decided = broadcast_object(signal.model_dump_json() if signal is not None else None)
    assert decided is not None  # rank 0 always decides
    return AdaptationSignal.model_validate_json(decided)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says another rank is gone or stopped answering (its collective failed or timed out).

    Gloo reports a dead peer as a plain RuntimeError ("Connection closed by peer"), so the message is read too.
    """
    if isinstance(exc, dist.DistError | RankDivergedError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        sign in text for sign in ("gloo", "NCCL", "by peer", "Timed out", "timed out", "Broken pipe"))


class FollowerPolicy:
    """The controller of a rank other than 0: it is never consulted (rank 0 decides for every rank and its
    decision is broadcast), so it holds nothing and connects to nothing."""

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        """Never called on a follower; raises."""
        raise RuntimeError("only rank 0 asks the controller; the other ranks apply its broadcast decision")

    def observe_outcomes(self, reports: Sequence[FieldReport]) -> None:
        """Outcomes reach the controller through rank 0."""

    def drain_field_reports(self) -> list[FieldReport]:
        """No reports: rank 0's controller writes them."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Nothing to save (rank 0's controller is checkpointed)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


# ------------------------------------------------------------------------------------------ agreeing at start


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON-like values differ, one ``path: a / b`` entry per differing leaf (dicts and lists walked)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        found: list[str] = []
        for key in [*a, *(k for k in b if k not in a)]:  # in rank 0's order: configs list their keys by section
            where = f"{path}.{key}" if path else str(key)
            if key not in b:
                found.append(f"{where}: only on rank 0")
            elif key not in a:
                found.append(f"{where}: missing on rank 0")
            else:
                found.extend(differences(a[key], b[key], where))
        return found
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path or '<value>'}: {a!r} / {b!r}"]


def agree_on_start(what: str, value: T | BaseException, describe: Callable[[T], Any] = lambda v: v,
                   errors: Sequence[type[Exception]] = ()) -> T:
    """Check that every rank started with the same ``what``; returns ``value``.

    ``value`` is this rank's (or the exception that stopped this rank from getting one); ``describe`` turns
    it into JSON-like data to compare. Every rank raises when any rank failed or any rank's description
    differs from rank 0's, so a bad start stops all ranks with one clear message instead of leaving the
    healthy ones waiting on a collective. A failure is re-raised as its own class when it is one of
    ``errors`` (so exit codes stay meaningful), as :class:`RankMismatchError` otherwise.
    """
    if not is_distributed():
        if isinstance(value, BaseException):
            raise value
        return value
    mine = ({"error": str(value), "kind": type(value).__name__} if isinstance(value, BaseException)
            else {"value": describe(value)})
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if isinstance(value, BaseException):
        raise value
    for rank, theirs in enumerate(everyone):
        if "error" in theirs:
            kind = next((e for e in errors if e.__name__ == theirs["kind"]), RankMismatchError)
            raise kind(f"rank {rank} could not start: {theirs['error']}")
    reference = everyone[0]["value"]
    for rank, theirs in enumerate(everyone[1:], start=1):
        found = differences(reference, theirs["value"])
        if found:
            shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
            raise RankMismatchError(f"rank {rank} was started with a different {what} than rank 0 (rank 0's / "
                                    f"rank {rank}'s): {shown}")
    return value


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What must match across ranks before training: every parameter's and buffer's shape and dtype, and the
    seed slots (layer, seeds, chunk interfaces). Seeds' own modules are left out: rank 0's are shared."""
    seeds = {id(t) for layer in kasmina_layers(model).values() for t in (*layer.seeds.parameters(),
                                                                            *layer.seeds.buffers())}

    def shape(t: torch.Tensor) -> str:
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"

    return {
        "parameters": {n: shape(p) for n, p in model.named_parameters() if id(p) not in seeds},
        "buffers": {n: shape(b) for n, b in model.named_buffers() if id(b) not in seeds},
        "seed_slots": {lid: [f"{i.layout} {i.features}" for i in
                             (layer.chunks.interface(k) for k in range(layer.seed_state.n))]
                       for lid, layer in kasmina_layers(model).items()},
    }


# ------------------------------------------------------------------------------------------ one run's ranks


class _Vote:
    """One step's agreement in flight: (objective not finite here, no batch after this one here), max-reduced."""

    def __init__(self, group: RankGroup, bad: bool, last: bool) -> None:
        self._group = group
        self._flags = torch.tensor([float(bad), float(last)], device=group.comm_device)
        self._work = dist.all_reduce(self._flags, op=dist.ReduceOp.MAX, async_op=True)

    def any_bad(self) -> bool:
        """Wait for the vote; True when any rank's objective was not finite. Ends the epoch on every rank when
        any rank has run out of batches."""
        assert self._work is not None
        self._work.wait()
        bad, last = self._flags.tolist()
        self._group.stop_epoch = last > 0
        return bad > 0


class RankGroup:
    """The ranks of one training run, as Tolaria sees them: the collectives of the step and of the boundary."""

    def __init__(self, device: torch.device) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device
        # NCCL moves CUDA tensors only; gloo moves CPU tensors (and is what the CPU tests run).
        self.comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.stop_epoch = False
        self._last_local = False
        self._known_seeds: dict[tuple[str, int], int] = {}
        self._cut_off = False

    @classmethod
    def current(cls, device: torch.device) -> RankGroup | None:
        """The run's ranks when this process is one of several, else None (single-process training)."""
        return cls(device) if is_distributed() else None

    # ---------------------------------------------------------------- the step

    def wrap(self, model: nn.Module) -> nn.Module:
        """The host in DistributedDataParallel (rank 0's weights copied to every rank); seed modules excluded.

        Returns the module to call in the training step; ``model`` itself stays the one to evaluate, checkpoint
        and drive (they share parameters).
        """
        self._cut_off = host_may_be_cut_off(model)
        seeds = {id(t) for layer in kasmina_layers(model).values()
                 for t in (*layer.seeds.parameters(), *layer.seeds.buffers())}
        ignored = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if id(t) in seeds]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Looking for unused parameters costs a graph walk per step: only while the host may be cut off.
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=self._cut_off)

    def needs_rewrap(self, model: nn.Module) -> bool:
        """Whether part of the host may go unused has changed since :meth:`wrap` (on every rank alike: it
        follows the seeds' stages); then drop the old wrapper and wrap again."""
        return host_may_be_cut_off(model) != self._cut_off

    def batches(self, data: Iterable[T]) -> Iterator[T]:
        """``data``'s batches until any rank runs out: one look-ahead per step tells the step's vote whether
        this rank has another, so every rank takes the same number of steps (DDP needs it)."""
        self.stop_epoch = False
        it = iter(data)
        upcoming = next(it, None)
        while upcoming is not None:
            batch, upcoming = upcoming, next(it, None)
            self._last_local = upcoming is None
            yield batch
            if self.stop_epoch:
                return

    def vote(self, bad: bool) -> _Vote:
        """Start this step's vote (call before backward; read it with ``any_bad`` after)."""
        return _Vote(self, bad, self._last_local)

    def sync_seed_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Average the trainable seeds' gradients over the ranks in one flat all-reduce.

        A parameter without a gradient here counts as zero; one without a gradient on every rank keeps None,
        as in one process (the optimizer then skips it).
        """
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has = torch.tensor([float(p.grad is not None) for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [has]).to(self.comm_device)
        dist.all_reduce(flat)
        flat = flat.div_(self.world_size).to(grads[0].device)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            g_avg = flat[offset:offset + g.numel()].view_as(g)
            offset += g.numel()
            p.grad = g_avg.clone() if p.grad is None else p.grad.copy_(g_avg)
        for p, present in zip(params, flat[offset:].tolist(), strict=True):
            if present == 0:
                p.grad = None

    def global_means(self, loss_sum: float, correct: float, count: float) -> tuple[float, float]:
        """(mean loss, accuracy) over every rank's examples: a non-finite loss anywhere is non-finite everywhere."""
        totals = torch.tensor([loss_sum, correct, count], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(totals)
        total_loss, total_correct, total_count = totals.tolist()
        return total_loss / max(total_count, 1), total_correct / max(total_count, 1)

    # ---------------------------------------------------------------- the boundary

    def agree_kernel_failures(self, model: nn.Module, epoch: int) -> None:
        """Pick up finished kernel loads, then fail on every rank each seed whose kernel failed on any rank
        (with the lowest such rank's reason), before Kasmina's boundary culls them."""
        poll_loads(model, epoch)
        mine = pending_kernel_failures(model)
        everyone: list[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        agreed: dict[tuple[str, int], str] = {}
        for failures in everyone:
            for key, reason in failures.items():
                agreed.setdefault(key, reason)
        for (layer_id, index), reason in agreed.items():
            if mine.get((layer_id, index)) != reason:
                share_kernel_failure(model, layer_id, index, reason, epoch)

    def share_new_seeds(self, model: nn.Module) -> None:
        """Copy rank 0's weights into every seed module attached since the last call, and rank 0's buffers into
        every attached seed module (kernels are initialised independently on each rank)."""
        tensors: list[torch.Tensor] = []
        seen: dict[tuple[str, int], int] = {}
        for layer_id, layer in kasmina_layers(model).items():
            for key, module in sorted(layer.seeds.items(), key=lambda kv: int(kv[0])):
                seen[(layer_id, int(key))] = id(module)
                if self._known_seeds.get((layer_id, int(key))) != id(module):
                    tensors.extend(p.data for p in module.parameters())
                tensors.extend(b for b in module.buffers() if b.is_floating_point())
        self._known_seeds = seen
        self.broadcast_tensors(tensors)

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        """Rank 0's values into ``tensors`` in place, one broadcast per dtype."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group]).to(self.comm_device)
            dist.broadcast(flat, src=0)
            offset = 0
            with torch.no_grad():
                for t in group:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def check_lifecycle(self, model: nn.Module, epoch: int) -> None:
        """Raise RankDivergedError when any rank's seeds differ from rank 0's in a lifecycle field, kernel or
        attached module (compared as a 32-byte digest; the details are gathered only on a mismatch)."""
        digest = torch.tensor(list(hashlib.sha256(_lifecycle_bytes(model)).digest()), dtype=torch.uint8,
                              device=self.comm_device)
        everyone = [torch.empty_like(digest) for _ in range(self.world_size)]
        dist.all_gather(everyone, digest)
        if all(torch.equal(d, everyone[0]) for d in everyone):
            return
        views: list[Any] = [None] * self.world_size
        dist.all_gather_object(views, _lifecycle_view(model))
        found = [f"rank {r}: {'; '.join(differences(views[0], v)[:5])}" for r, v in enumerate(views)
                 if v != views[0]]
        raise RankDivergedError(f"after the boundary of epoch {epoch} the ranks' seeds differ from rank 0's "
                                f"(rank 0's / theirs): {' | '.join(found)}")

    def load_latest_good(self, store: CheckpointStore) -> tuple[Path, dict[str, Any]]:
        """The checkpoint rank 0 finds newest and intact, loaded (and its checksum verified) on every rank.

        Only rank 0 lists and chooses, so every rank restores the same one even while files change; the
        others read the path it names (the run directory must be visible to every rank).
        """
        choice: Any = None
        if self.rank == 0:
            try:
                path, state = store.load_latest_good()
                choice = str(path)
            except Exception as exc:  # every rank must learn of it, or the others wait for a path forever
                choice = exc
        choice = broadcast_object(choice)
        if isinstance(choice, Exception):
            raise choice
        if self.rank == 0:
            return path, state
        return Path(choice), load_checkpoint(Path(choice))

def host_may_be_cut_off(model: nn.Module) -> bool:
    """True while some seed is GRAFTING: at the end of its ramp (α = 1) the layer's output is the seed's alone,
    computed from a detached input, so the host parameters upstream get no gradient on any rank. DDP must then
    look for unused parameters (they keep no gradient, as in one process) instead of waiting for them."""
    return any(stage is SeedStage.GRAFTING for _, _, stage in seed_stages(model))


def _lifecycle_view(model: nn.Module) -> dict[str, Any]:
    """Each layer's lifecycle fields, kernel table and attached seeds, as JSON-like data."""
    return {lid: {"fields": {f.name: layer.seed_state.row(f).tolist() for f in LIFECYCLE_FIELDS},
                  "kernels": list(layer.kernel_table), "attached": sorted(int(k) for k in layer.seeds)}
            for lid, layer in kasmina_layers(model).items()}


def _lifecycle_bytes(model: nn.Module) -> bytes:
    return repr(_lifecycle_view(model)).encode()


__all__ = ["LIFECYCLE_FIELDS", "FollowerPolicy", "RankDivergedError", "RankGroup", "RankMismatchError",
           "agree_on_start", "broadcast_object", "broadcast_signal", "differences", "host_may_be_cut_off",
           "is_distributed", "is_peer_failure", "is_rank_zero",
           "model_signature", "resolve_device", "start_from_env", "stop", "world_from_env"]
