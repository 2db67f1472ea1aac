"""An LRU cache of kernel artifact bytes, bounded in megabytes and checked by sha256 on every access.

The cache holds bytes, not modules: an eager artifact is the canonical JSON of its BlueprintIR, a
compiled one (from Urza, later) is an opaque blob. Either way the bytes are verified against the
artifact's sha256 when they enter the cache and again whenever they leave it, so a corrupted entry is
caught before anything is built from it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from .errors import KernelIntegrityError


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class KernelCache:
    """Thread-safe LRU of ``artifact_id -> (bytes, sha256)`` holding at most ``capacity_mb`` megabytes."""

    def __init__(self, capacity_mb: float = 64.0) -> None:
        if capacity_mb < 0:
            raise ValueError(f"capacity_mb must be >= 0, got {capacity_mb}")
        self.capacity_bytes = int(capacity_mb * 1024 * 1024)
        self._entries: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def put(self, artifact_id: str, data: bytes, sha256: str) -> bool:
        """Store ``data`` under ``artifact_id`` after checking it hashes to ``sha256``.

        Raises KernelIntegrityError on a mismatch (nothing is stored). Returns False when the entry
        alone exceeds the capacity and is therefore not cached; least recently used entries are
        evicted to make room otherwise.
        """
        actual = sha256_hex(data)
        if actual != sha256:
            raise KernelIntegrityError(f"artifact {artifact_id}: sha256 {actual} does not match expected {sha256}")
        if len(data) > self.capacity_bytes:
            return False
        with self._lock:
            self._drop(artifact_id)
            while self._entries and self._size + len(data) > self.capacity_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self.evictions += 1
            self._entries[artifact_id] = (data, sha256)
            self._size += len(data)
        return True

    def get(self, artifact_id: str, sha256: str | None = None) -> bytes | None:
        """The cached bytes of ``artifact_id`` (marked most recently used), or None on a miss.

        The bytes are re-hashed on every get; if they no longer match the sha256 they were stored
        with (or ``sha256`` when given), the entry is evicted and KernelIntegrityError is raised.
        """
        with self._lock:
            entry = self._entries.get(artifact_id)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(artifact_id)
            self.hits += 1
        data, stored = entry
        actual = sha256_hex(data)
        expected = sha256 or stored
        if actual != expected or stored != expected:
            self.evict(artifact_id)
            raise KernelIntegrityError(f"artifact {artifact_id}: cached bytes hash to {actual}, expected {expected}")
        return data

    def evict(self, artifact_id: str) -> bool:
        """Remove ``artifact_id``; True if it was cached (used for kernels that failed at runtime)."""
        with self._lock:
            return self._drop(artifact_id)

    def _drop(self, artifact_id: str) -> bool:
        entry = self._entries.pop(artifact_id, None)
        if entry is None:
            return False
        self._size -= len(entry[0])
        return True

    def __contains__(self, artifact_id: object) -> bool:
        return artifact_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes currently held."""
        return self._size
