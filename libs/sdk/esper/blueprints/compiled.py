"""Compiled kernel artifacts: the one container format, its writer, and the loader Kasmina and Urabrask share.

A compiled artifact is a zip (members stored, fixed timestamps) with these members:

* ``manifest.json`` — a :class:`KernelManifest`: identity (artifact id, pipeline, hardware, toolchain hash),
  the full BlueprintIR, the traced input shape and which axes are dynamic, the device and instruction set
  the program needs, the order in which the program takes the weights, an index of the weights and the
  sha256 of every other member.
* ``weights.bin`` — the initial weights (the IR's state dict), as raw little-endian tensor bytes. They are
  the seed's starting point, and anyone can rebuild the eager reference from them (``build_module`` of the
  manifest's IR with exactly these weights): Urabrask compares against it.
* ``program.pt2`` — the forward program ``(x, *parameters, *buffers) -> y``: a ``torch.export.save`` archive
  (``fast``) or an AOTInductor package (``standard``, ``aggressive``).
* ``backward.pt2`` (AOTInductor pipelines only) — the compiled vector-Jacobian product
  ``(x, dy, *parameters, *buffers) -> (dx, *dparameters)``. An exported program needs none: its aten graph
  is differentiable as it is.

Loading never unpickles stored bytes. The whole blob is sha256-checked before it is opened; weights are
read with ``torch.frombuffer``; an exported program is screened first (no pickled weights or constants,
no custom objects, empty sample inputs — torch would otherwise fall back to a full unpickle) and its graph
may call only ``aten`` operators; an AOTInductor program is run by torch's C++ model runner (CPU) or
package loader (CUDA), never through ``torch._inductor``.

That last choice is measured (docs/decisions/0006, 0007): ``torch._inductor.aoti_load_package`` imports
Dynamo and Inductor and then probes the CPU's vector ISA by compiling and dlopen-ing test programs, only
to print a warning on a mismatch. In a fresh process on torch 2.15 that is seconds per cold load; the C++
runner takes about a millisecond. We make the ISA check ourselves, without a compiler, and refuse
instead of warning.

Weights are program *inputs*, not constants baked into the binary: a loaded kernel owns them (one flat
``nn.Parameter``), so a compiled seed trains through TRAINING and FINE_TUNING like an eager one, is
checkpointed and rolled back with the model, and the forward and backward it runs are both the compiled
ones (docs/decisions/0007). Compiled programs have eval-mode semantics (dropout off, batch norm on its
running statistics, which are inputs but never updated).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from esper_contracts import ARTIFACT_ID_PATTERN, BlueprintIR, CompilationPipeline

from .cache import sha256_hex
from .errors import KernelIntegrityError
from .interpreter import IRModule, build_module

KERNEL_FORMAT = "esper-kernel"
KERNEL_FORMAT_VERSION = 2
MANIFEST_MEMBER = "manifest.json"
WEIGHTS_MEMBER = "weights.bin"
PROGRAM_MEMBER = "program.pt2"
BACKWARD_MEMBER = "backward.pt2"
#: Upper bound on a kernel blob and on any member's declared size (a blueprint is a small kernel).
MAX_KERNEL_BYTES = 1 << 30
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
#: Pipelines whose program is an AOTInductor package (native code) rather than an exported graph.
AOTI_PIPELINES = frozenset({CompilationPipeline.STANDARD, CompilationPipeline.AGGRESSIVE})

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
# Operator namespaces an exported kernel graph may call; the IR interpreter's layers lower to these only.
_ALLOWED_OP_NAMESPACES = frozenset({"aten"})
# Vector ISA families, weakest first; a binary built for one runs on that family and the ones after it.
_ISA_RANK = {"": 0, "DEFAULT": 0, "INVALID_VEC_ISA": 0, "AVX2": 1, "AVX512": 2}


class KernelFormatError(ValueError):
    """Bytes that are not a well-formed compiled kernel artifact (or carry something we refuse to load)."""


class KernelHardwareError(RuntimeError):
    """A compiled kernel built for a device or instruction set this process does not have."""


class WeightEntry(BaseModel):
    """Where one tensor of the state dict lies in ``weights.bin``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=512)
    dtype: Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "bool"]
    shape: list[int] = Field(max_length=8)
    offset: int = Field(ge=0)
    nbytes: int = Field(ge=0)


class KernelManifest(BaseModel):
    """``manifest.json`` of a compiled kernel artifact."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["esper-kernel"] = "esper-kernel"
    format_version: Literal[2] = 2
    artifact_id: str = Field(pattern=ARTIFACT_ID_PATTERN)
    blueprint_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    pipeline: CompilationPipeline
    hardware: str = Field(pattern=r"^[a-z0-9_]+$")
    toolchain_hash: str = Field(pattern=r"^[0-9a-f]{12,64}$")
    device: Literal["cpu", "cuda"]
    cpu_isa: str = ""  # AOTInductor on CPU: the vector ISA the binary was built for
    compute_capability: str = ""  # AOTInductor on CUDA: "major.minor" the binary was built for
    input_shape: list[int] = Field(min_length=1, max_length=8)
    dynamic_axes: list[int] = Field(default_factory=list)  # axes of input_shape whose size may vary
    dtype: Literal["float32"] = "float32"
    torch_version: str
    ir: BlueprintIR
    #: The state-dict names the programs take after the input, in order: parameters, then buffers.
    parameters: list[str] = Field(default_factory=list, max_length=4096)
    buffers: list[str] = Field(default_factory=list, max_length=4096)
    weights: list[WeightEntry] = Field(default_factory=list)
    weights_sha256: str = ""
    program_sha256: str = ""
    program_size: int = 0
    backward_sha256: str = ""  # AOTInductor pipelines: the compiled backward program
    backward_size: int = 0

    def members(self) -> tuple[str, ...]:
        """The container members an artifact of this pipeline holds."""
        if self.pipeline in AOTI_PIPELINES:
            return (MANIFEST_MEMBER, WEIGHTS_MEMBER, PROGRAM_MEMBER, BACKWARD_MEMBER)
        return (MANIFEST_MEMBER, WEIGHTS_MEMBER, PROGRAM_MEMBER)


@dataclass(frozen=True)
class KernelArtifact:
    """An opened, verified artifact: its manifest, weights and program bytes (no code loaded yet)."""

    manifest: KernelManifest
    weights: dict[str, torch.Tensor]
    program: bytes
    sha256: str
    backward: bytes = b""


# ---------------------------------------------------------------------------------------------- writing


def pack_weights(state: dict[str, torch.Tensor]) -> tuple[bytes, list[WeightEntry]]:
    """Serialise a state dict to raw little-endian bytes plus an index (no pickle, no torch.save)."""
    if sys.byteorder != "little":
        raise KernelFormatError("kernel weights are stored little-endian; big-endian hosts are not supported")
    out = io.BytesIO()
    entries: list[WeightEntry] = []
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        if t.dtype not in _DTYPE_NAMES:
            raise KernelFormatError(f"weight {name!r} has unsupported dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        entries.append(WeightEntry(name=name, dtype=_DTYPE_NAMES[t.dtype],  # type: ignore[arg-type]
                                   shape=list(t.shape), offset=out.tell(), nbytes=len(raw)))
        out.write(raw)
    return out.getvalue(), entries


def unpack_weights(data: bytes, entries: list[WeightEntry]) -> dict[str, torch.Tensor]:
    """Rebuild the state dict from ``weights.bin``; every entry is bounds- and size-checked."""
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        dtype = _DTYPES[e.dtype]
        numel = 1
        for d in e.shape:
            if d < 0:
                raise KernelFormatError(f"weight {e.name!r} has a negative dimension in {e.shape}")
            numel *= d
        expected = numel * torch.empty((), dtype=dtype).element_size()
        if e.nbytes != expected or e.offset + e.nbytes > len(data):
            raise KernelFormatError(f"weight {e.name!r}: {e.nbytes} bytes at offset {e.offset} do not fit shape "
                                    f"{e.shape} of {e.dtype} in a {len(data)}-byte weights file")
        chunk = bytearray(data[e.offset:e.offset + e.nbytes])  # a private, writable copy
        flat = torch.frombuffer(chunk, dtype=dtype) if numel else torch.empty(0, dtype=dtype)
        out[e.name] = flat.reshape(e.shape)
    return out


def pack_kernel_artifact(manifest: KernelManifest, weights: dict[str, torch.Tensor], program: bytes,
                         backward: bytes = b"") -> bytes:
    """Write the container: ``manifest`` completed with the weights index and every member's sha256.

    ``backward`` is required for (and only for) the AOTInductor pipelines. The container adds no
    nondeterminism of its own (sorted weights, fixed timestamps, stored members): identical programs
    and weights give identical bytes.
    """
    if bool(backward) != (manifest.pipeline in AOTI_PIPELINES):
        raise KernelFormatError(f"a {manifest.pipeline.value} artifact {'needs' if not backward else 'has no'} "
                                f"backward program")
    if sorted([*manifest.parameters, *manifest.buffers]) != sorted(weights):
        raise KernelFormatError("the manifest's parameters and buffers must name exactly the weights")
    weight_bytes, entries = pack_weights(weights)
    full = manifest.model_copy(update={
        "weights": entries, "weights_sha256": sha256_hex(weight_bytes),
        "program_sha256": sha256_hex(program), "program_size": len(program),
        "backward_sha256": sha256_hex(backward) if backward else "", "backward_size": len(backward),
    })
    body = json.dumps(full.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    members = [(MANIFEST_MEMBER, body), (WEIGHTS_MEMBER, weight_bytes), (PROGRAM_MEMBER, program)]
    if backward:
        members.append((BACKWARD_MEMBER, backward))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, payload in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, payload)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- reading


def read_manifest(data: bytes) -> KernelManifest:
    """The manifest of a container, without checking the other members (for listing and routing)."""
    with _open_zip(data) as zf:
        return _parse_manifest(zf.read(MANIFEST_MEMBER))


def open_kernel_artifact(data: bytes, sha256: str, *, digest_checked: bool = False) -> KernelArtifact:
    """Verify ``data`` against ``sha256`` and then its own members; return manifest, weights and program.

    ``digest_checked=True`` skips hashing the whole blob again when the caller has just verified these very
    bytes against ``sha256`` (a sha256-checked cache did); the members are checked either way. Raises
    KernelIntegrityError when a hash does not match and KernelFormatError for anything malformed.
    """
    actual = sha256 if digest_checked else sha256_hex(data)
    if actual != sha256:
        raise KernelIntegrityError(f"kernel blob hashes to {actual}, expected {sha256}; refusing to open it")
    with _open_zip(data) as zf:
        manifest = _parse_manifest(zf.read(MANIFEST_MEMBER))
        names = sorted(i.filename for i in zf.infolist())
        if names != sorted(manifest.members()):
            raise KernelFormatError(f"a {manifest.pipeline.value} kernel container must hold exactly "
                                    f"{list(manifest.members())}, found {names[:10]}")
        weight_bytes = zf.read(WEIGHTS_MEMBER)
        program = zf.read(PROGRAM_MEMBER)
        backward = zf.read(BACKWARD_MEMBER) if BACKWARD_MEMBER in names else b""
    if sha256_hex(weight_bytes) != manifest.weights_sha256:
        raise KernelIntegrityError(f"{manifest.artifact_id}: weights.bin does not match the manifest's sha256")
    if sha256_hex(program) != manifest.program_sha256 or len(program) != manifest.program_size:
        raise KernelIntegrityError(f"{manifest.artifact_id}: program.pt2 does not match the manifest's sha256")
    if backward and (sha256_hex(backward) != manifest.backward_sha256 or len(backward) != manifest.backward_size):
        raise KernelIntegrityError(f"{manifest.artifact_id}: backward.pt2 does not match the manifest's sha256")
    if manifest.ir.ir_hash() != manifest.blueprint_id or not manifest.artifact_id.startswith(manifest.blueprint_id):
        raise KernelFormatError(f"{manifest.artifact_id}: the manifest's IR does not hash to its blueprint id")
    weights = unpack_weights(weight_bytes, manifest.weights)
    if sorted([*manifest.parameters, *manifest.buffers]) != sorted(weights):
        raise KernelFormatError(f"{manifest.artifact_id}: the manifest's parameters and buffers do not name "
                                f"exactly the weights it carries")
    return KernelArtifact(manifest, weights, program, sha256, backward)


def _open_zip(data: bytes) -> zipfile.ZipFile:
    if len(data) > MAX_KERNEL_BYTES:
        raise KernelFormatError(f"kernel blob of {len(data)} bytes exceeds the {MAX_KERNEL_BYTES}-byte limit")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise KernelFormatError(f"not a compiled kernel artifact (not a zip container): {exc}") from None
    infos = zf.infolist()
    names = {i.filename for i in infos}
    if MANIFEST_MEMBER not in names or not names <= {MANIFEST_MEMBER, WEIGHTS_MEMBER, PROGRAM_MEMBER,
                                                     BACKWARD_MEMBER} or len(infos) != len(names):
        zf.close()
        raise KernelFormatError(f"not a kernel container: members {sorted(names)[:10]}")
    if any(i.file_size > MAX_KERNEL_BYTES or i.compress_type != zipfile.ZIP_STORED for i in infos):
        zf.close()
        raise KernelFormatError("kernel container members must be stored uncompressed and within the size limit")
    return zf


def _parse_manifest(raw: bytes) -> KernelManifest:
    try:
        return KernelManifest.model_validate_json(raw)
    except ValueError as exc:
        raise KernelFormatError(f"invalid kernel manifest: {exc}") from None


def reference_module(artifact: KernelArtifact) -> IRModule:
    """The eager reference: the manifest's IR built by the interpreter, with the artifact's own weights (eval)."""
    module = build_module(artifact.manifest.ir)
    try:
        module.load_state_dict(artifact.weights, strict=True)
    except RuntimeError as exc:
        raise KernelFormatError(f"{artifact.manifest.artifact_id}: weights do not fit the IR: {exc}") from None
    module.eval()
    module.requires_grad_(False)
    return module


# ------------------------------------------------------------------------------------ hardware checks


def host_cpu_isa() -> str:
    """The vector ISA ATen dispatches to here (AVX512, AVX2, DEFAULT, ...), read without any compiler."""
    return str(torch.backends.cpu.get_cpu_capability()).upper()


def local_hardware(device: str = "cpu") -> str:
    """Hardware segment of artifact ids compiled or measured here: ``cpu_<isa>`` or ``cuda_sm<NN>``."""
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"cuda_sm{major}{minor}"
    return f"cpu_{host_cpu_isa().lower() or 'default'}"


def _isa_family(isa: str) -> str:
    first = isa.split()[0].upper() if isa.split() else ""
    return next((fam for fam in ("AVX512", "AVX2") if first.startswith(fam)), first)


def check_cpu_isa(required: str, available: str | None = None) -> None:
    """Raise KernelHardwareError when a binary built for ISA ``required`` cannot run on ``available``."""
    have = _isa_family(available if available is not None else host_cpu_isa())
    need = _isa_family(required)
    if need in _ISA_RANK and have in _ISA_RANK:
        if _ISA_RANK[need] <= _ISA_RANK[have]:
            return
    elif need == have:
        return
    raise KernelHardwareError(f"kernel was compiled for CPU ISA {required!r}; this host runs {have or 'DEFAULT'}")


# ---------------------------------------------------------------------------------------------- programs


# Members a screened export archive may hold (after its root folder); anything else is refused. In
# particular ``data/aotinductor/`` would make ``torch.export.load`` dlopen native code.
_EXPORT_MEMBERS = re.compile(
    r"^[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/(weight_\d+|model_weights_config\.json)|data/constants/(tensor_\d+|model_constants_config\.json)"
    r"|data/sample_inputs/model\.pt)$"
)


def _screen_exported_archive(program: bytes) -> None:
    """Refuse an export archive that would make ``torch.export.load`` unpickle or dlopen anything."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(program))
    except zipfile.BadZipFile as exc:
        raise KernelFormatError(f"fast program is not a torch.export archive: {exc}") from None
    with zf:
        for info in zf.infolist():
            name = info.filename
            if not _EXPORT_MEMBERS.match(name):
                raise KernelFormatError(f"unexpected member {name!r} in exported program; refusing it")
            if name.endswith("/data/sample_inputs/model.pt") and info.file_size:
                # torch retries a failed weights_only load of sample inputs with a full unpickle.
                raise KernelFormatError("exported program carries pickled sample inputs; refusing it")
            if name.endswith("_config.json"):
                try:
                    config = json.loads(zf.read(info)).get("config", {})
                except (ValueError, AttributeError) as exc:
                    raise KernelFormatError(f"unreadable {name!r} in exported program: {exc}") from None
                for fqn, entry in config.items():
                    path = str(entry.get("path_name", ""))
                    if entry.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", path):
                        raise KernelFormatError(f"exported program stores {fqn!r} as a pickled or custom object")


def _load_exported(program: bytes, artifact_id: str) -> nn.Module:
    _screen_exported_archive(program)
    ep = torch.export.load(io.BytesIO(program))
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        namespace = getattr(node.target, "namespace", None)
        if namespace not in _ALLOWED_OP_NAMESPACES and node.target.__module__ != "_operator":
            raise KernelFormatError(f"{artifact_id}: exported graph calls {node.target!r}, which is not an aten op")
    module = ep.module()
    if any(True for _ in module.parameters()):  # weights are inputs; a program with its own would ignore them
        raise KernelFormatError(f"{artifact_id}: exported program embeds parameters; kernels take them as inputs")
    return module


_AOTI_TMP_LOCK = threading.Lock()
_AOTI_TMP: str | None = None


def _aoti_tmpdir() -> str:
    global _AOTI_TMP
    with _AOTI_TMP_LOCK:
        if _AOTI_TMP is None or not os.path.isdir(_AOTI_TMP):
            # tmpfs when there is one: the package is written and read back once per load
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            _AOTI_TMP = tempfile.mkdtemp(prefix="esper-kernels-", dir=shm)
        return _AOTI_TMP


def check_hardware(manifest: KernelManifest) -> None:
    """Raise KernelHardwareError unless this process can run ``manifest``'s program (no compiler involved)."""
    if manifest.device == "cuda":
        if not torch.cuda.is_available():
            raise KernelHardwareError(f"{manifest.artifact_id} needs CUDA; this process has no GPU")
        have = "{}.{}".format(*torch.cuda.get_device_capability())
        if manifest.compute_capability and manifest.compute_capability != have:
            raise KernelHardwareError(f"{manifest.artifact_id} was built for compute capability "
                                      f"{manifest.compute_capability}; this GPU is {have}")
    elif manifest.pipeline in AOTI_PIPELINES:
        check_cpu_isa(manifest.cpu_isa)


NativeProgram = Callable[[list[torch.Tensor]], list[torch.Tensor]]


_AOTI_MEMBER = re.compile(r"^[^/]+/data/aotinductor/model/[^/]+$")


def _package_members(program: bytes, manifest: KernelManifest, member: str) -> dict[str, bytes]:
    """The AOTInductor package's own files (name -> bytes), refusing anything outside its layout."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(program))
    except zipfile.BadZipFile as exc:
        raise KernelFormatError(f"{manifest.artifact_id}: {member} is not an AOTInductor package: {exc}") from None
    with zf:
        return {i.filename.rsplit("/", 1)[1]: zf.read(i) for i in zf.infolist() if _AOTI_MEMBER.match(i.filename)}


_LIBC: Any = None


def _dlopen_without_the_gil(path: str) -> int:
    """``dlopen(path)`` through a ctypes foreign call, which releases the GIL while the library is mapped.

    Mapping and relocating a kernel's shared object is most of a native load (~0.7 ms here). The runner
    constructor (a pybind11 call, GIL held) then finds it already loaded: ``dlopen`` of the same path only
    bumps a reference count. Returns the handle (0 when the call failed; the runner then reports why).
    """
    global _LIBC
    import ctypes

    if _LIBC is None:
        libc = ctypes.CDLL(None)
        libc.dlopen.restype = ctypes.c_void_p
        libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.dlclose.argtypes = [ctypes.c_void_p]
        _LIBC = libc
    return int(_LIBC.dlopen(path.encode(), os.RTLD_NOW | os.RTLD_LOCAL) or 0)


def _load_aoti(program: bytes, manifest: KernelManifest, member: str) -> NativeProgram:
    # The ISA is checked from the manifest (covered by the blob's sha256) *before* the shared object is
    # opened: a binary built for a wider ISA could fault in its initialisers on this CPU.
    check_hardware(manifest)
    files = _package_members(program, manifest, member)
    shared = [name for name in files if name.endswith(".so")]
    metadata = [name for name in files if name.endswith("wrapper_metadata.json")]
    if manifest.device == "cpu" and len(shared) == 1 and len(metadata) == 1:
        return _load_cpu_runner(files[shared[0]], files[metadata[0]], manifest, member)
    return _load_with_package_loader(program, manifest, member)


def _load_cpu_runner(shared_object: bytes, metadata: bytes, manifest: KernelManifest, member: str) -> NativeProgram:
    """A CPU package's one shared object, run by AOTInductor's model-container runner.

    Cheaper than the package loader (which extracts every member, sources included) and mostly off the
    GIL: the object is written to tmpfs and mapped by :func:`_dlopen_without_the_gil`; only the runner's
    construction (~0.3 ms) holds the GIL, which matters because loads run beside training steps.
    """
    try:
        device = json.loads(metadata).get("AOTI_DEVICE_KEY", "cpu")
    except ValueError as exc:
        raise KernelFormatError(f"{manifest.artifact_id}: unreadable metadata in {member}: {exc}") from None
    if device != "cpu":
        raise KernelFormatError(f"{manifest.artifact_id}: {member} targets {device!r}, the manifest says 'cpu'")
    fd, path = tempfile.mkstemp(suffix=".so", dir=_aoti_tmpdir())
    handle = 0
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(shared_object)
        handle = _dlopen_without_the_gil(path)
        try:
            runner = torch._C._aoti.AOTIModelContainerRunnerCpu(path, 1)
        except RuntimeError as exc:
            raise KernelFormatError(f"{manifest.artifact_id}: {member} does not load: {exc}") from None
    finally:
        if handle:
            _LIBC.dlclose(handle)  # the runner holds its own reference
        os.unlink(path)  # mapped: the file is no longer needed
    return runner.run  # type: ignore[no-any-return]


def _load_with_package_loader(program: bytes, manifest: KernelManifest, member: str) -> NativeProgram:
    # The C++ loader reads a path, not a buffer; the file is only needed while it extracts the package.
    fd, path = tempfile.mkstemp(suffix=".pt2", dir=_aoti_tmpdir())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(program)
        try:
            loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, -1, False)
        except RuntimeError as exc:
            raise KernelFormatError(f"{manifest.artifact_id}: {member} does not load: {exc}") from None
    finally:
        os.unlink(path)
    meta = loader.get_metadata()
    if meta.get("AOTI_DEVICE_KEY", manifest.device) != manifest.device:
        raise KernelFormatError(f"{manifest.artifact_id}: {member} targets {meta.get('AOTI_DEVICE_KEY')!r}, "
                                f"the manifest says {manifest.device!r}")
    return loader.boxed_run  # type: ignore[no-any-return]


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
        graph = _load_exported(artifact.program, m.artifact_id)
        if m.device == "cuda":
            graph = graph.to("cuda")
        kernel = CompiledKernel(artifact, data, graph, None)
    elif m.pipeline in AOTI_PIPELINES:
        forward = _load_aoti(artifact.program, m, PROGRAM_MEMBER)
        if pause is not None:
            pause()
        backward = _load_aoti(artifact.backward, m, BACKWARD_MEMBER)
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


def cleanup_tmp() -> None:
    """Remove this process's private extraction directory (loaded kernels stay loaded)."""
    global _AOTI_TMP
    with _AOTI_TMP_LOCK:
        if _AOTI_TMP is not None:
            shutil.rmtree(_AOTI_TMP, ignore_errors=True)
            _AOTI_TMP = None
