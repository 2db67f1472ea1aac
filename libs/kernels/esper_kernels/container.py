"""The compiled kernel container: one format, its writer and its verifying reader (no code is loaded here).

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

Reading never unpickles stored bytes: the whole blob is sha256-checked before it is opened, every member
against the manifest, and weights are read with ``torch.frombuffer``. Loading the programs is
:mod:`esper_kernels.kernel`'s job.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from esper_contracts import ARTIFACT_ID_PATTERN, BlueprintIR, CompilationPipeline

from .cache import sha256_hex
from .errors import KernelFormatError, KernelIntegrityError
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
