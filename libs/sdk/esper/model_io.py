"""``load_model``: a model saved by ``save_model`` back in memory, without the user rewriting the wrapping code.

``save_model`` records in lineage.json how the model was built: the host's class (``module:qualname``), the
Kasmina config it was wrapped with (when it still has Kasmina layers), and every GraftedModule ``unwrap`` left
(its path, chunk layout, seeds' kernel ids and alphas). ``load_model`` rebuilds the same structure around a
fresh host (the user's instance, or the recorded class called without arguments) and loads ``model.pt`` into it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esper_kernels import KernelSource, LocalKernelLibrary

from .kasmina import GraftedModule, KasminaConfig, KasminaLayer, wrap
from .kasmina.blending import ChunkLayout


def describe_structure(model: nn.Module) -> dict[str, Any]:
    """What ``load_model`` needs to rebuild ``model`` around a fresh host (written into lineage.json)."""
    layers = [m for m in model.modules() if isinstance(m, KasminaLayer)]
    grafts = {path: {"chunks": dataclasses.asdict(m.chunks), "kernel_ids": {str(i): k for i, k in m.kernel_ids.items()},
                     "alphas": {str(i): a for i, a in m.alphas.items()}}
              for path, m in model.named_modules() if isinstance(m, GraftedModule)}
    return {"model_class": f"{type(model).__module__}:{type(model).__qualname__}",
            "kasmina": layers[0].config.model_dump(mode="json") if layers else None, "grafted": grafts}


def _host(recorded: str, host: nn.Module | None) -> nn.Module:
    if host is not None:
        return host
    module_name, _, qualname = recorded.partition(":")
    try:
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls()
    except Exception as exc:
        raise TypeError(f"cannot build the saved model's class {recorded} without arguments "
                        f"({type(exc).__name__}: {exc}); pass a fresh instance: load_model(path, model=MyModel(...))"
                        ) from exc


def _load(folder: Path, model: nn.Module | None, kernels: KernelSource | None) -> nn.Module:
    """load_model's work (see there)."""
    document = json.loads((folder / "lineage.json").read_text())
    structure = document.get("structure")
    if structure is None:
        raise ValueError(f"{folder / 'lineage.json'} has no 'structure' (saved before load_model existed): "
                         "wrap your model as it was and call load_state_dict(torch.load(model.pt))")
    host = _host(structure["model_class"], model)
    kernels = kernels or LocalKernelLibrary()
    if structure["kasmina"] is not None:
        wrap(host, KasminaConfig.model_validate(structure["kasmina"]), kernels)
    for at, graft in structure["grafted"].items():
        parent_path, _, name = at.rpartition(".")
        parent = host.get_submodule(parent_path) if parent_path else host
        chunk_fields = {**graft["chunks"], "bounds": tuple(tuple(b) for b in graft["chunks"]["bounds"])}
        chunks = ChunkLayout(**chunk_fields)
        seeds = {}
        for i, kernel in graft["kernel_ids"].items():
            kernels.register_interface(chunks.interface(int(i)))
            seeds[int(i)] = kernels.load(kernel)
        alphas = {int(i): float(a) for i, a in graft["alphas"].items()}
        parent._modules[name] = GraftedModule(parent._modules[name], seeds, chunks, alphas,  # type: ignore[arg-type]
                                              {int(i): k for i, k in graft["kernel_ids"].items()})
    state = torch.load(folder / "model.pt", map_location="cpu", weights_only=False)
    host.load_state_dict(state)
    return host.eval()


def load_model(path: str | Path, model: nn.Module | None = None, kernels: KernelSource | None = None) -> nn.Module:
    """The model saved in directory ``path`` (``model.pt`` + ``lineage.json``), in eval mode.

    ``model`` is a fresh instance of the plain (never wrapped) host class; without it the class recorded at
    save time is imported and called with no arguments. A model saved wrapped comes back wrapped with the same
    Kasmina config (seeds rebuilt from their kernels through ``kernels``, default the built-in library); one saved
    after ``unwrap`` comes back as plain modules with its fossilized seeds.
    """
    try:
        return _load(Path(path), model, kernels)
    except (ValueError, RuntimeError) as exc:
        if model is not None:
            raise
        raise TypeError(f"the saved model does not fit its class built without arguments ({exc}); pass a fresh "
                        "instance: load_model(path, model=MyModel(...))") from exc
