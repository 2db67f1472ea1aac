"""Services that keep SQL state can share one database (docker compose gives them one): no table collides."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from esper_storage import current_revision, head_revision, open_database, upgrade

#: Every service's migrations package.
MIGRATIONS = ("esper_urza.migrations", "esper_karn.migrations")


def test_every_service_migrates_into_one_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    for package in MIGRATIONS:
        upgrade(url, package)
    for package in MIGRATIONS:
        assert current_revision(url, package) == head_revision(package)
    db = open_database(url)
    try:
        tables = set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
    assert {"blueprints", "karn_blueprints", "field_reports", "karn_field_reports"} <= tables
