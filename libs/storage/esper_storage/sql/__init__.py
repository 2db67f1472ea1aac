"""SQL databases by URL (SQLite, PostgreSQL) and programmatic Alembic migrations."""

from .engine import (
    SQL_BACKENDS,
    Database,
    DatabaseUnavailable,
    DatabaseURLError,
    SqlBackend,
    parse_database_url,
    resolve_database_url,
)
from .migrate import current_revision, head_revision, run_env, schema_drift, upgrade
from .statements import insert_ignore
from .types import NAMING_CONVENTION, AutoId, UtcDateTime

__all__ = [
    "NAMING_CONVENTION", "SQL_BACKENDS", "AutoId", "Database", "DatabaseURLError", "DatabaseUnavailable", "SqlBackend",
    "UtcDateTime",
    "current_revision", "head_revision", "insert_ignore", "parse_database_url", "resolve_database_url", "run_env",
    "schema_drift", "upgrade",
]
