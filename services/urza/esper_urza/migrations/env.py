"""Alembic environment: migrate on the connection esper_storage hands over (or the configured URL)."""

from esper_storage import run_env
from esper_urza.store.models import metadata

run_env(metadata)
