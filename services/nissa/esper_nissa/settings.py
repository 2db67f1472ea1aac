"""Nissa's settings (``ESPER_*`` environment variables override the YAML file)."""

from __future__ import annotations

from pydantic import Field

from esper_runtime import ServiceSettings


class NissaSettings(ServiceSettings):
    """Where Nissa listens, which subscription it follows, and how much it remembers."""

    service_name: str = "nissa"
    port: int = Field(default=8105, ge=0, le=65535)
    subscription: str = Field(default="nissa", min_length=1,
                              description="Subscription name on every telemetry topic (one Nissa per name)")
    max_runs: int = Field(default=16, ge=1, description="Runs kept; the one silent longest is forgotten first")
    per_seed_metrics: bool = Field(default=True, description="One series per seed and metric (esper_seed_*)")
