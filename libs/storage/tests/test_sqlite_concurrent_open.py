"""Opening a brand-new SQLite file while another connection holds its lock waits, instead of failing.

SQLite refuses the switch to WAL at once ("database is locked", no busy handler) while another
connection of a not-yet-WAL file holds a lock; services or threads starting together on one new
database file hit exactly that.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sqlalchemy import text

from esper_storage.sql.engine import Database


def test_first_connection_waits_for_a_lock_held_on_a_fresh_file(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # a writer in the default rollback-journal mode
    holder.execute("CREATE TABLE t (id INTEGER)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    db = Database(f"sqlite:///{path}")
    try:
        with db.write() as conn:  # connects (switching to WAL) while the lock is still held
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with db.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    finally:
        release.join()
        db.dispose()
        holder.close()
