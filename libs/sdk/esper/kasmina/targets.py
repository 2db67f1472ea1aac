"""Where a seed slot can go: which modules ``wrap`` targets, and where each one's output features are.

``output_geometry`` knows, per module type, the feature count and the layout of the output a slot
cuts into chunks, and which element of a tuple output that is (a recurrent layer and
``nn.MultiheadAttention`` return ``(output, extra)``: the slot works on ``output`` and hands the rest back
untouched). ``choose_targets`` turns a KasminaConfig into module paths and refuses, with the reason,
patterns and type names that match nothing, so a typo is never silently ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from dataclasses import dataclass

from torch import nn

from .config import KasminaConfig

#: Containers that read their children's weights directly (fused fast paths) instead of calling them:
#: modules inside them are never wrapped, only the container itself.
FUSED_CONTAINERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.RNNBase)

SUPPORTED = ("Linear, Conv1d, Conv2d, Embedding, GRU/LSTM/RNN, MultiheadAttention, TransformerEncoderLayer, "
             "TransformerDecoderLayer, a Sequential ending in one of these, or a module with out_features/out_channels")


@dataclass(frozen=True)
class OutputGeometry:
    """What a slot needs to know about its host's output.

    ``layout`` is the seeds' interface (BD, BTD or BCHW); ``seq_first`` marks a (tokens, batch, features)
    output; ``channels_first`` a (batch, features, tokens) one (Conv1d), which seeds see as BTD;
    ``infer_layout`` lets a Linear-like output learn BD vs BTD from its first forward; ``output_index`` is
    the tuple element holding the output (None: the output is the tensor itself).
    """

    layout: str
    features: int
    seq_first: bool = False
    channels_first: bool = False
    infer_layout: bool = False
    output_index: int | None = None


def _recurrent(module: nn.RNNBase) -> OutputGeometry:
    width = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    directions = 2 if module.bidirectional else 1
    return OutputGeometry("BTD", width * directions, seq_first=not module.batch_first, output_index=0)


def output_geometry(module: nn.Module, path: str) -> OutputGeometry:
    """The output geometry of ``module`` (at ``path``, for the error); raises ValueError when unknown."""
    if isinstance(module, nn.Conv2d):
        return OutputGeometry("BCHW", module.out_channels)
    if isinstance(module, nn.Conv1d):
        return OutputGeometry("BTD", module.out_channels, channels_first=True)
    if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
        return OutputGeometry("BTD", module.linear2.out_features, seq_first=not module.self_attn.batch_first)
    if isinstance(module, nn.MultiheadAttention):
        return OutputGeometry("BTD", module.embed_dim, seq_first=not module.batch_first, output_index=0)
    if isinstance(module, nn.RNNBase):
        return _recurrent(module)
    if isinstance(module, nn.Linear):
        return OutputGeometry("BD", module.out_features, infer_layout=True)
    if isinstance(module, nn.Embedding):
        return OutputGeometry("BD", module.embedding_dim, infer_layout=True)
    if isinstance(module, nn.Sequential):
        for child in reversed(list(module)):
            try:
                return output_geometry(child, path)
            except ValueError:
                continue
    elif not isinstance(module, nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose3d):
        for attr, layout in (("out_features", "BD"), ("out_channels", "BCHW")):
            value = getattr(module, attr, None)
            if isinstance(value, int) and value > 0:
                return OutputGeometry(layout, value, infer_layout=layout == "BD")
    raise ValueError(f"cannot tell the output features of {path!r} ({type(module).__name__}); target {SUPPORTED}")


def output_head(model: nn.Module) -> str | None:
    """Path of the model's output head: the last ``nn.Linear`` registered (outside fused containers), or None."""
    fused: list[str] = []
    head = None
    for path, module in model.named_modules():
        if any(path.startswith(f + ".") for f in fused):
            continue
        if isinstance(module, FUSED_CONTAINERS):
            fused.append(path)
        elif isinstance(module, nn.Linear):
            head = path
    return head


def _near(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_names(model: nn.Module, config: KasminaConfig, modules: dict[str, nn.Module]) -> None:
    """Refuse target_modules patterns and target_types names that match nothing (naming the near miss)."""
    paths = [p for p in modules if p]
    if config.target_modules:
        unmatched = [p for p in config.target_modules if not any(fnmatch.fnmatchcase(x, p) for x in paths)]
        if unmatched:
            hints = "; ".join(f"{p!r}{_near(p, paths)}" for p in unmatched)
            raise ValueError(f"target_modules entries match no module of {type(model).__name__}: {hints}")
        return
    present = sorted({type(m).__name__ for m in modules.values()})
    known = set(present) | {n for n in dir(nn) if isinstance(getattr(nn, n), type)}
    unknown = [t for t in config.target_types if t not in known]
    if unknown:
        hints = "; ".join(f"{t!r}{_near(t, present) or _near(t, sorted(known))}" for t in unknown)
        raise ValueError(f"target_types names no module class of {type(model).__name__} or torch.nn: {hints}")


def _inside_fused(path: str, modules: dict[str, nn.Module]) -> str | None:
    parts = path.split(".")
    return next((".".join(parts[:k]) for k in range(1, len(parts))
                 if isinstance(modules[".".join(parts[:k])], FUSED_CONTAINERS)), None)


def choose_targets(model: nn.Module, config: KasminaConfig) -> list[str]:
    """Module paths ``wrap`` puts slots on, outermost first; raises ValueError when nothing (or a typo) matches.

    ``target_modules`` (fnmatch on paths) wins over ``target_types`` (class names); ``exclude_modules`` is
    taken away. A type match skips the output head (see :func:`output_head`) unless ``include_head``; a
    ``target_modules`` pattern that names the head is honoured.
    """
    modules = dict(model.named_modules())
    _check_names(model, config, modules)
    head = None if config.include_head or config.target_modules else output_head(model)
    chosen: list[str] = []
    for path, module in modules.items():
        if not path or any(path.startswith(t + ".") for t in chosen):
            continue  # the outermost matching module wins; nested slots are not created
        if config.target_modules:
            matched = any(fnmatch.fnmatchcase(path, p) for p in config.target_modules)
        else:
            matched = type(module).__name__ in config.target_types
        if not matched or any(fnmatch.fnmatchcase(path, p) for p in config.exclude_modules):
            continue
        if head is not None and (head == path or head.startswith(path + ".")):
            continue  # a slot on the logits would squeeze them through its bottleneck
        fused = _inside_fused(path, modules)
        if fused is not None:
            if config.target_modules:
                warnings.warn(f"Kasmina: {path!r} is inside {fused!r}, whose fused kernels read its weights "
                              "directly; wrap the container instead. Skipped.", stacklevel=4)
            continue
        chosen.append(path)
    if not chosen:
        skipped = f"; the output head {head!r} is skipped unless include_head=True" if head else ""
        raise ValueError(f"no module matched target_modules={config.target_modules} / "
                         f"target_types={config.target_types} (excluding {config.exclude_modules}){skipped}")
    return chosen
