"""Urza's REST API (``/api/v1``): routers, error mapping and request limits."""

from .app import install_api

__all__ = ["install_api"]
