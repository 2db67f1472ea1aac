"""Which backend serves a URL: the one place mapping URL schemes to storage implementations.

Callers name storage by URL in their settings (``sqlite:///...`` or ``postgresql+psycopg://...``;
``file:///...`` or ``s3://...``) and never learn which class they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .blob.base import BlobStore, BlobStoreURLError
from .blob.file import FileBlobStore
from .sql.engine import SQL_BACKENDS, Database

BlobStoreFactory = Callable[[str], BlobStore]


def _open_s3(url: str) -> BlobStore:
    from .blob.s3 import S3BlobStore  # boto3 is slow to import; only pay for it when S3 is used

    return S3BlobStore.from_url(url)


#: URL scheme -> function opening a blob store from the full URL.
BLOB_BACKENDS: dict[str, BlobStoreFactory] = {"file": FileBlobStore.from_url, "s3": _open_s3}


def register_blob_backend(scheme: str, factory: BlobStoreFactory) -> None:
    """Make ``scheme://`` URLs open with ``factory`` (for plug-in backends and tests)."""
    BLOB_BACKENDS[scheme] = factory


def open_blob_store(url: str) -> BlobStore:
    """The blob store named by ``url``; BlobStoreURLError names the known schemes when it is unknown."""
    scheme = urlsplit(url).scheme
    factory = BLOB_BACKENDS.get(scheme)
    if factory is None:
        raise BlobStoreURLError(f"unsupported blob store URL {url!r}; schemes: "
                                f"{', '.join(f'{s}://' for s in sorted(BLOB_BACKENDS))}")
    return factory(url)


def open_database(url: str, **engine_kwargs: Any) -> Database:
    """The database named by ``url`` (schemes: see ``SQL_BACKENDS``); DatabaseURLError when unsupported."""
    return Database(url, **engine_kwargs)


__all__ = ["BLOB_BACKENDS", "SQL_BACKENDS", "open_blob_store", "open_database", "register_blob_backend"]
