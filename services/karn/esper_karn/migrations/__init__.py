"""Karn's Alembic migrations (run by ``esper_storage.upgrade`` at start-up)."""
