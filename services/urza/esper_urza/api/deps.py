"""Dependencies shared by the routers: Urza's catalog, ledger and settings, kept on ``app.state``.

They are ``async`` because they never block: FastAPI runs a plain ``def`` dependency on its thread pool,
and each such hop costs a request tens of microseconds and a thread switch for a dictionary lookup.
"""

from __future__ import annotations

from fastapi import Request

from ..catalog import Catalog
from ..ledger import Ledger
from ..settings import UrzaSettings


async def catalog(request: Request) -> Catalog:
    """The blueprint catalog of this app."""
    found: Catalog = request.app.state.urza_catalog
    return found


async def ledger(request: Request) -> Ledger:
    """The artifact ledger of this app."""
    found: Ledger = request.app.state.urza_ledger
    return found


async def settings(request: Request) -> UrzaSettings:
    """Urza's settings."""
    found: UrzaSettings = request.app.state.urza_settings
    return found
