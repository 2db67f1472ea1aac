"""Run a service's Alembic migrations programmatically: no alembic.ini, one migrations package per service.

A service keeps ``<package>/migrations/`` with ``env.py`` (two lines: import the models' MetaData and
call :func:`run_env`), ``script.py.mako`` and ``versions/``. At start-up it calls
``upgrade(database_url, "<package>.migrations")``.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, create_engine, text
from sqlalchemy.engine import make_url

from .engine import Database


def migrations_dir(migrations_package: str) -> Path:
    """The folder of ``migrations_package`` (it must be an ordinary package on disk)."""
    module = importlib.import_module(migrations_package)
    if module.__file__ is None:
        raise ValueError(f"{migrations_package!r} must be a regular package with an __init__.py")
    return Path(module.__file__).parent


def default_version_table(migrations_package: str) -> str:
    """``alembic_version_<top package>``: services sharing one PostgreSQL database keep separate histories."""
    return "alembic_version_" + migrations_package.split(".", 1)[0]


def _config(migrations_package: str, url: str, version_table: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(migrations_package)))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates '%'
    cfg.attributes["version_table"] = version_table
    return cfg


def _lock_key(version_table: str) -> int:
    # pg advisory locks take a signed 64-bit key; derive a stable one from the history's name.
    return int.from_bytes(hashlib.sha256(version_table.encode()).digest()[:8], "big", signed=True)


def upgrade(database: str | Database, migrations_package: str, revision: str = "head",
            version_table: str | None = None) -> None:
    """Bring the database up to ``revision`` with the migrations in ``migrations_package``.

    The whole upgrade runs in one transaction (DDL is transactional on SQLite and PostgreSQL). On
    SQLite it holds the write lock, on PostgreSQL an advisory lock, so replicas starting together
    migrate once and the others find the work done.
    """
    db = database if isinstance(database, Database) else Database(database)
    table = version_table or default_version_table(migrations_package)
    try:
        cfg = _config(migrations_package, db.sa_url.render_as_string(hide_password=False), table)
        with db.write() as conn:
            if db.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(table)})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if db is not database:
            db.dispose()


def current_revision(database: str | Database, migrations_package: str, version_table: str | None = None) -> str | None:
    """The revision the database is at (None before the first migration)."""
    db = database if isinstance(database, Database) else Database(database)
    try:
        with db.read() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"version_table": version_table or default_version_table(migrations_package)}
            )
            return ctx.get_current_revision()
    finally:
        if db is not database:
            db.dispose()


def head_revision(migrations_package: str) -> str | None:
    """The newest revision shipped in ``migrations_package``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(migrations_package)))
    return ScriptDirectory.from_config(cfg).get_current_head()


def schema_drift(database: str | Database, migrations_package: str, metadata: MetaData,
                 version_table: str | None = None) -> list[Any]:
    """What differs between the database's schema and ``metadata`` (empty when the migrations build the models).

    A service's test migrates a fresh database and asserts this is empty, so models and migrations cannot
    drift apart unnoticed.
    """
    from alembic.autogenerate import compare_metadata

    db = database if isinstance(database, Database) else Database(database)
    try:
        with db.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "compare_type": True, "version_table": version_table or default_version_table(migrations_package)})
            return list(compare_metadata(ctx, metadata))
    finally:
        if db is not database:
            db.dispose()


def run_env(target_metadata: MetaData | None = None) -> None:
    """The body of a service's ``env.py``: run migrations on the connection :func:`upgrade` passed in.

    Also works from the ``alembic`` command line (``-x`` free): without a passed connection it opens
    the ``sqlalchemy.url`` of the config, and in offline mode it prints SQL.
    """
    cfg = context.config
    version_table = cfg.attributes.get("version_table", "alembic_version")
    url = cfg.get_main_option("sqlalchemy.url") or ""
    opts: dict[str, Any] = {"target_metadata": target_metadata, "version_table": version_table}
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"), **opts)
        with context.begin_transaction():
            context.run_migrations()
        return
    conn: Connection | None = cfg.attributes.get("connection")
    if conn is not None:
        _run_online(conn, opts)
        return
    engine = create_engine(make_url(url))
    try:
        with engine.begin() as own:
            _run_online(own, opts)
    finally:
        engine.dispose()


def _run_online(conn: Connection, opts: dict[str, Any]) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    context.configure(connection=conn, render_as_batch=conn.dialect.name == "sqlite", **opts)
    with context.begin_transaction():
        context.run_migrations()
