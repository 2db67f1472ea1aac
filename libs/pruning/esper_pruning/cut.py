"""Tolaria's cuts: probes as masks, lysis through Torch-Pruning's dependency graph.

* A **probe** masks units (their outputs multiplied by 0 through a forward hook) until it is removed: nothing is
  deleted, and removing the hooks restores the model exactly.
* **Lysis** removes units physically. For each action, Torch-Pruning's ``DependencyGraph`` gives the group of
  every tensor coupled to the named units (the next layer's inputs, a BatchNorm, the other side of a residual
  addition) and prunes them together, so every tensor stays dense. A group that would change a protected
  layer's outputs (a seed slot's host, the model's output layer) is refused, and nothing of it is cut.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from esper_contracts import PruneAction, PruneGranularity


class CutError(ValueError):
    """An action cannot be applied: no such layer, a unit kind this cut does not remove, or a protected layer."""


@dataclass(frozen=True)
class CutResult:
    """What a lysis did: units removed and the model's size before and after."""

    units_removed: int
    parameters_before: int
    parameters_after: int
    macs_before: int
    macs_after: int


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (Torch-Pruning's counter)."""
    macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs)


def _module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise CutError(f"the model has no layer {path!r}") from None


def check_actions(model: nn.Module, actions: Sequence[PruneAction]) -> None:
    """Raise :class:`CutError` for an action naming a missing layer, a unit index out of range, or a wrong kind."""
    for action in actions:
        module = _module(model, action.module_path)
        units = _unit_count(module, action)
        bad = [i for i in action.indices if i >= units]
        if bad:
            raise CutError(f"{action.module_path} has {units} units; the plan names {bad}")
        if len(set(action.indices)) >= units:
            raise CutError(f"{action.module_path}: the plan would remove all {units} units")


def _unit_count(module: nn.Module, action: PruneAction) -> int:
    g = action.granularity
    if g == PruneGranularity.NEURON and isinstance(module, nn.Linear):
        return module.out_features
    if g == PruneGranularity.CHANNEL and isinstance(module, nn.Conv2d):
        return module.out_channels
    if g == PruneGranularity.HEAD and isinstance(module, nn.MultiheadAttention):
        return module.num_heads
    raise CutError(f"{action.module_path} is a {type(module).__name__}: it has no {g.value} units")


class Probe:
    """Units masked to zero by forward hooks until :meth:`remove`; the model's tensors are never changed."""

    def __init__(self, model: nn.Module, actions: Sequence[PruneAction]) -> None:
        check_actions(model, actions)
        self._hooks: list[Any] = []
        for action in actions:
            module = _module(model, action.module_path)
            if isinstance(module, nn.MultiheadAttention):
                self._hooks.append(_mask_heads(module, action.indices))
                continue
            mask = torch.ones(_unit_count(module, action))
            mask[list(action.indices)] = 0.0

            def hook(_m: nn.Module, _i: object, out: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
                shape = [1, -1] + [1] * (out.dim() - 2)
                return out * mask.to(out).view(shape)
            self._hooks.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        """Unmask every unit."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def _mask_heads(module: nn.MultiheadAttention, heads: Sequence[int]) -> Any:
    """Mask heads at the output projection's input: its columns of those heads are read as zeros."""
    d = module.embed_dim // module.num_heads
    mask = torch.ones(module.embed_dim)
    for h in heads:
        mask[h * d:(h + 1) * d] = 0.0
    weight = module.out_proj.weight

    def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        module.out_proj.weight = nn.Parameter(weight * mask.to(weight), requires_grad=weight.requires_grad)

    def post(_m: nn.Module, _a: object, out: Any) -> None:
        module.out_proj.weight = weight

    handles = [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]

    class _Both:
        def remove(self) -> None:
            for h in handles:
                h.remove()
            module.out_proj.weight = weight
    return _Both()


_OUT = {PruneGranularity.NEURON: tp.prune_linear_out_channels, PruneGranularity.CHANNEL: tp.prune_conv_out_channels}


def lysis(model: nn.Module, actions: Sequence[PruneAction], example_inputs: torch.Tensor, *,
          protected: Sequence[str] = ()) -> CutResult:
    """Remove the units ``actions`` name, with every coupled tensor; ``protected`` layers keep their outputs.

    All groups are checked before anything is cut: a refused action raises :class:`CutError` with the model
    unchanged.
    """
    check_actions(model, actions)
    if any(a.granularity == PruneGranularity.HEAD for a in actions):
        raise CutError("lysis of attention heads is not supported (nn.MultiheadAttention ties the head width to "
                       "the embedding); probe them instead")
    guarded = {id(_module(model, p)) for p in protected if _exists(model, p)}
    params_before, macs_before = parameter_count(model), count_macs(model, example_inputs)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    groups = []
    for action in actions:
        module = _module(model, action.module_path)
        group = graph.get_pruning_group(module, _OUT[action.granularity], idxs=sorted(set(action.indices)))
        touched = _protected_outputs(group, guarded)
        if touched:
            raise CutError(f"cutting {action.module_path} would change the outputs of protected layer {touched}")
        if not graph.check_pruning_group(group):
            raise CutError(f"cutting {action.module_path} {action.indices} would empty a coupled layer")
        groups.append(group)
    if len(groups) > 1:  # indices of later groups must be read on the model as the earlier cuts leave it
        for action in actions:
            module = _module(model, action.module_path)
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
            graph.get_pruning_group(module, _OUT[action.granularity], idxs=sorted(set(action.indices))).prune()
    else:
        groups[0].prune()
    return CutResult(units_removed=sum(len(set(a.indices)) for a in actions), parameters_before=params_before,
                     parameters_after=parameter_count(model), macs_before=macs_before,
                     macs_after=count_macs(model, example_inputs))


def _protected_outputs(group: Any, guarded: set[int]) -> str | None:
    """The name of a protected layer whose outputs ``group`` would cut, if any."""
    for dep, _ in group:
        if id(dep.target.module) in guarded and dep.handler in (tp.prune_linear_out_channels,
                                                                tp.prune_conv_out_channels):
            return str(dep.target.name)
    return None


def cuttable(model: nn.Module, paths: Sequence[str], example_inputs: torch.Tensor, *,
             protected: Sequence[str] = ()) -> dict[str, int]:
    """Those of ``paths`` (Linear or Conv2d layers) whose units can be cut without touching ``protected``, each
    with the parameters one of its units takes along (its group pruned on a copy of the model and counted)."""
    guarded = {id(_module(model, p)) for p in protected if _exists(model, p)}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    keep: dict[str, int] = {}
    total = parameter_count(model)
    for path in paths:
        module = _module(model, path)
        fn = tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels
        if _protected_outputs(graph.get_pruning_group(module, fn, idxs=[0]), guarded) is not None:
            continue
        trial = copy.deepcopy(model)
        trial_graph = tp.DependencyGraph().build_dependency(trial, example_inputs=example_inputs, verbose=False)
        trial_graph.get_pruning_group(trial.get_submodule(path), fn, idxs=[0]).prune()
        keep[path] = max(total - parameter_count(trial), 1)
    return keep


def _exists(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
