"""Shared runtime for Esper services: settings, structured logging, health and metrics, the CLI."""

from .logs import configure_logging
from .service import Service
from .settings import ServiceSettings, SettingsFileError, load_settings

__all__ = ["Service", "ServiceSettings", "SettingsFileError", "configure_logging", "load_settings"]
