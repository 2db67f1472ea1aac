"""Karn's settings: its store, where Urza is, how fast and how much it may propose (``ESPER_*`` variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from esper_contracts import MAX_IR_PARAMETERS
from esper_runtime import ServiceSettings
from esper_storage import resolve_database_url


class KarnSettings(ServiceSettings):
    """Everything Karn can be told. Defaults run standalone: SQLite under ``data_dir``, Urza on this machine."""

    service_name: str = "karn"
    data_dir: Path = Field(default=Path("~/.esper/karn"), description="where the embedded database lives")
    database_url: str | None = Field(default=None, description="sqlite:///... or postgresql+psycopg://...; "
                                                               "default sqlite:///<data_dir>/karn.db")
    database_password: str | None = Field(default=None, description="fills in a database URL without a password")
    urza_url: str = Field(default="http://127.0.0.1:8000", description="base URL of Urza's REST API")
    urza_token: str | None = Field(default=None,
                                   description="bearer token for Urza (operator role: it submits children)")

    consume: bool = Field(default=True, description="subscribe to field and validation reports on the bus")
    subscription: str = Field(default="karn", min_length=1)
    max_redeliveries: int = Field(default=3, ge=0, description="retries of a failing message before its dead letter")
    nack_delay_ms: int = Field(default=1000, ge=0, description="wait before a failed message is redelivered")

    auto_propose: bool = Field(default=True, description="propose children when new field reports arrive")
    children_per_round: int = Field(default=2, ge=1, le=64, description="children one round may propose")
    round_interval_s: float = Field(default=5.0, gt=0, description="how often a waiting demand is retried")
    max_pipeline_backlog: int = Field(default=8, ge=1, description="Urza's compilations + validations waiting "
                                                                   "above which Karn submits nothing")
    max_unresolved_children: int = Field(default=8, ge=1, description="Karn's own children not yet judged, at most")
    explore_untested: float = Field(default=0.25, ge=0, le=1, description="chance a draft mutates a parent "
                                                                        "Tamiyo has not tested yet")
    drafts_per_child: int = Field(default=6, ge=1, le=64, description="candidates drafted for each child chosen")
    max_parameters: int = Field(default=5_000_000, ge=1, le=MAX_IR_PARAMETERS, description="largest child")
    novelty_tolerance: float = Field(default=0.05, ge=0, le=1, description="relative diversity fall ignored")
    novelty_scale: float = Field(default=2.0, ge=0, description="novelty bonus weight at a 100 % diversity fall")
    seed: int | None = Field(default=None, description="seed of Karn's random draws (None: fresh each start)")

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use, with the default and the separately supplied password filled in."""
        return resolve_database_url(self.database_url, password=self.database_password,
                                    default_file=self.data_dir / "karn.db")
