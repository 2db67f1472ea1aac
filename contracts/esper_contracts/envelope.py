"""The versioned envelope every bus message travels in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from .base import Identifier, PositiveInt, StrictModel, new_id, utc_now

#: Bumped when a contract changes incompatibly; consumers reject envelopes from a newer major version.
SCHEMA_VERSION = 1

P = TypeVar("P", bound=BaseModel)


class Envelope(StrictModel, Generic[P]):
    """Metadata around one payload: who sent it, when, under which schema version and trace."""

    schema_version: PositiveInt = SCHEMA_VERSION
    message_id: Identifier = Field(default_factory=new_id)
    correlation_id: Identifier = Field(default_factory=new_id, description="Groups the messages of one exchange")
    trace_id: Identifier = Field(default_factory=new_id, description="End-to-end trace across services")
    producer: Identifier
    timestamp: AwareDatetime = Field(default_factory=utc_now)
    topic: Identifier
    payload_type: Identifier
    payload: P

    @field_validator("timestamp")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > SCHEMA_VERSION:
            raise ValueError(f"schema version {value} is newer than this build understands ({SCHEMA_VERSION})")
        return value
