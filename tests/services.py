"""Every runnable service of the platform, built for tests from its ``esper.services`` entry point.

Settings travel as ``ESPER_*`` environment variables, so each service takes the ones it has and ignores the
rest: one call builds Urza, Tamiyo, the Narset coordinator, Karn, the worker pools and any service added later.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from esper_runtime import Service
from esper_runtime.registry import load_factory, runnable_services
from esper_runtime.testing import ISSUER

SERVICES = sorted(runnable_services())


def service_env(data_dir: Path, jwks: Path | None, development: bool, **extra: str) -> dict[str, str | None]:
    """What every service is given (None: the variable is removed)."""
    return {"ESPER_DATA_DIR": str(data_dir), "ESPER_BUS_URL": f"memory://svc-{uuid.uuid4().hex[:8]}",
            "ESPER_SEED_LIBRARY": "false", "ESPER_LOG_LEVEL": "WARNING", "ESPER_AUTO_PROPOSE": "false",
            "ESPER_AUTH_JWKS": str(jwks) if jwks else None, "ESPER_AUTH_ISSUER": ISSUER,
            "ESPER_DEVELOPMENT": "true" if development else None} | extra


def build(name: str, data_dir: Path, jwks: Path | None = None, *, development: bool = False, **extra: str) -> Service:
    """Service ``name`` verifying against ``jwks``, in production mode unless ``development``."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in service_env(data_dir, jwks, development, **extra).items():
            if value is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, value)
        return load_factory(name)()
