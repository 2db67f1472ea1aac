"""One conformance suite for every SQL backend: SQLite always, PostgreSQL against a real server."""

from __future__ import annotations

import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, inspect, select, update
from sqlalchemy.exc import IntegrityError

from esper_storage import (
    Database,
    DatabaseURLError,
    current_revision,
    head_revision,
    insert_ignore,
    open_database,
    upgrade,
)
from esper_storage.sql.engine import SQLITE_CACHE_KIB

metadata = MetaData()
parents = Table("parents", metadata, Column("id", String(32), primary_key=True), Column("status", String(16)),
                Column("n", Integer, nullable=False, default=0))
children = Table("children", metadata, Column("id", Integer, primary_key=True),
                 Column("parent_id", String(32), ForeignKey("parents.id"), nullable=False))


@pytest.fixture
def db(database_url: str) -> Database:
    database = open_database(database_url)
    metadata.create_all(database.engine)
    yield database
    database.dispose()


def test_write_commits_and_read_sees_it(db: Database) -> None:
    with db.write() as conn:
        conn.execute(parents.insert().values(id="a", status="PENDING"))
    with db.read() as conn:
        assert conn.execute(select(parents.c.status).where(parents.c.id == "a")).scalar_one() == "PENDING"


def test_an_error_inside_write_rolls_everything_back(db: Database) -> None:
    with pytest.raises(RuntimeError), db.write() as conn:
        conn.execute(parents.insert().values(id="b", status="PENDING"))
        raise RuntimeError("boom")
    with db.read() as conn:
        assert conn.execute(select(parents.c.id)).all() == []


def test_read_transactions_do_not_persist_changes(db: Database) -> None:
    with db.read() as conn:
        conn.execute(parents.insert().values(id="c", status="PENDING"))
    with db.read() as conn:
        assert conn.execute(select(parents.c.id)).all() == []


def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(IntegrityError), db.write() as conn:
        conn.execute(children.insert().values(id=1, parent_id="nobody"))


def test_insert_ignore_is_idempotent_and_counts_new_rows(db: Database) -> None:
    with db.write() as conn:
        assert insert_ignore(conn, parents, {"id": "d", "status": "PENDING"}) == 1
        assert insert_ignore(conn, parents, [{"id": "d", "status": "OTHER"}, {"id": "e", "status": "PENDING"}]) == 1
        assert insert_ignore(conn, parents, []) == 0
    with db.read() as conn:
        rows = {row.id: row.status for row in conn.execute(select(parents.c.id, parents.c.status))}
    assert rows == {"d": "PENDING", "e": "PENDING"}


def test_compare_and_set_has_exactly_one_winner_under_contention(db: Database) -> None:
    with db.write() as conn:
        conn.execute(parents.insert().values(id="f", status="PENDING"))
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def claim(worker: str) -> None:
        barrier.wait()
        with db.write() as conn:
            moved = conn.execute(update(parents).where(parents.c.id == "f", parents.c.status == "PENDING")
                                 .values(status=worker)).rowcount
        if moved == 1:
            winners.append(worker)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    with db.read() as conn:
        assert conn.execute(select(parents.c.status).where(parents.c.id == "f")).scalar_one() == winners[0]


def test_read_then_write_inside_one_write_transaction_loses_no_update(db: Database) -> None:
    """The write transaction serialises read-modify-write on SQLite; on PostgreSQL SELECT ... FOR UPDATE does."""
    with db.write() as conn:
        conn.execute(parents.insert().values(id="g", status="x", n=0))

    def bump() -> None:
        for _ in range(10):
            with db.write() as conn:
                n = conn.execute(select(parents.c.n).where(parents.c.id == "g").with_for_update()).scalar_one()
                conn.execute(update(parents).where(parents.c.id == "g").values(n=n + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with db.read() as conn:
        assert conn.execute(select(parents.c.n).where(parents.c.id == "g")).scalar_one() == 40


def test_orm_session_helper_commits(db: Database) -> None:
    with db.session() as session:
        session.execute(parents.insert().values(id="h", status="PENDING"))
    with db.read() as conn:
        assert conn.execute(select(parents.c.id)).scalars().all() == ["h"]


def test_ping_and_dialect(db: Database, database_url: str) -> None:
    assert db.ping()
    assert db.dialect == database_url.split(":", 1)[0].split("+", 1)[0]
    assert "***" in db.url or db.sa_url.password is None


def test_sqlite_connections_use_wal(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'x.db'}")
    try:
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == -SQLITE_CACHE_KIB
    finally:
        db.dispose()


@pytest.mark.parametrize("url", ["mysql://x/y", "oracle+cx://a", "postgresql+asyncpg://u@h/db", "not a url"])
def test_unsupported_urls_are_refused_with_the_reason(url: str) -> None:
    with pytest.raises(DatabaseURLError):
        open_database(url)


def test_plain_postgresql_url_gets_psycopg3() -> None:
    db = Database("postgresql://user:secret@127.0.0.1:1/db")
    try:
        assert db.sa_url.drivername == "postgresql+psycopg"
        assert "secret" not in db.url
    finally:
        db.dispose()


# --- migrations ------------------------------------------------------------------------------------------

_ENV = """
from sqlalchemy import MetaData
from esper_storage import run_env

run_env(MetaData())
"""
_REVISION = '''
"""{message}"""
from alembic import op
import sqlalchemy as sa

revision = "{rev}"
down_revision = {down}


def upgrade() -> None:
    {body}


def downgrade() -> None:
    pass
'''


@pytest.fixture
def migrations_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway service package with two migrations, importable for the duration of the test."""
    name = f"svc_{uuid.uuid4().hex[:8]}"
    mig = tmp_path / "pkgs" / name / "migrations"
    (mig / "versions").mkdir(parents=True)
    (mig.parent / "__init__.py").write_text("")
    (mig / "__init__.py").write_text("")
    (mig / "env.py").write_text(textwrap.dedent(_ENV))
    (mig / "versions" / "0001_things.py").write_text(_REVISION.format(
        message="things", rev="0001", down="None",
        body='op.create_table("things", sa.Column("id", sa.Integer, primary_key=True))'))
    (mig / "versions" / "0002_label.py").write_text(_REVISION.format(
        message="label", rev="0002", down='"0001"',
        body='with op.batch_alter_table("things") as b:\n        b.add_column(sa.Column("label", sa.String(20)))'))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    yield f"{name}.migrations"
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]


def test_upgrade_creates_the_schema_and_is_idempotent(database_url: str, migrations_package: str) -> None:
    assert current_revision(database_url, migrations_package) is None
    upgrade(database_url, migrations_package)
    upgrade(database_url, migrations_package)  # a second start-up changes nothing
    assert current_revision(database_url, migrations_package) == head_revision(migrations_package) == "0002"
    db = open_database(database_url)
    try:
        columns = {c["name"] for c in inspect(db.engine).get_columns("things")}
        tables = set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
    assert columns == {"id", "label"}
    assert f"alembic_version_{migrations_package.split('.')[0]}" in tables


def test_upgrade_to_an_intermediate_revision_then_head(database_url: str, migrations_package: str) -> None:
    upgrade(database_url, migrations_package, revision="0001")
    assert current_revision(database_url, migrations_package) == "0001"
    upgrade(database_url, migrations_package)
    assert current_revision(database_url, migrations_package) == "0002"


def test_concurrent_start_ups_migrate_once(database_url: str, migrations_package: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            upgrade(database_url, migrations_package)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert current_revision(database_url, migrations_package) == "0002"


def test_a_failing_migration_leaves_nothing_behind(database_url: str, migrations_package: str, tmp_path: Path) -> None:
    package_dir = tmp_path / "pkgs" / migrations_package.split(".")[0] / "migrations" / "versions"
    (package_dir / "0003_broken.py").write_text(_REVISION.format(
        message="broken", rev="0003", down='"0002"',
        body='op.create_table("more", sa.Column("id", sa.Integer, primary_key=True))\n'
             '    op.execute("THIS IS NOT SQL")'))
    with pytest.raises(Exception, match=r"(?i)syntax"):
        upgrade(database_url, migrations_package)
    assert current_revision(database_url, migrations_package) is None
    db = open_database(database_url)
    try:
        assert "things" not in inspect(db.engine).get_table_names()
    finally:
        db.dispose()
