"""Alembic environment: migrate on the connection esper_storage hands over (or the configured URL)."""

from esper_karn.store.models import metadata
from esper_storage import run_env

run_env(metadata)
