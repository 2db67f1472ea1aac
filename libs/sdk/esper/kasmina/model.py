"""Whole-model Kasmina: inject seed slots into a model (``wrap``), drive them, and take them out (``unwrap``).

Slots are named by the module path they wrap (``blocks.0.mlp``); that path is the ``layer_id`` of every
command and telemetry record. Boundary functions (``collect_telemetry``, ``apply_commands``) run each
layer's once-per-epoch boundary work first, so Tolaria may call them in either order.
"""

from __future__ import annotations

import fnmatch
import warnings

import torch
from torch import nn

from esper_contracts import KasminaControlCommand, SeedStage, SeedTelemetry
from esper_kernels import KernelSource, LocalKernelLibrary

from .config import KasminaConfig
from .layer import KasminaLayer
from .telemetry import SeedEvent, SeedTransition

#: Containers that read their children's weights directly (fused fast paths) instead of calling them:
#: modules inside them are never wrapped, only the container itself.
_FUSED_CONTAINERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _geometry(module: nn.Module, path: str) -> tuple[str, int, bool, bool]:
    """(layout, features, seq_first, infer_layout) of a module's output; raises ValueError when unknown."""
    if isinstance(module, nn.Conv2d):
        return "BCHW", module.out_channels, False, False
    if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
        return "BTD", module.linear2.out_features, not module.self_attn.batch_first, False
    if isinstance(module, nn.Linear):
        return "BD", module.out_features, False, True
    for attr, layout in (("out_features", "BD"), ("out_channels", "BCHW")):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return layout, value, False, layout == "BD"
    raise ValueError(f"cannot tell the output features of {path!r} ({type(module).__name__}); "
                     "target Linear, Conv2d, TransformerEncoderLayer, or a module with out_features/out_channels")


def _targets(model: nn.Module, config: KasminaConfig) -> list[str]:
    modules = dict(model.named_modules())
    chosen: list[str] = []
    for path, module in modules.items():
        if not path:
            continue
        if any(path.startswith(t + ".") for t in chosen):
            continue  # the outermost matching module wins; nested slots are not created
        if config.target_modules:
            matched = any(fnmatch.fnmatchcase(path, p) for p in config.target_modules)
        else:
            matched = type(module).__name__ in config.target_types
        if not matched or any(fnmatch.fnmatchcase(path, p) for p in config.exclude_modules):
            continue
        parts = path.split(".")
        fused = next((".".join(parts[:k]) for k in range(1, len(parts))
                      if isinstance(modules[".".join(parts[:k])], _FUSED_CONTAINERS)), None)
        if fused is not None:
            if config.target_modules:
                warnings.warn(f"Kasmina: {path!r} is inside {fused!r}, whose fused kernels read its weights "
                              "directly; wrap the container instead. Skipped.", stacklevel=3)
            continue
        chosen.append(path)
    return chosen


def _set_child(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    parent._modules[name] = new


def wrap(model: nn.Module, config: KasminaConfig | None = None, kernels: KernelSource | None = None) -> nn.Module:
    """Inject a KasminaLayer around every targeted module of ``model``, in place; returns ``model``.

    Targets are the modules whose path matches ``config.target_modules`` (fnmatch), or else whose class
    name is in ``config.target_types``, minus ``exclude_modules``. Every seed starts DORMANT, so the
    wrapped model computes exactly what it computed before. ``kernels`` defaults to a
    :class:`LocalKernelLibrary` of the built-in blueprints.
    """
    config = config or KasminaConfig()
    if any(isinstance(m, KasminaLayer) for m in model.modules()):
        raise ValueError("model already has Kasmina layers; unwrap it first")
    if kernels is None:
        kernels = LocalKernelLibrary(cache_mb=config.kernel_cache_mb)
    paths = _targets(model, config)
    if not paths:
        raise ValueError(f"no module matched target_modules={config.target_modules} / "
                         f"target_types={config.target_types} (excluding {config.exclude_modules})")
    for path in paths:
        host = model.get_submodule(path)
        layout, features, seq_first, infer = _geometry(host, path)
        if config.chunks_per_layer > features:
            raise ValueError(f"{path!r} has {features} features, fewer than chunks_per_layer={config.chunks_per_layer}")
        layer = KasminaLayer(host, path, config, kernels, layout, features, seq_first, infer)
        layer.train(host.training)
        _set_child(model, path, layer)
        for i in range(len(layer.chunks.bounds)):
            kernels.register_interface(layer.chunks.interface(i))
    layers = {m.layer_id: m for m in model.modules() if isinstance(m, KasminaLayer)}
    model.__dict__[_LAYERS_ATTR] = layers  # a plain attribute: not a submodule, not in the state dict
    for m in model.modules():
        # The nested-tensor fast path would hand the layers a NestedTensor, which chunks cannot slice.
        if isinstance(m, nn.TransformerEncoder) and any(isinstance(c, KasminaLayer) for c in m.layers):
            m.use_nested_tensor = False
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


def unwrap(model: nn.Module) -> nn.Module:
    """Remove Kasmina in place: FOSSILIZED seeds stay as plain modules, everything else is dropped.

    Each KasminaLayer becomes its host module, or a GraftedModule (host + fossilized seeds) that computes
    the same outputs. Returns ``model``.
    """
    for path, m in list(model.named_modules()):
        if isinstance(m, KasminaLayer):
            _set_child(model, path, m.merged())
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
