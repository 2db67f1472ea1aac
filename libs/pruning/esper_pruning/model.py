"""A live model's side of removal: which modules may lose units, their statistics on data, checkpoints as bytes.

What may be cut is decided here (decision 0013): Linear layers (neurons), Conv2d layers (channels) and
MultiheadAttention (heads) whose outputs are not the model's outputs. Fossilized seeds are merged first
(``esper.kasmina.unwrap`` turns them into plain modules, and their own layers are prunable like any other),
but a seed slot's host layer keeps its outputs: the seed's kernel was built for that chunk width. Those
layers are listed in :func:`slot_hosts` and passed to Torch-Pruning as ignored layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from esper_contracts import ImportanceCriterion, PrunableModule, UnitStatistics

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def slot_hosts(model: nn.Module) -> set[str]:
    """Paths of layers whose output width a seed slot depends on: a grafted layer's host, a whole Kasmina layer."""
    paths: set[str] = set()
    for path, m in model.named_modules():
        kind = type(m).__name__
        if kind == "GraftedModule":
            paths.add(f"{path}.host" if path else "host")
        elif kind == "KasminaLayer":  # still wrapped: nothing inside is cut
            paths.add(path)
            paths.update(f"{path}.{sub}" for sub, _ in m.named_modules() if sub)
    return paths


def prunable_modules(model: nn.Module, exclude: Iterable[str] = (),
                     example_inputs: torch.Tensor | None = None) -> list[PrunableModule]:
    """The modules of ``model`` whose output units may be scored and cut, in module order.

    ``exclude``: paths (or path prefixes ending in ``.``) never to list, the output layer(s) among them.
    Layers of a fossilized seed are listed; the host layer of a seed slot is not. With ``example_inputs``,
    a Linear or Conv layer is listed only if Torch-Pruning's dependency graph can cut it without changing the
    outputs of an excluded layer or a slot host (a seed's last layer feeds its slot's fixed chunk width).
    """
    excluded = tuple(exclude)
    hosts = slot_hosts(model)
    named = list(model.named_modules())
    found: list[PrunableModule] = []
    for i, (path, m) in enumerate(named):
        if not path or path in hosts or any(path == e or path.startswith(e) for e in excluded if e):
            continue
        if isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim:
            found.append(PrunableModule(module_path=path, kind="attention", num_heads=m.num_heads))
        elif isinstance(m, nn.Conv2d) and m.groups == 1:
            bn = next((p for p, n in named[i + 1:i + 3] if isinstance(n, nn.BatchNorm2d)
                       and n.num_features == m.out_channels), None)
            found.append(PrunableModule(module_path=path, kind="conv", batchnorm_path=bn))
        elif isinstance(m, nn.Linear) and not _inside_attention(path, named):
            found.append(PrunableModule(module_path=path, kind="linear"))
    if example_inputs is None:
        return found
    from .cut import cuttable

    dense = [m.module_path for m in found if m.kind != "attention"]
    ok = cuttable(model, dense, example_inputs, protected=[*hosts, *excluded])
    return [m if m.kind == "attention" else m.model_copy(update={"unit_parameters": ok[m.module_path]})
            for m in found if m.kind == "attention" or m.module_path in ok]


def _inside_attention(path: str, named: Sequence[tuple[str, nn.Module]]) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) and path.startswith(p + ".") for p, m in named if p)


def unit_statistics(model: nn.Module, modules: Sequence[PrunableModule], batches: Iterable[Batch],
                    loss_fn: LossFn, *, max_batches: int = 8) -> list[UnitStatistics]:
    """Taylor (|sum w·dL/dw| per unit, averaged over batches) and mean |activation| per unit, on ``batches``.

    Attention modules get Taylor only (their output mixes heads). The model's gradients are left zeroed.
    """
    wanted = {m.module_path: m for m in modules}
    acts: dict[str, torch.Tensor] = {}
    taylor: dict[str, torch.Tensor] = {}
    hooks = []
    for path, m in model.named_modules():
        if path in wanted and wanted[path].kind in ("linear", "conv"):
            def hook(_m: nn.Module, _i: object, out: torch.Tensor, path: str = path) -> None:
                dims = [d for d in range(out.dim()) if d != 1]
                value = out.detach().abs().mean(dim=dims)
                acts[path] = acts.get(path, torch.zeros_like(value)) + value
            hooks.append(m.register_forward_hook(hook))
    seen = 0
    was_training = model.training
    model.train(False)
    try:
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            for path, spec in wanted.items():
                taylor[path] = taylor.get(path, 0) + _taylor(model.get_submodule(path), spec)
            seen += 1
            if seen >= max_batches:
                break
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    out = [UnitStatistics(module_path=p, criterion=ImportanceCriterion.TAYLOR, values=(t / seen).tolist())
           for p, t in taylor.items()]
    out += [UnitStatistics(module_path=p, criterion=ImportanceCriterion.ACTIVATION, values=(a / seen).tolist())
            for p, a in acts.items()]
    return out


def _taylor(module: nn.Module, spec: PrunableModule) -> torch.Tensor:
    """|sum over each unit of w·dL/dw| for one batch (bias included)."""
    if spec.kind == "attention":
        assert isinstance(module, nn.MultiheadAttention)
        w, g = module.in_proj_weight, module.in_proj_weight.grad
        heads, e = module.num_heads, w.shape[1]
        per = (w * g).view(3, heads, e // heads, e).sum(dim=(0, 2, 3)) if g is not None else torch.zeros(heads)
        ow, og = module.out_proj.weight, module.out_proj.weight.grad
        if og is not None:
            per = per + (ow * og).view(e, heads, e // heads).sum(dim=(0, 2))
        return per.detach().abs()
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    if weight.grad is None:
        return torch.zeros(weight.shape[0])
    per = (weight * weight.grad).flatten(1).sum(dim=1)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.grad is not None:
        per = per + bias * bias.grad
    return per.detach().abs()


def state_bytes(model: nn.Module) -> bytes:
    """The model's state dict as safetensors bytes (contiguous copies; shared tensors written once each)."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    return save_safetensors(state)


def load_state(data: bytes) -> dict[str, torch.Tensor]:
    """A safetensors state dict from bytes: tensors only, nothing executed."""
    return load_safetensors(data)
