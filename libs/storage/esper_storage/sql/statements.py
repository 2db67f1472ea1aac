"""Dialect-aware statements that SQLAlchemy Core does not spell the same way on every backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignore(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
                  conflict_columns: Sequence[str] | None = None) -> int:
    """Insert rows, silently skipping those that collide with an existing key; return how many were new.

    Both SQLite and PostgreSQL spell this ``INSERT ... ON CONFLICT DO NOTHING``; it is what makes an
    at-least-once handler idempotent without a read-then-write race.
    """
    values = [dict(rows)] if isinstance(rows, Mapping) else [dict(r) for r in rows]
    if not values:
        return 0
    name = conn.dialect.name
    if name == "postgresql":
        pg = postgresql.insert(table).values(values)
        stmt: Any = pg.on_conflict_do_nothing(index_elements=list(conflict_columns) if conflict_columns else None)
    elif name == "sqlite":
        lite = sqlite.insert(table).values(values)
        stmt = lite.on_conflict_do_nothing(index_elements=list(conflict_columns) if conflict_columns else None)
    else:
        raise NotImplementedError(f"insert_ignore has no form for dialect {name!r}")
    # rowcount is -1 for multi-row inserts on some drivers; RETURNING counts the new rows everywhere.
    return len(conn.execute(stmt.returning(*table.primary_key.columns)).all())
