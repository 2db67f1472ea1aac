"""SQL and blob storage backends chosen by URL (SQLite/PostgreSQL, directory/S3).

``open_database(url)`` and ``open_blob_store(url)`` are the entry points; ``upgrade(url, package)``
runs a service's Alembic migrations.
"""

from .blob import (
    BlobConflictError,
    BlobError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreURLError,
    FileBlobStore,
    InvalidBlobKeyError,
    check_key,
    content_key,
    sha256_hex,
)
from .registry import BLOB_BACKENDS, open_blob_store, open_database, register_blob_backend
from .sql import (
    NAMING_CONVENTION,
    SQL_BACKENDS,
    AutoId,
    Database,
    DatabaseUnavailable,
    DatabaseURLError,
    UtcDateTime,
    current_revision,
    head_revision,
    insert_ignore,
    resolve_database_url,
    run_env,
    schema_drift,
    upgrade,
)

__all__ = [
    "BLOB_BACKENDS", "NAMING_CONVENTION", "SQL_BACKENDS", "AutoId", "BlobConflictError", "BlobError",
    "BlobNotFoundError", "BlobStore", "BlobStoreURLError", "Database", "DatabaseURLError", "DatabaseUnavailable",
    "FileBlobStore",
    "InvalidBlobKeyError", "UtcDateTime", "check_key", "content_key", "current_revision", "head_revision",
    "insert_ignore", "open_blob_store", "open_database", "register_blob_backend", "resolve_database_url", "run_env",
    "schema_drift", "sha256_hex", "upgrade",
]
