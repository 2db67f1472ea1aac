"""The blob store interface: immutable byte objects under string keys, with sha256 on every write."""

from __future__ import annotations

import hashlib
import re
from typing import IO, Protocol, runtime_checkable

#: Keys are relative, slash-separated paths of safe characters: they become file paths and S3 object names.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
MAX_KEY_LENGTH = 512
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")

#: Size of the pieces a blob is read or streamed in.
CHUNK_SIZE = 1 << 20


class BlobError(Exception):
    """Base of every error a blob store raises."""


class BlobNotFoundError(BlobError, KeyError):
    """No blob is stored under the key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "blob not found"


class BlobConflictError(BlobError):
    """A key already holds different bytes: blobs are immutable, a key is written once."""

    def __init__(self, key: str, existing_sha256: str, new_sha256: str) -> None:
        super().__init__(f"blob {key!r} already holds sha256 {existing_sha256}; refusing to overwrite it "
                         f"with different bytes (sha256 {new_sha256})")
        self.key = key
        self.existing_sha256 = existing_sha256
        self.new_sha256 = new_sha256


class InvalidBlobKeyError(BlobError, ValueError):
    """A key that is not a safe relative path (empty, absolute, '..', odd characters, too long)."""


class BlobStoreURLError(BlobError, ValueError):
    """A blob store URL that names no known backend or is missing a part."""


def check_key(key: str) -> str:
    """Return ``key`` when it is a safe relative path; raise InvalidBlobKeyError saying why otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidBlobKeyError(f"blob key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidBlobKeyError(f"blob key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if not _KEY_PATTERN.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise InvalidBlobKeyError(f"blob key {key!r} must be a relative path of [A-Za-z0-9._-] segments "
                                  f"separated by '/', each starting with a letter or digit")
    return key


def sha256_hex(data: bytes) -> str:
    """The lowercase hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def content_key(sha256: str, prefix: str = "sha256") -> str:
    """The content-addressed key of a blob with digest ``sha256``: ``<prefix>/<first two hex>/<digest>``.

    The two-character fan-out keeps directories small on the file backend and costs nothing on S3.
    """
    if not SHA256_PATTERN.match(sha256):
        raise InvalidBlobKeyError(f"not a lowercase hex sha256 digest: {sha256!r}")
    return check_key(f"{prefix}/{sha256[:2]}/{sha256}")


@runtime_checkable
class BlobStore(Protocol):
    """Immutable blobs under keys. Every backend passes the same conformance suite.

    ``put`` is idempotent for identical bytes and raises BlobConflictError for different bytes under
    an existing key, so a content-addressed key can be written by any number of racing writers.
    """

    url: str

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` (atomically: readers see all of it or nothing); return its sha256."""
        ...

    def get(self, key: str) -> bytes:
        """All bytes under ``key``; BlobNotFoundError if there are none."""
        ...

    def open(self, key: str) -> IO[bytes]:
        """A readable binary stream of the blob, for sending large blobs in pieces; the caller closes it."""
        ...

    def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""
        ...

    def size(self, key: str) -> int:
        """The blob's length in bytes; BlobNotFoundError if there is none."""
        ...

    def sha256(self, key: str) -> str:
        """The sha256 recorded (or computed) for the blob; BlobNotFoundError if there is none."""
        ...

    def uri(self, key: str) -> str:
        """A stable URI naming the blob in this backend (``file:///...`` or ``s3://bucket/...``)."""
        ...

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A time-limited URL anyone can GET the blob from, or None when the backend has no such thing."""
        ...

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        ...
