"""The compiled-kernel loader: verified before opened, never unpickles, runs and trains like its eager reference.

Artifacts are built here with torch.export directly (the ``fast`` pipeline's program: the IR as a function
of its weights), so these tests need no service. AOTInductor packages take tens of seconds to compile;
their tests are marked ``slow``.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from esper_contracts import (
    BlueprintIR,
    CompilationPipeline,
    TensorInterface,
    artifact_id,
    builtin_blueprints,
    fixed_function_blueprint,
)
from esper_kernels import (
    CompiledKernel,
    KernelFormatError,
    KernelHardwareError,
    KernelIntegrityError,
    KernelManifest,
    WeightsAsInputs,
    build_module,
    check_cpu_isa,
    export_backward,
    export_forward,
    load_compiled,
    open_kernel_artifact,
    pack_kernel_artifact,
    read_manifest,
    reference_module,
    sha256_hex,
    unpack_weights,
)

BD = TensorInterface(layout="BD", features=16)
DYNAMIC = {"BD": [0], "BTD": [0, 1], "BCHW": [0, 2, 3]}


def bottleneck(iface: TensorInterface = BD) -> BlueprintIR:
    """A blueprint with no zero-initialised projection, so outputs depend on every weight."""
    return next(ir for ir in builtin_blueprints(iface) if ir.tags[0] == "bottleneck")


@functools.cache
def _export_cached(ir_json: str, shape: tuple[int, ...], seed: int, strip: bool) -> tuple[bytes, dict]:
    return _export(BlueprintIR.model_validate_json(ir_json), list(shape), seed, strip)


def export_program(ir: BlueprintIR, shape: list[int], *, seed: int = 0, strip: bool = True) -> tuple[bytes, dict]:
    """(torch.export archive bytes, state dict) of ``ir`` with seeded weights and dynamic non-feature axes.

    Cached: exporting takes seconds, and several tests start from the same program.
    """
    program, weights = _export_cached(ir.model_dump_json(), tuple(shape), seed, strip)
    return program, {k: v.clone() for k, v in weights.items()}


def exported(ir: BlueprintIR, shape: list[int], seed: int = 0, *, backward: bool = False,
             ) -> tuple[torch.export.ExportedProgram, dict]:
    """The IR (weights seeded with ``seed``) exported as a function of its weights, or its backward."""
    torch.manual_seed(seed)
    module = build_module(ir).eval()
    dyn = DYNAMIC[ir.input.layout]
    x = torch.randn(*[max(2, s) if a in dyn else s for a, s in enumerate(shape)])
    export = export_backward if backward else export_forward
    return export(WeightsAsInputs(module), x, dyn), module.state_dict()


def _export(ir: BlueprintIR, shape: list[int], seed: int, strip: bool) -> tuple[bytes, dict]:
    ep, state = exported(ir, shape, seed)
    if strip:
        ep._example_inputs = None
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue(), state


def manifest_for(blueprint: BlueprintIR, shape: list[int], **changes: object) -> KernelManifest:
    ir = blueprint
    module = build_module(ir)
    aid = artifact_id(ir.ir_hash(), "cpu", CompilationPipeline.FAST, "0123456789abcdef")
    values: dict[str, object] = dict(artifact_id=aid, blueprint_id=ir.ir_hash(), pipeline=CompilationPipeline.FAST,
                                     hardware="cpu", toolchain_hash="0123456789abcdef", device="cpu", input_shape=shape,
                                     dynamic_axes=DYNAMIC[ir.input.layout], torch_version=torch.__version__, ir=ir,
                                     parameters=[n for n, _ in module.named_parameters()],
                                     buffers=[n for n, _ in module.named_buffers()])
    values.update(changes)
    return KernelManifest(**values)  # type: ignore[arg-type]


def pack(blueprint: BlueprintIR, shape: list[int], program: bytes, weights: dict, backward: bytes = b"",
         **changes: object) -> tuple[bytes, str]:
    blob = pack_kernel_artifact(manifest_for(blueprint, shape, **changes), weights, program, backward)
    return blob, sha256_hex(blob)


@pytest.fixture(scope="module")
def artifact() -> tuple[bytes, str, BlueprintIR]:
    ir = bottleneck()
    program, weights = export_program(ir, [8, 16])
    blob, sha = pack(ir, [8, 16], program, weights)
    return blob, sha, ir


def test_loaded_kernel_matches_its_eager_reference_on_any_batch(artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, _ir = artifact
    kernel = load_compiled(blob, sha)
    reference = reference_module(open_kernel_artifact(blob, sha))
    for batch in (8, 1, 5, 64):
        x = torch.randn(batch, 16)
        assert torch.allclose(kernel(x), reference(x), atol=1e-6)
    assert isinstance(kernel, CompiledKernel)
    # The weights are the kernel's own: one flat trainable vector holding every IR parameter.
    (flat,) = kernel.parameters()
    assert flat.requires_grad and flat.numel() == sum(p.numel() for p in reference.parameters())
    state = kernel.ir_state_dict()
    assert state.keys() == reference.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_the_container_is_deterministic_and_carries_the_weights(artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, ir = artifact
    program, weights = export_program(ir, [8, 16])
    again, _ = pack(ir, [8, 16], program, weights)
    assert again == blob  # same program + weights -> same bytes, so ids and digests agree across workers
    opened = open_kernel_artifact(blob, sha)
    assert set(opened.weights) == set(weights)
    assert all(torch.equal(opened.weights[k], weights[k]) for k in weights)
    assert read_manifest(blob).ir == ir


def assert_trains_like_its_reference(kernel: CompiledKernel, reference: torch.nn.Module, features: int) -> None:
    """Input and weight gradients match the eager reference's, and so do a few optimiser steps on both."""
    reference.requires_grad_(True)
    x = torch.randn(4, features, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    kernel(x).pow(2).sum().backward()
    reference(x_ref).pow(2).sum().backward()
    assert x.grad is not None and x_ref.grad is not None
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    ref_flat_grad = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])  # type: ignore[union-attr]
    assert kernel.flat_parameters.grad is not None
    assert torch.allclose(kernel.flat_parameters.grad, ref_flat_grad, atol=1e-5)

    opt = torch.optim.SGD(kernel.parameters(), lr=0.05)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.05)
    target = torch.randn(16, features)
    inputs = torch.randn(16, features)
    for _ in range(5):
        for o, m in ((opt, kernel), (opt_ref, reference)):
            o.zero_grad()
            (m(inputs) - target).pow(2).mean().backward()
            o.step()
    trained = kernel.ir_state_dict()
    assert not torch.equal(trained[next(iter(trained))], open_weights(kernel)[next(iter(trained))])  # it moved
    for name, value in reference.state_dict().items():
        assert torch.allclose(trained[name], value, atol=1e-5), name


def open_weights(kernel: CompiledKernel) -> dict:
    return open_kernel_artifact(kernel._blob, kernel.sha256).weights


def test_gradients_reach_the_input_and_the_weights_which_train_like_the_reference(
        artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, _ir = artifact
    assert_trains_like_its_reference(load_compiled(blob, sha), reference_module(open_kernel_artifact(blob, sha)), 16)


def test_other_dtypes_are_cast_in_and_out_and_wrong_shapes_refused(artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, _ir = artifact
    kernel = load_compiled(blob, sha)
    assert kernel(torch.randn(3, 16, dtype=torch.bfloat16)).dtype is torch.bfloat16
    assert kernel(torch.randn(3, 16, dtype=torch.float64)).dtype is torch.float64
    with pytest.raises(ValueError, match="expects shape"):
        kernel(torch.randn(3, 17))
    with pytest.raises(ValueError, match="expects shape"):
        kernel(torch.randn(3, 2, 16))


def test_copies_share_the_program_and_pickling_reloads_from_verified_bytes(
        artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, _ir = artifact
    kernel = load_compiled(blob, sha)
    with torch.no_grad():
        kernel.flat_parameters.mul_(1.5)  # "trained": copies carry the current weights, not the artifact's
    x = torch.randn(2, 16)
    for other in (kernel.clone(), copy.deepcopy(kernel), pickle.loads(pickle.dumps(kernel))):
        assert other is not kernel and torch.equal(other(x), kernel(x))
        assert other._forward_program is kernel._forward_program or isinstance(other, CompiledKernel)
        with torch.no_grad():
            other.flat_parameters.zero_()  # each copy owns its weights
        assert not torch.equal(other(x), kernel(x))
    clone = kernel.clone()
    clone.eval()
    clone.register_forward_hook(lambda *_: None)
    assert kernel.training and not kernel._forward_hooks  # the clone's registries are its own


def test_a_wrong_digest_is_refused_before_anything_is_opened(artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, _ir = artifact
    with pytest.raises(KernelIntegrityError, match="refusing"):
        load_compiled(blob, "0" * 64)
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(KernelIntegrityError):
        load_compiled(bytes(flipped), sha)


def _rezip(blob: bytes, replace: dict[str, bytes], drop: frozenset[str] | set[str] = frozenset()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            dst.writestr(info, replace.get(info.filename, src.read(info)))
        for name, data in replace.items():
            if name not in src.namelist():
                dst.writestr(name, data)
    return out.getvalue()


def test_members_that_disagree_with_the_manifest_are_refused(artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, _sha, _ir = artifact
    tampered = _rezip(blob, {"weights.bin": b"\0" * 64})
    with pytest.raises(KernelIntegrityError, match=r"weights\.bin"):
        load_compiled(tampered, sha256_hex(tampered))
    extra = _rezip(blob, {"payload.so": b"\x7fELF"})
    with pytest.raises(KernelFormatError, match="not a kernel container"):
        load_compiled(extra, sha256_hex(extra))
    with pytest.raises(KernelFormatError, match="not a zip"):
        load_compiled(b"not a kernel", sha256_hex(b"not a kernel"))


def test_a_manifest_whose_ir_is_not_its_blueprint_is_refused() -> None:
    ir = bottleneck()
    program, weights = export_program(ir, [8, 16])
    other = fixed_function_blueprint(BD)
    blob, sha = pack(ir, [8, 16], program, weights, ir=other)
    with pytest.raises(KernelFormatError, match="does not hash"):
        load_compiled(blob, sha)


class _Tripwire:
    """Unpickling this object creates a file: proof that nothing unpickled the sample inputs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.path),))  # type: ignore[return-value]


def test_pickled_sample_inputs_are_refused_unread(tmp_path: Path) -> None:
    ir = bottleneck()
    program, weights = export_program(ir, [8, 16], strip=False)  # torch.export.save writes sample inputs
    blob, sha = pack(ir, [8, 16], program, weights)
    with pytest.raises(KernelFormatError, match="sample inputs"):
        load_compiled(blob, sha)

    marker = tmp_path / "unpickled"
    with zipfile.ZipFile(io.BytesIO(program)) as z:
        name = next(n for n in z.namelist() if n.endswith("data/sample_inputs/model.pt"))
    evil = _rezip(program, {name: pickle.dumps(_Tripwire(marker))})
    blob, sha = pack(ir, [8, 16], evil, weights)
    with pytest.raises(KernelFormatError):
        load_compiled(blob, sha)
    assert not marker.exists()


def test_an_export_archive_smuggling_native_code_is_refused(artifact: tuple[bytes, str, BlueprintIR]) -> None:
    _blob, _sha, ir = artifact
    program, weights = export_program(ir, [8, 16])
    root = zipfile.ZipFile(io.BytesIO(program)).namelist()[0].split("/")[0]
    evil = _rezip(program, {f"{root}/data/aotinductor/model/x.wrapper.so": b"\x7fELF"})
    blob, sha = pack(ir, [8, 16], evil, weights)
    with pytest.raises(KernelFormatError, match="unexpected member"):
        load_compiled(blob, sha)


def test_weight_index_entries_are_bounds_checked() -> None:
    manifest = manifest_for(bottleneck(), [8, 16], parameters=["w"], buffers=[])
    blob = pack_kernel_artifact(manifest, {"w": torch.ones(4)}, b"")
    entries = read_manifest(blob).weights
    assert torch.equal(unpack_weights(b"\0" * 16, entries)["w"], torch.zeros(4))
    with pytest.raises(KernelFormatError, match="do not fit"):
        unpack_weights(b"\0" * 8, entries)


@pytest.mark.parametrize(("required", "available", "ok"), [
    ("AVX512 AVX512_VNNI", "AVX512", True), ("AVX2", "AVX512", True), ("AVX512", "AVX2", False),
    ("", "DEFAULT", True), ("INVALID_VEC_ISA", "AVX2", True), ("ASIMD", "ASIMD", True), ("SVE256", "AVX2", False),
])
def test_cpu_isa_compatibility(required: str, available: str, ok: bool) -> None:
    if ok:
        check_cpu_isa(required, available)
    else:
        with pytest.raises(KernelHardwareError):
            check_cpu_isa(required, available)


# ------------------------------------------------------------------------------------- AOTInductor (slow)


@pytest.fixture(scope="module")
def aoti_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str, BlueprintIR]:
    from torch._inductor import aoti_compile_and_package

    ir = bottleneck(TensorInterface(layout="BD", features=8))
    folder = tmp_path_factory.mktemp("aoti")
    with torch.no_grad():
        forward, state = exported(ir, [4, 8])
        program = Path(aoti_compile_and_package(forward, package_path=str(folder / "f.pt2"))).read_bytes()
    backward_ep, _ = exported(ir, [4, 8], backward=True)
    with torch.no_grad():
        backward = Path(aoti_compile_and_package(backward_ep, package_path=str(folder / "b.pt2"))).read_bytes()
    blob, sha = pack(ir, [4, 8], program, state, backward, pipeline=CompilationPipeline.STANDARD,
                     artifact_id=artifact_id(ir.ir_hash(), "cpu", CompilationPipeline.STANDARD, "0123456789abcdef"),
                     cpu_isa="AVX2")
    return blob, sha, ir


@pytest.mark.slow
def test_aoti_kernel_loads_without_the_isa_probe_and_matches(aoti_artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, _ir = aoti_artifact
    kernel = load_compiled(blob, sha)
    reference = reference_module(open_kernel_artifact(blob, sha))
    for batch in (4, 1, 33):
        x = torch.randn(batch, 8)
        assert torch.allclose(kernel(x), reference(x), atol=1e-5)
    # The backward is the compiled vector-Jacobian product; it trains exactly like the eager reference.
    assert_trains_like_its_reference(kernel, reference, 8)


@pytest.mark.slow
def test_aoti_artifacts_need_their_backward_program(aoti_artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, sha, _ir = aoti_artifact
    opened = open_kernel_artifact(blob, sha)
    with pytest.raises(KernelFormatError, match="needs"):
        pack_kernel_artifact(opened.manifest, opened.weights, opened.program)
    dropped = _rezip(blob, {}, drop={"backward.pt2"})
    with pytest.raises(KernelFormatError, match="exactly"):
        load_compiled(dropped, sha256_hex(dropped))


@pytest.mark.slow
def test_aoti_kernel_for_a_wider_isa_is_refused_before_it_is_opened(
        aoti_artifact: tuple[bytes, str, BlueprintIR]) -> None:
    blob, _sha, _ir = aoti_artifact
    opened = open_kernel_artifact(blob, sha256_hex(blob))
    manifest = opened.manifest.model_copy(update={"cpu_isa": "AMX_TILE"})
    wider = pack_kernel_artifact(manifest, opened.weights, opened.program, opened.backward)
    with pytest.raises(KernelHardwareError, match="AMX_TILE"):
        load_compiled(wider, sha256_hex(wider))


@pytest.mark.slow
def test_aoti_cpu_kernels_run_on_the_model_runner_and_a_package_for_another_device_is_refused(
        aoti_artifact: tuple[bytes, str, BlueprintIR]) -> None:
    from esper_kernels.native import load_aoti

    blob, sha, _ir = aoti_artifact
    opened = open_kernel_artifact(blob, sha)
    run = load_aoti(opened.program, opened.manifest, "program.pt2")
    assert "AOTIModelContainerRunnerCpu" in repr(getattr(run, "__self__", run))  # not the package loader
    metadata = next(n for n in zipfile.ZipFile(io.BytesIO(opened.program)).namelist()
                    if n.endswith("wrapper_metadata.json"))
    cuda = _rezip(opened.program, {metadata: b'{"AOTI_DEVICE_KEY": "cuda"}'})
    with pytest.raises(KernelFormatError, match="targets 'cuda'"):
        load_aoti(cuda, opened.manifest, "program.pt2")


@pytest.mark.slow
def test_many_fast_and_standard_kernels_load_at_once_from_several_threads(
        artifact: tuple[bytes, str, BlueprintIR], aoti_artifact: tuple[bytes, str, BlueprintIR]) -> None:
    # torch.export.load keeps process-wide deserializer state: unserialized, two loads at once failed with
    # "_CURRENT_DESERIALIZER is already set" (seen in a fresh-clone `make test`, issue 9).
    import threading

    fast_blobs = [artifact[:2]]
    for ir in builtin_blueprints(BD)[:4]:
        program, weights = export_program(ir, [8, 16], seed=1)
        fast_blobs.append(pack(ir, [8, 16], program, weights))
    jobs = [*fast_blobs * 4, *[aoti_artifact[:2]] * 4]
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    loaded: list[CompiledKernel] = []

    def worker(mine: list[tuple[bytes, str]]) -> None:
        start.wait()
        for blob, sha in mine:
            try:
                loaded.append(load_compiled(blob, sha))
            except BaseException as exc:  # collected: a thread's exception would otherwise vanish
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(jobs[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, [repr(e) for e in errors[:3]]
    assert len(loaded) == len(jobs)
    x16, x8 = torch.randn(3, 16), torch.randn(3, 8)
    for kernel in loaded:
        x = x16 if kernel.manifest.input_shape[-1] == 16 else x8
        reference = reference_module(open_kernel_artifact(kernel._blob, kernel.sha256))
        assert torch.allclose(kernel(x), reference(x), atol=1e-5)
