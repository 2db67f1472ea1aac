"""Urza's REST API (``/api/v1``): routers, error mapping, request limits and access tokens."""

from .app import install_api

__all__ = ["install_api"]
