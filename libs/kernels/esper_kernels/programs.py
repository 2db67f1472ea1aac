"""The calling convention of compiled kernel programs, shared by the compiler (Tezzeret) and the loader.

A kernel's programs take its weights as *inputs*, so nothing is baked into the binary and a compiled seed
stays trainable (docs/decisions/0007):

* forward: ``(x, parameters, buffers) -> y`` — :class:`WeightsAsInputs` wraps an IR module that way;
* backward (AOTInductor pipelines): ``(x, dy, parameters, buffers) -> (dx, *dparameters)`` —
  :class:`VectorJacobianProduct` traces the vector-Jacobian product of that function down to aten
  operators with ``make_fx``, so it can be exported and compiled like any forward program.

:func:`export_forward` and :func:`export_backward` export both with the dynamic axes a kernel keeps.

``parameters`` and ``buffers`` are tuples in the order of the module's ``named_parameters()`` and
``named_buffers()``; the artifact's manifest records those names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class WeightsAsInputs(nn.Module):
    """``module`` as a function of its weights: ``forward(x, parameters, buffers)``, nothing baked in.

    The wrapped module is held outside nn.Module's registry, so the exported program has no parameters
    of its own: every weight arrives as an input, in the order of ``param_names`` and ``buffer_names``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "inner", module)
        self.param_names = [n for n, _ in module.named_parameters()]
        self.buffer_names = [n for n, _ in module.named_buffers()]

    def forward(self, x: torch.Tensor, params: tuple[torch.Tensor, ...],
                buffers: tuple[torch.Tensor, ...]) -> torch.Tensor:
        weights = dict(zip(self.param_names, params, strict=True)) | dict(zip(self.buffer_names, buffers, strict=True))
        inner: nn.Module = self.inner  # type: ignore[assignment]
        return functional_call(inner, weights, (x,))  # type: ignore[no-any-return]

    def weights(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The wrapped module's current parameters and buffers, detached, in input order."""
        inner: nn.Module = self.inner  # type: ignore[assignment]
        return (tuple(p.detach() for p in inner.parameters()), tuple(b.detach() for b in inner.buffers()))


class VectorJacobianProduct(nn.Module):
    """``forward(x, dy, parameters, buffers) -> (dx, *dparameters)`` of a WeightsAsInputs function, as an aten graph."""

    def __init__(self, fn: WeightsAsInputs, x: torch.Tensor) -> None:
        super().__init__()
        from torch.fx.experimental.proxy_tensor import make_fx

        n_params = len(fn.param_names)

        def vjp(x: torch.Tensor, dy: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.enable_grad():
                xs = x.detach().requires_grad_(True)
                ps = [w.detach().requires_grad_(True) for w in weights[:n_params]]
                y = fn(xs, tuple(ps), tuple(weights[n_params:]))
                return torch.autograd.grad(y, [xs, *ps], dy, materialize_grads=True)

        params, buffers = fn.weights()
        # Symbolic tracing keeps every size symbolic; export then decides which axes stay dynamic.
        self.graph_module = make_fx(vjp, tracing_mode="symbolic")(x, torch.randn_like(x), *params, *buffers)

    def forward(self, x: torch.Tensor, dy: torch.Tensor, params: tuple[torch.Tensor, ...],
                buffers: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(self.graph_module(x, dy, *params, *buffers))


def export_forward(fn: WeightsAsInputs, x: torch.Tensor, dynamic_axes: list[int]) -> torch.export.ExportedProgram:
    """``torch.export`` of the forward program, traced at ``x``, with ``dynamic_axes`` of the input dynamic.

    Trace with at least 2 on each dynamic axis: a size of 1 would be specialised into the graph.
    """
    params, buffers = fn.weights()
    spec = {axis: torch.export.Dim.DYNAMIC for axis in dynamic_axes}
    return torch.export.export(fn, (x, params, buffers),
                               dynamic_shapes=(spec, (None,) * len(params), (None,) * len(buffers)))


def export_backward(fn: WeightsAsInputs, x: torch.Tensor, dynamic_axes: list[int]) -> torch.export.ExportedProgram:
    """``torch.export`` of the backward program (the vector-Jacobian product), with the same dynamic axes."""
    params, buffers = fn.weights()
    spec = {axis: torch.export.Dim.DYNAMIC for axis in dynamic_axes}
    return torch.export.export(VectorJacobianProduct(fn, x), (x, torch.randn_like(x), params, buffers),
                               dynamic_shapes=(spec, spec, (None,) * len(params), (None,) * len(buffers)))
