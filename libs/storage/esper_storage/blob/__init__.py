"""Blob stores by URL: a local directory (embedded default) or S3."""

from .base import (
    BlobConflictError,
    BlobError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreURLError,
    InvalidBlobKeyError,
    check_key,
    content_key,
    sha256_hex,
)
from .file import FileBlobStore

__all__ = [
    "BlobConflictError", "BlobError", "BlobNotFoundError", "BlobStore", "BlobStoreURLError", "FileBlobStore",
    "InvalidBlobKeyError", "check_key", "content_key", "sha256_hex",
]
