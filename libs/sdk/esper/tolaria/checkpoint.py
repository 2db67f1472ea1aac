"""Checksummed checkpoints: the rollback points of a run.

Each checkpoint is one ``torch.save`` file, written atomically, with the sha256 of its exact bytes in
a sidecar ``<name>.sha256``. Loading re-hashes the bytes before unpickling anything (and unpickles
with ``weights_only=True``), so a torn or tampered file is refused with
:class:`CheckpointIntegrityError` instead of being half-loaded into a live model.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint's bytes do not hash to the checksum recorded beside it (or the checksum is missing)."""

    def __init__(self, path: Path, expected: str | None, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        recorded = f"recorded sha256 {expected}" if expected else "no recorded checksum"
        super().__init__(f"checkpoint {path} is corrupt: its bytes hash to {actual}, {recorded}")


class NoGoodCheckpointError(RuntimeError):
    """Every checkpoint on disk failed its integrity check (or there is none)."""


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never a torn one


def save_checkpoint(path: Path, state: dict[str, Any]) -> str:
    """Serialize ``state`` to ``path`` with its sha256 beside it; return the checksum."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, data)
    _write_atomically(_sidecar(path), f"{digest}  {path.name}\n".encode())
    return digest


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Verify ``path`` against its recorded sha256, then load it (tensors and plain containers only)."""
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    sidecar = _sidecar(path)
    expected = sidecar.read_text().split()[0] if sidecar.exists() else None
    if expected != actual:
        raise CheckpointIntegrityError(path, expected, actual)
    state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state


class CheckpointStore:
    """The last ``keep`` checkpoints of a run, one per epoch, newest last."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, epoch: int) -> Path:
        """Where the checkpoint taken after ``epoch`` lives."""
        return self.directory / f"epoch-{epoch:05d}.pt"

    def paths(self) -> list[Path]:
        """Checkpoint files on disk, oldest first."""
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("epoch-*.pt"))

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        """Write the checkpoint for ``epoch`` and drop any beyond the newest ``keep``."""
        path = self.path_for(epoch)
        save_checkpoint(path, state)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
            _sidecar(old).unlink(missing_ok=True)
        return path

    def discard_after(self, epoch: int) -> None:
        """Delete checkpoints newer than ``epoch`` (they belong to a timeline that was rolled back)."""
        for path in self.paths():
            if int(path.stem.split("-")[1]) > epoch:
                path.unlink(missing_ok=True)
                _sidecar(path).unlink(missing_ok=True)

    def load_latest_good(self) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that passes its integrity check; corrupt ones are logged and skipped."""
        failures: list[str] = []
        for path in reversed(self.paths()):
            try:
                return path, load_checkpoint(path)
            except CheckpointIntegrityError as err:
                log.error("%s; falling back to an older checkpoint", err)
                failures.append(str(err))
        detail = "; ".join(failures) or f"no checkpoint in {self.directory}"
        raise NoGoodCheckpointError(f"no good checkpoint to roll back to: {detail}")
