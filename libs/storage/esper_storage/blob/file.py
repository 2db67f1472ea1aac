"""The ``file:///dir`` blob backend: one file per key under a directory, written atomically, never overwritten."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from .base import CHUNK_SIZE, BlobConflictError, BlobNotFoundError, BlobStoreURLError, check_key, sha256_hex

# Temporary files live inside the root so the final link is a same-filesystem operation (and so atomic).
_TMP_DIR = ".tmp"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


class FileBlobStore:
    """Blobs as read-only files below ``root``.

    A write goes to a temporary file, is fsynced, then hard-linked to its final name: ``link`` fails
    when the name exists, so two racing writers can never replace each other's bytes and a reader
    never sees a half-written file.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / _TMP_DIR).mkdir(exist_ok=True)
        self.url = self.root.as_uri()

    @classmethod
    def from_url(cls, url: str) -> FileBlobStore:
        """Open ``file:///absolute/dir`` (created when missing)."""
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise BlobStoreURLError(f"a file blob store URL looks like file:///absolute/dir, got {url!r}")
        return cls(unquote(parts.path))

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``; identical bytes again are a no-op, different bytes raise BlobConflictError."""
        path = self._path(key)
        new_sha = sha256_hex(data)
        if path.exists():
            return self._same_or_conflict(key, path, new_sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root / _TMP_DIR, prefix="put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.chmod(0o444)  # blobs are immutable; make accidental edits fail loudly
            try:
                os.link(tmp, path)
            except FileExistsError:  # another writer won the race: fine if it wrote the same bytes
                return self._same_or_conflict(key, path, new_sha)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return new_sha

    def _same_or_conflict(self, key: str, path: Path, new_sha: str) -> str:
        existing = _file_sha256(path)
        if existing != new_sha:
            raise BlobConflictError(key, existing, new_sha)
        return existing

    def get(self, key: str) -> bytes:
        """All bytes under ``key``."""
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob under key {key!r} in {self.url}") from None

    def open(self, key: str) -> IO[bytes]:
        """The blob as an open binary file."""
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob under key {key!r} in {self.url}") from None

    def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """The blob's length in bytes."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob under key {key!r} in {self.url}") from None

    def sha256(self, key: str) -> str:
        """The sha256 of the stored bytes (computed by reading the file)."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFoundError(f"no blob under key {key!r} in {self.url}")
        return _file_sha256(path)

    def uri(self, key: str) -> str:
        """``file:///...`` URI of the blob's file."""
        return self._path(key).as_uri()

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """Local files have no shareable URL: always None (callers stream the bytes instead)."""
        return None

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"FileBlobStore({self.url!r})"
