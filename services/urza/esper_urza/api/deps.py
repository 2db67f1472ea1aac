"""Dependencies shared by the routers: Urza's catalog, ledger and settings, kept on ``app.state``."""

from __future__ import annotations

from fastapi import Request

from ..catalog import Catalog
from ..ledger import Ledger
from ..settings import UrzaSettings


def catalog(request: Request) -> Catalog:
    """The blueprint catalog of this app."""
    found: Catalog = request.app.state.urza_catalog
    return found


def ledger(request: Request) -> Ledger:
    """The artifact ledger of this app."""
    found: Ledger = request.app.state.urza_ledger
    return found


def settings(request: Request) -> UrzaSettings:
    """Urza's settings."""
    found: UrzaSettings = request.app.state.urza_settings
    return found
