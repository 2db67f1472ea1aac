"""Urza's settings: storage URLs, what to compile and limits (``ESPER_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from esper_contracts import MAX_IR_NODES, MAX_IR_PARAMETERS, CompilationPipeline, OpType, TensorInterface
from esper_runtime import ServiceSettings
from esper_storage import resolve_database_url


class UrzaSettings(ServiceSettings):
    """Everything Urza can be told. Defaults run standalone: SQLite and a blob folder under ``data_dir``."""

    service_name: str = "urza"
    data_dir: Path = Field(default=Path("~/.esper/urza"), description="where the embedded database and blobs live")
    database_url: str | None = Field(default=None, description="sqlite:///... or postgresql+psycopg://...; "
                                                               "default sqlite:///<data_dir>/urza.db")
    database_password: str | None = Field(default=None, description="fills in a database URL without a password")
    blob_url: str | None = Field(default=None, description="file:///... or s3://bucket/prefix?endpoint_url=...; "
                                                           "default file:///<data_dir>/blobs")

    # What every new blueprint is compiled for: pipelines x hardware x one injection shape.
    pipelines: list[CompilationPipeline] = Field(
        default_factory=lambda: [CompilationPipeline.FAST, CompilationPipeline.STANDARD], min_length=1)
    hardware: list[str] = Field(default_factory=lambda: ["cpu"], min_length=1)
    batch_size: int = Field(default=32, ge=1, description="batch axis of the compiled input shape")
    tokens: int = Field(default=16, ge=1, description="token axis of the compiled input shape for BTD blueprints")
    spatial: int = Field(default=8, ge=1, description="height and width of the compiled input shape for BCHW")
    validate_compiled: bool = Field(default=True, description="queue a ValidationJob for every COMPILED artifact")

    seed_library: bool = Field(default=True, description="register the built-in blueprint library at start-up")
    consume: bool = Field(default=True, description="subscribe to results, reports and field reports on the bus")
    subscription: str = Field(default="urza", min_length=1)
    max_redeliveries: int = Field(default=3, ge=0, description="retries of a failing message before its dead letter")
    nack_delay_ms: int = Field(default=1000, ge=0, description="wait before a failed message is redelivered")
    outbox_interval_s: float = Field(default=2.0, gt=0, description="how often unsent jobs are retried")

    # Limits on what clients may send.
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="largest JSON request body")
    max_binary_bytes: int = Field(default=1 << 30, ge=1, description="largest kernel binary upload")
    max_nodes: int = Field(default=MAX_IR_NODES, ge=1, le=MAX_IR_NODES)
    max_parameters: int = Field(default=MAX_IR_PARAMETERS, ge=1, le=MAX_IR_PARAMETERS)
    allowed_ops: list[OpType] | None = Field(default=None, description="None accepts every op of the contract")
    max_page_size: int = Field(default=500, ge=1)
    presign_expires_s: int = Field(default=600, ge=1)

    @model_validator(mode="after")
    def _known_hardware_names(self) -> UrzaSettings:
        for name in self.hardware:
            if not name or not all(c.isalnum() or c == "_" for c in name) or name != name.lower():
                raise ValueError(f"hardware name {name!r} must be lowercase letters, digits or '_' "
                                 f"(it becomes part of artifact ids)")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use, with the default and the separately supplied password filled in."""
        return resolve_database_url(self.database_url, password=self.database_password,
                                    default_file=self.data_dir / "urza.db")

    @property
    def resolved_blob_url(self) -> str:
        """The blob store URL in use."""
        return self.blob_url or (self.data_dir.expanduser().resolve() / "blobs").as_uri()

    def input_shape(self, interface: TensorInterface) -> list[int]:
        """The concrete shape a blueprint with ``interface`` is compiled for."""
        f = interface.features
        return {"BD": [self.batch_size, f], "BTD": [self.batch_size, self.tokens, f],
                "BCHW": [self.batch_size, f, self.spatial, self.spatial]}[interface.layout]
