"""AOTInductor programs (``standard`` and ``aggressive``): native code run by torch's C++ runners.

On CPU the package's one shared object is mapped with ``dlopen`` through a ctypes foreign call (the GIL is
released while it maps) and run by the model-container runner; elsewhere torch's package loader runs it.
Never through ``torch._inductor`` (docs/decisions/0006, 0007). The hardware is checked from the manifest
before any shared object is opened.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from typing import Any

import torch

from .container import KernelManifest
from .errors import KernelFormatError
from .hardware import check_hardware

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


def load_aoti(program: bytes, manifest: KernelManifest, member: str) -> NativeProgram:
    """Load ``member`` (the forward or backward AOTInductor package) of a verified artifact as a callable."""
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


def cleanup_tmp() -> None:
    """Remove this process's private extraction directory (loaded kernels stay loaded)."""
    global _AOTI_TMP
    with _AOTI_TMP_LOCK:
        if _AOTI_TMP is not None:
            shutil.rmtree(_AOTI_TMP, ignore_errors=True)
            _AOTI_TMP = None
