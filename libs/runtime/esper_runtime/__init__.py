"""Shared runtime for Esper services: settings, structured logging, health and metrics, job workers, the CLI."""

from .jobs import JobHandler, JobHealth, JobService, JobSettings, JobWorker, PermanentJobError
from .logs import configure_logging
from .service import Service
from .settings import ServiceSettings, SettingsFileError, load_settings

__all__ = [
    "JobHandler",
    "JobHealth",
    "JobService",
    "JobSettings",
    "JobWorker",
    "PermanentJobError",
    "Service",
    "ServiceSettings",
    "SettingsFileError",
    "configure_logging",
    "load_settings",
]
