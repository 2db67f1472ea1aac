"""Service settings: defaults, then an optional YAML file, then environment variables (highest priority)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class SettingsFileError(ValueError):
    """The YAML settings file is missing, unreadable or not a mapping."""


class ServiceSettings(BaseSettings):
    """Settings every service shares. Subclass it to add a service's own fields.

    Environment variables use the prefix ``ESPER_`` (``ESPER_BUS_URL=pulsar://...``); a YAML file named
    by ``ESPER_CONFIG`` (or passed to :func:`load_settings`) supplies values below the environment.
    """

    model_config = SettingsConfigDict(env_prefix="ESPER_", extra="forbid", validate_default=True)

    service_name: str = Field(default="esper", min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    bus_url: str = Field(default="memory://", description="memory:// (in-process) or pulsar://host:port")
    topic_prefix: str = Field(default="", description="Prefix of every bus topic (isolates one platform, or a test)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="largest request body (413 beyond)")
    body_read_timeout_s: float = Field(default=30.0, gt=0, description="408 when a request body stops arriving "
                                                                        "for this long")

    # Who may call the REST API (esper_runtime.auth). Production (the default) needs a JWKS; development may
    # use an HS256 secret, or nothing at all (an open API).
    development: bool = Field(default=False, description="development mode: HS256 secrets are accepted and, with "
                              "no key configured, the API is open (every caller acts as an admin). Never in "
                              "production: there, a service with an API refuses to start without ESPER_AUTH_JWKS")
    auth_jwks: str | None = Field(default=None, description="the identity provider's JWKS (RS256 keys): a file "
                                  "path, file://, or an http(s):// URL fetched when a token names a new key id")
    auth_issuer: str | None = Field(default=None, description="required `iss` of every token (unset: not checked)")
    auth_audience: str | None = Field(default="esper", description="required `aud` of every token (empty: not "
                                      "checked)")
    auth_roles_claim: str = Field(default="roles", min_length=1, description="claim holding the roles (viewer, "
                                  "operator, admin); a dotted path reaches nested claims, e.g. realm_access.roles")
    auth_hs256_secret: SecretStr | None = Field(default=None, description="development only: shared secret of "
                                                "HS256 tokens (at least 32 bytes)")
    auth_leeway_s: float = Field(default=30.0, ge=0, description="clock skew allowed on exp, nbf and iat")

    # Tracing (esper_runtime.tracing): spans are exported only when an endpoint is set.
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP traces endpoint, e.g. "
                                      "http://otel-collector:4318/v1/traces; unset: tracing off, nothing exported")
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1, description="share of new traces recorded (a "
                                      "trace started elsewhere follows its caller's decision)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments (the YAML file, passed as init kwargs) rank below the environment, so an
        # operator can always override a file-shipped value with one variable.
        return env_settings, init_settings


S = TypeVar("S", bound=ServiceSettings)


def read_yaml_settings(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings; raises SettingsFileError with the path and the reason."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise SettingsFileError(f"settings file not found: {p}") from None
    except yaml.YAMLError as exc:
        raise SettingsFileError(f"settings file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsFileError(f"settings file {p} must hold a mapping, not {type(data).__name__}")
    return data


def load_settings(cls: type[S], config_file: str | Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from the YAML file (argument, else ``ESPER_CONFIG``), explicit overrides, then env."""
    path = config_file or os.environ.get("ESPER_CONFIG")
    values: dict[str, Any] = read_yaml_settings(path) if path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
