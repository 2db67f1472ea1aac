"""Shared runtime for Esper services: settings, structured logging, health and metrics, job workers, the CLI."""

from .auth import AuthConfigError, Authenticator, Principal, Role, require
from .jobs import JobHandler, JobHealth, JobService, JobSettings, JobWorker, PermanentJobError
from .logs import configure_logging
from .service import Service
from .settings import ServiceSettings, SettingsFileError, load_settings

__all__ = [
    "AuthConfigError",
    "Authenticator",
    "JobHandler",
    "JobHealth",
    "JobService",
    "JobSettings",
    "JobWorker",
    "PermanentJobError",
    "Principal",
    "Role",
    "Service",
    "ServiceSettings",
    "SettingsFileError",
    "configure_logging",
    "load_settings",
    "require",
]
