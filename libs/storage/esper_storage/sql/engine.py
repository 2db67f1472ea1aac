"""SQL databases by URL: SQLite (embedded default) or PostgreSQL through psycopg 3, both via SQLAlchemy 2.

``Database`` hands out connections inside transactions: ``read()`` for queries, ``write()`` for changes.
On SQLite a write transaction starts with ``BEGIN IMMEDIATE``, taking the write lock up front; a
deferred transaction that reads and then writes could otherwise fail with "database is locked" when
another writer committed in between, which is exactly the compare-and-set pattern services use.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

_BEGIN_OPTION = "esper_sqlite_begin"

#: Page cache of each SQLite connection, KiB. SQLite's default, 2 MiB, is smaller than what a query over a few
#: thousand rows reads (Urza's library-wide kernel query: 3,000 artifacts and their tags), and every page
#: that does not fit is read from the file again on the next query: 16 MiB halved that query's time.
SQLITE_CACHE_KIB = 16384


#: How long a PostgreSQL connection attempt, a statement and a wait for a pooled connection may take: a database
#: that is down or stalled makes a request fail with the reason within seconds instead of hanging it.
PG_CONNECT_TIMEOUT_S = 5
PG_STATEMENT_TIMEOUT_MS = 15_000
PG_POOL_TIMEOUT_S = 10
#: The client's own limit on one exchange with the server: the statement timeout is the server's, and a
#: server that is stopped (not down) never enforces it, so without this a pooled connection would wait forever.
PG_CLIENT_TIMEOUT_S = 20.0


class DatabaseURLError(ValueError):
    """A database URL that names no supported backend or cannot be parsed."""


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or did not answer in time: a 503 for a request, worth retrying later."""


@dataclass(frozen=True)
class SqlBackend:
    """How to open one kind of database: normalise its URL, pick engine arguments, install connection hooks."""

    name: str
    normalise: Callable[[URL], URL]
    engine_kwargs: Callable[[URL], dict[str, Any]]
    install_hooks: Callable[[Engine], None]


# --- SQLite --------------------------------------------------------------------------------------------


def _sqlite_normalise(url: URL) -> URL:
    if url.drivername not in ("sqlite", "sqlite+pysqlite"):
        raise DatabaseURLError(f"SQLite URLs use the built-in driver (sqlite:///path), got {url.drivername!r}")
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def _sqlite_engine_kwargs(url: URL) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
    if not url.database or url.database == ":memory:":
        kwargs["poolclass"] = StaticPool  # one shared connection, or every checkout would see an empty database
    return kwargs


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (the "begin" hook below) instead of pysqlite's own
        # implicit BEGIN, which cannot take the write lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=30000")
            _enable_wal(cursor)  # readers never block the writer, nor it them
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # negative: KiB, not pages
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _enable_wal(cursor: Any, patience_s: float = 30.0) -> None:
    """Switch the file to WAL mode, waiting out other connections that hold a lock.

    SQLite answers "database is locked" to a journal-mode switch at once, without calling the busy
    handler, when another connection of a fresh (not yet WAL) file holds a lock: several services or
    threads opening one new database together would otherwise fail at start-up.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.005
    while True:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return  # already WAL (persistent in the file): nothing to switch
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


SQLITE = SqlBackend("sqlite", _sqlite_normalise, _sqlite_engine_kwargs, _sqlite_hooks)


# --- PostgreSQL ------------------------------------------------------------------------------------------


def _postgres_normalise(url: URL) -> URL:
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")  # psycopg 3 is the one driver we ship
    if url.drivername != "postgresql+psycopg":
        raise DatabaseURLError(f"PostgreSQL URLs use psycopg 3 (postgresql+psycopg://...), got {url.drivername!r}")
    return url


def _postgres_engine_kwargs(_url: URL) -> dict[str, Any]:
    return {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10, "pool_timeout": PG_POOL_TIMEOUT_S,
            "connect_args": {"connect_timeout": PG_CONNECT_TIMEOUT_S,
                             "options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"}}


def _unavailable(exc: OperationalError) -> DatabaseUnavailable:
    reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
    return DatabaseUnavailable(f"database unavailable: {reason}")


def _postgres_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        return _TimedConnection.connect(*cargs, **cparams)


def _timed_connection_class() -> type:
    import psycopg  # imported here: SQLite-only installs need not load the PostgreSQL driver

    class TimedConnection(psycopg.Connection[Any]):
        """A psycopg connection that gives up on a silent server after PG_CLIENT_TIMEOUT_S and closes itself."""

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            try:
                return super().wait(gen, interval=interval, timeout=timeout or PG_CLIENT_TIMEOUT_S)
            except psycopg.errors._WaitTimeout:
                self.pgconn.finish()  # its state is unknown: never hand it out again
                raise psycopg.OperationalError(f"no answer from the server within {PG_CLIENT_TIMEOUT_S:g} s") from None

    return TimedConnection


class _LazyTimedConnection:
    """Builds the psycopg subclass on first use."""

    _cls: Any = None

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self._cls is None:
            type(self)._cls = _timed_connection_class()
        return self._cls.connect(*args, **kwargs)


_TimedConnection = _LazyTimedConnection()


POSTGRESQL = SqlBackend("postgresql", _postgres_normalise, _postgres_engine_kwargs, _postgres_hooks)


#: URL scheme (the part before ``://``, without a ``+driver``) -> backend.
SQL_BACKENDS: dict[str, SqlBackend] = {"sqlite": SQLITE, "postgresql": POSTGRESQL, "postgres": POSTGRESQL}


def parse_database_url(url: str | URL) -> tuple[SqlBackend, URL]:
    """The backend for ``url`` and the URL normalised for it; DatabaseURLError says what is wrong."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise DatabaseURLError(f"cannot parse database URL {url!r}: {exc}") from None
    scheme = parsed.drivername.split("+", 1)[0]
    backend = SQL_BACKENDS.get(scheme)
    if backend is None:
        raise DatabaseURLError(f"unsupported database URL scheme {scheme!r}; use one of "
                               f"{', '.join(sorted(SQL_BACKENDS))} (e.g. sqlite:///data/app.db)")
    return backend, backend.normalise(parsed)


def resolve_database_url(url: str | None, *, password: str | None = None, default_file: Path) -> str:
    """The URL a service should open: ``sqlite:///<default_file>`` when none is set, and ``password`` filled in.

    Deployments keep the password out of the URL (a secret, ``ESPER_DATABASE_PASSWORD``); it is only added
    to a server URL that has none.
    """
    if url is None:
        return f"sqlite:///{default_file.expanduser().resolve()}"
    parsed = make_url(url)
    if password and parsed.password is None and not parsed.drivername.startswith("sqlite"):
        parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


class Database:
    """One database: an engine plus transaction helpers. Thread-safe; share one per process."""

    def __init__(self, url: str | URL, **engine_kwargs: Any) -> None:
        self.backend, self.sa_url = parse_database_url(url)
        kwargs = self.backend.engine_kwargs(self.sa_url) | engine_kwargs
        self.engine: Engine = create_engine(self.sa_url, **kwargs)
        self.backend.install_hooks(self.engine)
        self._writer = self.engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self._sessions = sessionmaker(bind=self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: what SQL to generate for dialect-specific statements."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The URL with any password hidden, for logs and health output."""
        return self.sa_url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a transaction that is rolled back at the end: for queries."""
        try:
            with self.engine.connect() as conn:
                try:
                    yield conn
                finally:
                    conn.rollback()
        except OperationalError as exc:  # cannot connect, connection lost, statement timed out
            raise _unavailable(exc) from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a transaction committed on success and rolled back on error.

        On SQLite the write lock is taken when the transaction starts, so reads inside it see the state
        the writes will apply to; on PostgreSQL use compare-and-set statements (``UPDATE ... WHERE``).
        """
        try:
            with self._writer.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session in a transaction committed on success, for callers that prefer the ORM."""
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            raise _unavailable(exc) from exc

    def ping(self) -> bool:
        """True when a trivial query succeeds (for health checks)."""
        with self.read() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"
