"""Alembic migrations of Urza's database, run at start-up by ``esper_storage.upgrade``."""
