"""Checkpointing a KasminaLayer (its ``get_extra_state`` / ``set_extra_state``), kept apart from the forward and
lifecycle code: what a checkpoint holds besides the seed modules' weights, and how a layer is rebuilt from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esper_contracts import SeedId

from .lifecycle import TRAINED_STAGES
from .loader import build_kernel

if TYPE_CHECKING:
    from .layer import KasminaLayer

STATE_VERSION = 1


def save(layer: KasminaLayer) -> dict[str, Any]:
    """The layer's extra state for ``state_dict``: everything but the seed modules' weights."""
    return {
        "version": STATE_VERSION, "state": layer.seed_state.tensor.clone(), "health": layer.health.state(),
        "kernels": list(layer.kernel_table), "attached": sorted(int(k) for k in layer.seeds),
        "layout": layer.chunks.layout, "infer_layout": layer._infer_layout, "countdown": layer._countdown[0],
        "boundary": layer._boundary, "scaffolds": sorted(layer.scaffold_seeds),
        "wean": {str(i): a for i, a in layer._wean_alpha.items()},
    }


def restore(layer: KasminaLayer, state: dict[str, Any]) -> None:
    """Restore what :func:`save` wrote; seed modules are rebuilt through the KernelSource (their weights then
    load from the same state dict) and loads that were under way restart."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{layer.layer_id}: unsupported Kasmina state version {state.get('version')!r}")
    saved = state["state"]
    if saved.dim() == 2 and saved.shape[1] != layer.seed_state.n:
        raise ValueError(f"{layer.layer_id!r}: the saved state has {saved.shape[1]} seed(s) for this layer and this "
                         f"model has {layer.seed_state.n}: it was wrapped with a different chunks_per_layer "
                         f"({layer.config.chunks_per_layer} here); wrap with the chunks_per_layer it was saved with")
    layer.close()
    layer.seed_state.load(saved)
    layer.health.load(state["health"])
    layer.kernel_table = list(state["kernels"])
    layer._set_layout(state["layout"])
    layer._infer_layout = bool(state["infer_layout"])
    layer._countdown, layer._boundary = [int(state["countdown"])], int(state["boundary"])
    layer._recon, layer._distill = [], []
    layer.scaffold_seeds = {int(i) for i in state.get("scaffolds", [])}
    layer._wean_alpha = {int(i): float(a) for i, a in state.get("wean", {}).items()}
    for key in list(layer.seeds):
        del layer.seeds[key]
    layer._failures = {}
    device, dtype = layer._placement()
    for i in state["attached"]:
        kernel = layer.kernel_id(i)
        if kernel is None:
            raise ValueError(f"{SeedId(layer.layer_id, i)}: checkpoint has a seed module but no kernel id")
        layer.kernels.register_interface(layer.chunks.interface(i))
        module = build_kernel(layer.kernels, kernel, device, dtype)
        module.train(layer.training)
        module.requires_grad_(layer.seed_state.stage(i) in TRAINED_STAGES)
        layer.seeds[str(i)] = module
    layer._restart_loads()
    layer._rebuild_plan()
