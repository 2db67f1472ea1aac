"""The gatekeeper: does the artifact, loaded exactly as Kasmina loads it, compute what its IR says?

Checks, in order (the first failure is the rejection reason):

1. the blob matches the sha256 Urza recorded, and loads with ``esper_kernels.load_compiled``
   (eager artifacts: the interpreter) — the same code path as a LOADING seed;
2. it runs on the traced shape and on other sizes of every dynamic axis, without raising;
3. the outputs have the interface's shape and are finite;
4. they match the eager reference — the IR built by the interpreter with the weights the artifact
   carries — within the job's tolerance. The drift is measured against an fp64 evaluation of that
   reference, relative to the output's scale, and compared with the fp32 reference's own drift, so the
   report says how far the compiled kernel strays beyond what fp32 arithmetic itself costs;
5. weights are really inputs: with other (perturbed) weights, kernel and reference still agree;
6. gradients: the input and weight gradients the kernel's backward computes (the compiled
   vector-Jacobian product of an AOTInductor artifact) match the reference's, with the perturbed weights.

A numerical-stability probe runs the same comparison on inputs scaled by 1e-3 and 1e3.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from esper_contracts import BlueprintIR, CompilationPipeline, CompiledKernelArtifact
from esper_contracts.ir_shapes import DYNAMIC_AXES, FEATURE_AXIS
from esper_kernels import CompiledKernel, build_module, open_kernel_artifact, reference_module
from esper_kernels import load_compiled as load_compiled_kernel

STABILITY_SCALES = (1e-3, 1e3)


class GateRejection(Exception):
    """The artifact failed a gate; the message is the rejection reason."""


@dataclass
class LoadedKernel:
    """The module under test, its eager reference, and the shape it was traced for."""

    module: nn.Module
    reference: nn.Module
    ir: BlueprintIR
    input_shape: list[int]
    dynamic_axes: list[int]


@dataclass(frozen=True)
class GateResult:
    """What the gatekeeper measured on a passing kernel."""

    drift: float  # max |kernel - fp64 reference| / output scale
    fp32_drift: float  # the same for the eager fp32 reference: the arithmetic's own error
    stable: bool  # finite and within tolerance on scaled inputs too
    shapes_checked: int


def load_for_validation(record: CompiledKernelArtifact, data: bytes, device: str = "cpu") -> LoadedKernel:
    """Load ``data`` as Kasmina would, and build its eager reference; raises GateRejection with the reason."""
    if record.sha256 is None:
        raise GateRejection("the artifact has no recorded sha256")
    try:
        if record.pipeline is CompilationPipeline.EAGER:
            ir = BlueprintIR.model_validate_json(data)
            module = build_module(ir).eval()
            return LoadedKernel(module, copy.deepcopy(module), ir, list(record.input_shape),
                                DYNAMIC_AXES[ir.input.layout])
        kernel = load_compiled_kernel(data, record.sha256)
        artifact = open_kernel_artifact(data, record.sha256)
    except Exception as exc:
        raise GateRejection(f"load failed: {type(exc).__name__}: {exc}") from None
    m = artifact.manifest
    if m.artifact_id != record.artifact_id:
        raise GateRejection(f"the blob's manifest names artifact {m.artifact_id}, not {record.artifact_id}")
    reference = reference_module(artifact).to(device)
    kernel.eval()
    return LoadedKernel(kernel, reference, m.ir, list(m.input_shape), list(m.dynamic_axes))


def gate_shapes(loaded: LoadedKernel) -> list[list[int]]:
    """The traced shape, then batch 1 and other sizes on every dynamic axis."""
    base = loaded.input_shape
    shapes = [list(base)]
    variants = [[1 if a == 0 else s for a, s in enumerate(base)],
                [s + 3 if a in loaded.dynamic_axes else s for a, s in enumerate(base)]]
    for v in variants:
        if v not in shapes:
            shapes.append(v)
    return shapes


def _drift(y: torch.Tensor, reference: torch.Tensor) -> float:
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    return float((y.double() - reference).abs().max()) / scale if reference.numel() else 0.0


def _ir_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A kernel's current weights under the IR's state-dict names."""
    if isinstance(module, CompiledKernel):
        return module.ir_state_dict()
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _flat_grad(module: nn.Module) -> torch.Tensor:
    params = list(module.parameters())
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     ) if params else torch.zeros(0)


def perturbed_pair(loaded: LoadedKernel, gen: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """A copy of the kernel with randomly perturbed weights, and an fp64 reference holding the same weights."""
    module = copy.deepcopy(loaded.module)  # a compiled kernel's copy owns its weights and shares the program
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.device) * (0.1 + float(p.abs().mean())))
    reference = copy.deepcopy(loaded.reference)
    reference.load_state_dict(_ir_state(module))
    return module, reference.double().requires_grad_(True)


def check_gradients(module: nn.Module, ref64: nn.Module, shape: list[int], tolerance: float, device: str,
                    gen: torch.Generator) -> float:
    """Worst relative difference of the input and weight gradients from the fp64 reference's (raises on non-finite)."""
    x = torch.randn(*shape, generator=gen).to(device)
    cotangent = torch.randn(*module(x).shape, generator=gen).to(device)
    xk = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    (module(xk) * cotangent).sum().backward()
    x64 = x.double().requires_grad_(True)
    ref64.zero_grad(set_to_none=True)
    (ref64(x64) * cotangent.double()).sum().backward()
    assert xk.grad is not None and x64.grad is not None
    pairs = [("input", xk.grad, x64.grad), ("weight", _flat_grad(module), _flat_grad(ref64))]
    worst = 0.0
    for what, got, truth in pairs:
        if not torch.isfinite(got).all():
            raise GateRejection(f"non-finite {what} gradients on input {shape}")
        drift = _drift(got, truth)
        if drift > tolerance:
            raise GateRejection(f"{what} gradient differs from the eager reference's by {drift:.3g} (relative), "
                                f"tolerance {tolerance:.3g}")
        worst = max(worst, drift)
    return worst


def check(loaded: LoadedKernel, tolerance: float, device: str = "cpu", seed: int = 0) -> GateResult:
    """Run gates 2-6 and the stability probe; raises GateRejection naming the first failure."""
    ir = loaded.ir
    feat_axis = FEATURE_AXIS[ir.input.layout]
    gen = torch.Generator().manual_seed(seed)
    ref64 = copy.deepcopy(loaded.reference).double()
    worst, worst32 = 0.0, 0.0
    shapes = gate_shapes(loaded)
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(*shape, generator=gen).to(device)
            try:
                y = loaded.module(x)
            except Exception as exc:
                raise GateRejection(f"raised on input {shape}: {type(exc).__name__}: {exc}") from None
            expected = list(shape)
            expected[feat_axis] = ir.output.features
            if not isinstance(y, torch.Tensor) or list(y.shape) != expected:
                got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise GateRejection(f"output shape {got} on input {shape}; the interface says {expected}")
            if not torch.isfinite(y).all():
                raise GateRejection(f"non-finite outputs on input {shape}")
            truth = ref64(x.double())
            worst = max(worst, _drift(y, truth))
            worst32 = max(worst32, _drift(loaded.reference(x), truth))
        if worst > tolerance:
            raise GateRejection(f"differs from the eager reference by {worst:.3g} (relative to the output scale), "
                                f"tolerance {tolerance:.3g}; fp32 eager itself differs by {worst32:.3g}")
        module, perturbed64 = perturbed_pair(loaded, gen)
        x = torch.randn(*loaded.input_shape, generator=gen).to(device)
        moved = _drift(module(x), perturbed64(x.double()))
        if moved > tolerance:
            raise GateRejection(f"with other weights it differs from the eager reference by {moved:.3g}: the program "
                                f"does not take its weights as inputs")
    if any(True for _ in module.parameters()):
        with torch.enable_grad():
            check_gradients(module, perturbed64, loaded.input_shape, tolerance, device, gen)
    with torch.no_grad():
        stable = True
        for scale in STABILITY_SCALES:
            x = torch.randn(*loaded.input_shape, generator=gen).to(device) * scale
            y = loaded.module(x)
            if not torch.isfinite(y).all() or _drift(y, ref64(x.double())) > tolerance:
                stable = False
    return GateResult(drift=worst, fp32_drift=worst32, stable=stable, shapes_checked=len(shapes))
