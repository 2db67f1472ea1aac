"""Whole-model Kasmina: inject seed slots into a model (``wrap``), drive them, and take them out (``unwrap``).

Slots are named by the module path they wrap (``blocks.0.mlp``); that path is the ``layer_id`` of every
command and telemetry record. Boundary functions (``collect_telemetry``, ``apply_commands``) run each
layer's once-per-epoch boundary work first, so Tolaria may call them in either order.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from esper_contracts import KasminaControlCommand, SeedStage, SeedTelemetry
from esper_kernels import KernelSource, LocalKernelLibrary

from .config import KasminaConfig
from .layer import KasminaLayer
from .targets import choose_targets, output_geometry
from .telemetry import SeedEvent, SeedTransition


def _set_child(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    parent._modules[name] = new


def _check_arguments(model: object, config: object) -> KasminaConfig:
    """The Kasmina config to use; TypeError naming what was passed instead of a model or a KasminaConfig."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap needs a torch.nn.Module to put seed slots in, got {type(model).__name__}")
    if config is None:
        return KasminaConfig()
    if isinstance(config, KasminaConfig):
        return config
    if isinstance(getattr(config, "kasmina", None), KasminaConfig):
        raise TypeError(f"wrap takes the Kasmina section of the run configuration, not the whole "
                        f"{type(config).__name__}: pass config.kasmina")
    if isinstance(config, dict):
        raise TypeError("wrap takes a KasminaConfig, not a dict: pass esper.KasminaConfig(**your_dict) "
                        "(or config.kasmina of a loaded run configuration)")
    raise TypeError(f"wrap takes a KasminaConfig (e.g. config.kasmina), got {type(config).__name__}")


def wrap(model: nn.Module, config: KasminaConfig | None = None, kernels: KernelSource | None = None) -> nn.Module:
    """Inject a KasminaLayer around every targeted module of ``model``, in place; returns ``model``.

    Targets are the modules whose path matches ``config.target_modules`` (fnmatch), or else whose class
    name is in ``config.target_types`` (the output head only with ``include_head``), minus
    ``exclude_modules`` (see :mod:`esper.kasmina.targets`). Every seed starts DORMANT, so the wrapped model
    computes exactly what it computed before. Everything is checked before the model is touched: a wrap
    that raises leaves the model as it was. ``kernels`` defaults to a :class:`LocalKernelLibrary` of the
    built-in blueprints.
    """
    config = _check_arguments(model, config)
    if any(isinstance(m, KasminaLayer) for m in model.modules()):
        raise ValueError("model already has Kasmina layers; unwrap it first")
    paths = choose_targets(model, config)
    geometries = {path: output_geometry(model.get_submodule(path), path) for path in paths}
    for path, g in geometries.items():
        if config.chunks_per_layer > g.features:
            raise ValueError(f"{path!r} has {g.features} features, fewer than chunks_per_layer="
                             f"{config.chunks_per_layer}; lower chunks_per_layer or exclude {path!r}")
    if kernels is None:
        kernels = LocalKernelLibrary(cache_mb=config.kernel_cache_mb)
    layers = {}
    for path, g in geometries.items():  # built before any is put in, so a failure leaves the model untouched
        host = model.get_submodule(path)
        layers[path] = KasminaLayer(host, path, config, kernels, g)
        layers[path].train(host.training)
    for layer in layers.values():
        for i in range(len(layer.chunks.bounds)):
            kernels.register_interface(layer.chunks.interface(i))
    for path, layer in layers.items():
        _set_child(model, path, layer)
    model.__dict__[_LAYERS_ATTR] = layers  # a plain attribute: not a submodule, not in the state dict
    return model


_LAYERS_ATTR = "_kasmina_layers"


def kasmina_layers(model: nn.Module) -> dict[str, KasminaLayer]:
    """Every KasminaLayer of ``model`` by its layer id (the module path it was wrapped at).

    ``wrap`` records the layers on the model, so the per-step calls (``reconstruction_loss``,
    ``seed_parameters``) do not walk the module tree; any other module is searched.
    """
    cached = model.__dict__.get(_LAYERS_ATTR)
    if cached is not None:
        return dict(cached)
    return {m.layer_id: m for m in model.modules() if isinstance(m, KasminaLayer)}


def unwrap(model: nn.Module, live_seeds: Literal["refuse", "keep", "drop"] = "refuse") -> nn.Module:
    """Remove Kasmina in place: FOSSILIZED seeds stay as plain modules; returns ``model``.

    Each KasminaLayer becomes its host module, or a GraftedModule (host + kept seeds) that computes the same
    outputs. ``live_seeds`` says what happens to seeds whose adaptation has not ended: ``"refuse"`` (the
    default) raises a ValueError naming them and changes nothing; ``"keep"`` keeps the seeds blended into the
    output now (a GRAFTING seed at its current alpha), so eval-mode outputs stay the same; ``"drop"`` drops
    them with a warning naming them.
    """
    if live_seeds not in ("refuse", "keep", "drop"):
        raise ValueError(f"live_seeds must be 'refuse', 'keep' or 'drop', not {live_seeds!r}")
    layers = [(path, m) for path, m in model.named_modules() if isinstance(m, KasminaLayer)]
    live = [f"{m.layer_id}[{i}] ({stage.value})" for _, m in layers for i, stage in m.live_seeds()]
    if live and live_seeds == "refuse":
        raise ValueError(f"live seeds would be dropped: {', '.join(live)}; fossilize or cull them first, or "
                         "pass live_seeds='keep' (keep the blended ones) or live_seeds='drop'")
    if live and live_seeds == "drop":
        warnings.warn(f"unwrap drops live seeds: {', '.join(live)}", UserWarning, stacklevel=2)
    for path, m in layers:
        _set_child(model, path, m.merged(keep_blended=live_seeds == "keep"))
    model.__dict__.pop(_LAYERS_ATTR, None)
    return model


def apply_commands(model: nn.Module, commands: list[KasminaControlCommand], epoch: int) -> list[str]:
    """Apply Tamiyo's commands at boundary ``epoch`` in order; returns why each refused command was refused.

    Never raises for a bad command (unknown slot, seed index out of range, illegal transition, embargo,
    locked seed): the refusal is in the returned list and the rest of the commands still apply.
    """
    begin_boundary(model, epoch)
    layers = kasmina_layers(model)
    errors: list[str] = []
    for cmd in commands:
        target = layers.get(cmd.layer_id)
        if target is None:
            errors.append(f"{cmd.seed_id}: {cmd.command.value} refused: unknown slot "
                          f"{cmd.layer_id!r}")
            continue
        try:
            error = target.apply_command(cmd, epoch)
        except Exception as exc:  # a bug must not take the training run down with it
            error = f"{cmd.seed_id}: {cmd.command.value} failed: {type(exc).__name__}: {exc}"
        if error:
            errors.append(error)
    return errors


def begin_boundary(model: nn.Module, epoch: int) -> None:
    """Run every layer's once-per-epoch boundary work for ``epoch`` (Kasmina's own moves included); later
    calls for the same epoch do nothing."""
    for layer in kasmina_layers(model).values():
        layer.begin_boundary(epoch)


def poll_loads(model: nn.Module, epoch: int) -> None:
    """Pick up finished kernel loads in every layer (attached, or marked failed) without the boundary's other work."""
    for layer in kasmina_layers(model).values():
        layer.poll_loads(epoch)


def pending_kernel_failures(model: nn.Module) -> dict[tuple[str, int], str]:
    """(layer id, seed index) -> reason, for every seed whose kernel failed (culled at the next boundary unless
    FOSSILIZED, which stays the identity)."""
    return {(layer_id, i): reason for layer_id, layer in kasmina_layers(model).items()
            for i, reason in layer.pending_failures().items()}


def share_kernel_failure(model: nn.Module, layer_id: str, index: int, reason: str, epoch: int) -> None:
    """Fail a seed's kernel because it failed on another rank, with that rank's ``reason`` (multi-rank training
    keeps every rank's seeds in the same stage)."""
    kasmina_layers(model)[layer_id].share_failure(index, reason, epoch)


def collect_telemetry(model: nn.Module, epoch: int) -> list[SeedTelemetry]:
    """Every seed's telemetry for boundary ``epoch``; resets the per-epoch accumulators."""
    return [t for layer in kasmina_layers(model).values() for t in layer.collect_telemetry(epoch)]


def seed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters of seeds in TRAINING, GRAFTING or FINE_TUNING (for the seed optimizer)."""
    return [p for layer in kasmina_layers(model).values() for p in layer.seed_parameters()]


def reconstruction_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of TRAINING seeds' reconstruction MSE from the last training forward (None when no seed trains).

    Its graph starts at detached host activations: backward touches seed parameters only.
    """
    losses = [loss for layer in kasmina_layers(model).values() if (loss := layer.reconstruction_loss()) is not None]
    return torch.stack(losses).sum() if losses else None


def drain_events(model: nn.Module) -> list[SeedEvent]:
    """Kernel loads, load failures, kernel runtime errors, readiness and redirects since the last call."""
    return [e for layer in kasmina_layers(model).values() for e in layer.drain_events()]


def drain_transitions(model: nn.Module) -> list[SeedTransition]:
    """Every stage change since the last call, commanded or Kasmina's own, layer by layer in the order made."""
    return [t for layer in kasmina_layers(model).values() for t in layer.drain_transitions()]


def seed_stages(model: nn.Module) -> list[tuple[str, int, SeedStage]]:
    """(layer id, seed index, current stage) of every seed, in model order."""
    return [(layer_id, i, layer.stage(i)) for layer_id, layer in kasmina_layers(model).items()
            for i in range(layer.seed_state.n)]


def seed_parameter_count(model: nn.Module) -> int:
    """Parameters of every attached seed module, in any stage."""
    return sum(layer.seed_parameter_count() for layer in kasmina_layers(model).values())


def host_parameter_count(model: nn.Module) -> int:
    """Parameters of the model that are not seed parameters."""
    seed_ids = {id(p) for layer in kasmina_layers(model).values() for p in layer.seeds.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in seed_ids)


def wait_for_loads(model: nn.Module, timeout: float | None = None) -> None:
    """Block until every background kernel load has finished (results are picked up at the next boundary)."""
    for layer in kasmina_layers(model).values():
        layer.wait_for_loads(timeout)
