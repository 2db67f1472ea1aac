"""Building blocks shared by every contract: the strict base model and constrained types."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def no_nul(value: str) -> str:
    """Refuse a string holding a NUL character: PostgreSQL cannot store one, so it is bad input, not a 500."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


# Non-empty, trimmed identifiers. Ids travel in topic keys and URLs, so whitespace is never part of one.
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256),
                       AfterValidator(no_nul)]
#: Free text that may be stored (descriptions, reasons, errors): anything but a NUL character.
Text = Annotated[str, AfterValidator(no_nul)]
UnitInterval = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]
#: The largest value a stored integer column holds everywhere (PostgreSQL ``integer``). Counts, sizes and
#: versions that land in such a column are bounded by it here, so an overflow is a 400 naming the field,
#: not a database error, and the OpenAPI schema says so.
MAX_INT32 = 2**31 - 1
NonNegativeInt32 = Annotated[int, Field(ge=0, le=MAX_INT32)]
PositiveInt32 = Annotated[int, Field(ge=1, le=MAX_INT32)]
Correlation = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]


class StrictModel(BaseModel):
    """Base of every contract: unknown fields are rejected and assignments are re-validated.

    Strictness is the point of the contracts: a producer that misspells a field gets an error at
    the producer, not a silently dropped value at the consumer.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, use_enum_values=False)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime (contracts never carry naive timestamps)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh random identifier (32 hex characters)."""
    return uuid.uuid4().hex
