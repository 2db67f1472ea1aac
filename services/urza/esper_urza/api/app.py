"""Puts Urza's API onto a FastAPI app: routers, error handling, limits and the objects the routes use.

Who may call what (``esper_runtime.auth``): viewers read and query; operators submit blueprints and field
reports and write the pipeline's results (Tezzeret, Urabrask); admins force an artifact's status.
"""

from __future__ import annotations

from fastapi import FastAPI

from ..catalog import Catalog
from ..ledger import Ledger
from ..settings import UrzaSettings
from .blueprints import router as blueprints_router
from .errors import install_error_handlers
from .kernels import router as kernels_router
from .pipeline import router as pipeline_router
from .policies import router as policies_router


def install_api(app: FastAPI, catalog: Catalog, ledger: Ledger, settings: UrzaSettings) -> None:
    """Mount ``/api/v1`` on ``app`` (whose /healthz, /metrics and /docs come from esper_runtime)."""
    app.state.urza_catalog = catalog
    app.state.urza_ledger = ledger
    app.state.urza_settings = settings
    app.include_router(blueprints_router)
    app.include_router(kernels_router)
    app.include_router(pipeline_router)
    app.include_router(policies_router)
    install_error_handlers(app)
