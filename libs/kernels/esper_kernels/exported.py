"""The ``fast`` pipeline's programs: ``torch.export`` archives, screened before torch sees them.

An export archive can make ``torch.export.load`` unpickle (pickled weights, constants or sample inputs) or
dlopen native code (``data/aotinductor/``); the screen refuses both, and the loaded graph may call only
``aten`` operators. ``torch.export.load`` keeps process-global deserializer state
(``_CURRENT_DESERIALIZER``), so two loads on two threads at once fail; loads are serialized here.
"""

from __future__ import annotations

import io
import json
import re
import threading
import zipfile

import torch
from torch import nn

from .errors import KernelFormatError

# Operator namespaces an exported kernel graph may call; the IR interpreter's layers lower to these only.
_ALLOWED_OP_NAMESPACES = frozenset({"aten"})
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


# torch.export's deserializer is a process-wide singleton: a second load on another thread while one is in
# flight fails with "_CURRENT_DESERIALIZER is already set". Kasmina's loader threads, Urabrask and the main
# thread all load, so every load (and the unflattening in ``ExportedProgram.module``) holds this lock.
_EXPORT_LOAD_LOCK = threading.Lock()


def load_exported(program: bytes, artifact_id: str) -> nn.Module:
    """Screen, load and check a ``fast`` program: an aten-only graph taking its weights as inputs."""
    _screen_exported_archive(program)
    with _EXPORT_LOAD_LOCK:
        ep = torch.export.load(io.BytesIO(program))
        module = ep.module()
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        namespace = getattr(node.target, "namespace", None)
        if namespace not in _ALLOWED_OP_NAMESPACES and node.target.__module__ != "_operator":
            raise KernelFormatError(f"{artifact_id}: exported graph calls {node.target!r}, which is not an aten op")
    if any(True for _ in module.parameters()):  # weights are inputs; a program with its own would ignore them
        raise KernelFormatError(f"{artifact_id}: exported program embeds parameters; kernels take them as inputs")
    return module
