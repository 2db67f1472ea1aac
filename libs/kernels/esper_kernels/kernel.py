"""A loaded compiled artifact as a trainable seed kernel, and the loader Kasmina and Urabrask share.

Weights are program *inputs*, not constants baked into the binary: a loaded kernel owns them (one flat
``nn.Parameter``), so a compiled seed trains through TRAINING and FINE_TUNING like an eager one, is
checkpointed and rolled back with the model, and the forward and backward it runs are both the compiled
ones (docs/decisions/0007). Compiled programs have eval-mode semantics (dropout off, batch norm on its
running statistics, which are inputs but never updated).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from esper_contracts import CompilationPipeline

from .container import AOTI_PIPELINES, BACKWARD_MEMBER, PROGRAM_MEMBER, KernelArtifact, open_kernel_artifact
from .errors import KernelFormatError, KernelHardwareError
from .exported import load_exported
from .native import NativeProgram, load_aoti


class _NativeKernelFunction(torch.autograd.Function):
    """Forward through the compiled program, backward through the compiled vector-Jacobian product."""

    @staticmethod
    def forward(ctx: Any, kernel: CompiledKernel, n_params: int, x: torch.Tensor,  # type: ignore[override]
                *weights: torch.Tensor) -> torch.Tensor:
        ctx.kernel, ctx.n_params = kernel, n_params
        ctx.save_for_backward(x, *weights)
        return kernel._forward_program([x, *weights])[0]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, *weights = ctx.saved_tensors
        grads = ctx.kernel._backward_program([x, grad.contiguous(), *weights])
        n_buffers = len(weights) - ctx.n_params
        return (None, None, *grads[:1 + ctx.n_params], *([None] * n_buffers))


_REGISTRY_KEYS: tuple[str, ...] | None = None


def _registries(state: dict[str, Any]) -> tuple[str, ...]:
    """Keys of an nn.Module's ``__dict__`` holding its mutable registries (found once, on the first clone)."""
    global _REGISTRY_KEYS
    if _REGISTRY_KEYS is None:
        _REGISTRY_KEYS = tuple(k for k, v in state.items() if isinstance(v, dict | set))
    return _REGISTRY_KEYS


def weight_attribute(name: str) -> str:
    """The attribute a kernel keeps buffer ``name`` under (module attributes cannot hold dots)."""
    return name.replace(".", "__")


class CompiledKernel(nn.Module):
    """A loaded compiled artifact as a seed kernel: compiled programs, trainable weights, float32 inside.

    The parameters live in one flat trainable vector, ``flat_parameters`` (the manifest's ``parameters`` in
    order, each flattened), which the forward splits into the programs' inputs; buffers are registered one
    by one (dots in names as ``__``). One vector makes a copy cheap (one tensor to clone, one Parameter to
    create) and gives the optimiser one tensor per kernel. Every copy owns its weights and shares the loaded
    programs, which are immutable. Inputs of another floating dtype are cast in and the output cast back;
    the feature axis (and every axis not listed as dynamic in the manifest) must match the traced shape.
    """

    _forward_program: Callable[..., Any]
    _backward_program: NativeProgram | None

    def __init__(self, artifact: KernelArtifact, blob: bytes, forward_program: Callable[..., Any],
                 backward_program: NativeProgram | None) -> None:
        super().__init__()
        m = artifact.manifest
        self.manifest = m
        self.artifact_id = m.artifact_id
        self.sha256 = artifact.sha256
        self._blob = blob
        self._native = backward_program is not None
        # Programs are kept out of nn.Module's registry: an exported module's tensors must not show up as
        # this kernel's state, and the native ones are plain callables.
        object.__setattr__(self, "_forward_program", forward_program)
        object.__setattr__(self, "_backward_program", backward_program)
        params = [artifact.weights[n].to(torch.float32) for n in m.parameters]
        self._shapes = [tuple(p.shape) for p in params]
        self._numels = [p.numel() for p in params]
        flat = torch.cat([p.reshape(-1) for p in params]) if params else torch.empty(0)
        self.flat_parameters = nn.Parameter(flat, requires_grad=bool(params))
        for name in m.buffers:
            self.register_buffer(weight_attribute(name), artifact.weights[name].clone())
        self._buffer_keys = tuple(weight_attribute(n) for n in m.buffers)
        self._static = [(axis, size) for axis, size in enumerate(m.input_shape) if axis not in m.dynamic_axes]

    def program_inputs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The current parameters (views of ``flat_parameters``) and buffers, as the programs take them."""
        flat: torch.Tensor = self.flat_parameters
        if flat.dtype != torch.float32:
            flat = flat.float()
        params = [v.view(s) for v, s in zip(flat.split(self._numels), self._shapes, strict=True)]
        buffers: list[torch.Tensor] = [getattr(self, k) for k in self._buffer_keys]
        return params, [b.float() if b.is_floating_point() and b.dtype != torch.float32 else b for b in buffers]

    def ir_state_dict(self) -> dict[str, torch.Tensor]:
        """The current weights under the IR's state-dict names (what ``build_module(ir)`` loads)."""
        params, buffers = self.program_inputs()
        names = [*self.manifest.parameters, *self.manifest.buffers]
        return {n: t.detach().clone() for n, t in zip(names, [*params, *buffers], strict=True)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the compiled program on ``x`` with this kernel's current weights."""
        if x.dim() != len(self.manifest.input_shape) or any(x.shape[a] != s for a, s in self._static):
            raise ValueError(f"kernel {self.artifact_id[:16]}… expects shape {self.manifest.input_shape} "
                             f"(dynamic axes {self.manifest.dynamic_axes}), got {list(x.shape)}")
        if x.device.type != self.manifest.device:
            raise KernelHardwareError(f"kernel {self.artifact_id[:16]}… runs on {self.manifest.device}, "
                                      f"input is on {x.device}")
        dtype = x.dtype
        xin = x.to(torch.float32).contiguous()
        params, buffers = self.program_inputs()
        if not self._native:
            y = self._forward_program(xin, tuple(params), tuple(buffers))  # an aten graph: autograd as usual
        elif torch.is_grad_enabled() and (xin.requires_grad or self.flat_parameters.requires_grad):
            y = _NativeKernelFunction.apply(self, len(params), xin, *params, *buffers)
        else:
            y = self._forward_program([xin, *params, *buffers])[0]
        return y if y.dtype == dtype else y.to(dtype)

    def extra_repr(self) -> str:
        m = self.manifest
        return f"artifact={m.artifact_id[:12]}…-{m.hardware}-{m.pipeline.value}, input_shape={m.input_shape}"

    def clone(self) -> CompiledKernel:
        """A new kernel sharing the loaded programs, with its own copy of the current weights (no loading)."""
        new = object.__new__(CompiledKernel)
        state = self.__dict__.copy()
        # nn.Module keeps its registries (parameters, buffers, hooks) in dicts and sets: give the clone its own.
        for key in _registries(state):
            state[key] = state[key].copy()
        flat = self.flat_parameters
        state["_parameters"] = {"flat_parameters": nn.Parameter(flat.detach().clone(), flat.requires_grad)}
        if self._buffers:
            state["_buffers"] = {k: b.clone() for k, b in self._buffers.items() if b is not None}
        object.__setattr__(new, "__dict__", state)  # nn.Module.__setattr__ would inspect it (slow, needless)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledKernel:
        return self.clone()

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (a model copied to another process) re-runs the verified load from the artifact bytes
        # and then restores the current weights.
        return (_restore_compiled, (self._blob, self.sha256, self.state_dict(), self.training))


def _restore_compiled(blob: bytes, sha256: str, state: dict[str, torch.Tensor], training: bool) -> CompiledKernel:
    kernel = load_compiled(blob, sha256)
    kernel.load_state_dict(state)
    return kernel.train(training)


def load_compiled(data: bytes, sha256: str, *, digest_checked: bool = False) -> CompiledKernel:
    """Verify and load a compiled artifact as a :class:`CompiledKernel` (see the module docstring).

    Raises KernelIntegrityError (hash mismatch), KernelFormatError (malformed or unsafe content) or
    KernelHardwareError (built for a device or ISA this process lacks). ``digest_checked``: see
    :func:`open_kernel_artifact`.
    """
    return load_artifact(open_kernel_artifact(data, sha256, digest_checked=digest_checked), data)


def load_artifact(artifact: KernelArtifact, data: bytes, pause: Callable[[], None] | None = None) -> CompiledKernel:
    """Load an artifact already opened (and verified) by :func:`open_kernel_artifact` from ``data``.

    ``pause`` is called between the native programs' loads: a background loader passes a short sleep, so
    a training step running beside it competes with one program's load at most.
    """
    m = artifact.manifest
    if m.pipeline is CompilationPipeline.FAST:
        graph = load_exported(artifact.program, m.artifact_id)
        if m.device == "cuda":
            graph = graph.to("cuda")
        kernel = CompiledKernel(artifact, data, graph, None)
    elif m.pipeline in AOTI_PIPELINES:
        forward = load_aoti(artifact.program, m, PROGRAM_MEMBER)
        if pause is not None:
            pause()
        backward = load_aoti(artifact.backward, m, BACKWARD_MEMBER)
        kernel = CompiledKernel(artifact, data, forward, backward)
    else:
        raise KernelFormatError(f"{m.artifact_id}: pipeline {m.pipeline.value!r} has no compiled program")
    return kernel.to(m.device)


_PREWARMED: float | None = None
_PREWARM_LOCK = threading.Lock()


def prewarm() -> float:
    """Pay the once-per-process cost of the loaders up front; returns the seconds it took (0 when done before).

    ``torch.export.load`` imports Dynamo, FX and sympy on first use (seconds); the AOTInductor C++ loader's
    first run initialises the kernel's thread pool. Call it from a background thread when a kernel source
    is created, so that the first LOADING seed does not pay it.
    """
    global _PREWARMED
    with _PREWARM_LOCK:
        if _PREWARMED is not None:
            return 0.0
        t0 = time.perf_counter()
        # The imports are the warm-up.
        import torch._export.serde.serialize
        import torch.export.pt2_archive._package  # noqa: F401
        _PREWARMED = time.perf_counter() - t0
        return _PREWARMED
