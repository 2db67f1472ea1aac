"""Urza's domain errors; the API maps each to an HTTP status, the bus consumers to ack or retry."""

from __future__ import annotations

from .shapes import BlueprintRejected
from .transitions import IllegalTransition


class UrzaError(Exception):
    """Base of Urza's own errors."""


class NotFound(UrzaError, LookupError):
    """The named blueprint, artifact or binary is not stored here (HTTP 404)."""


class Conflict(UrzaError):
    """The request contradicts what is stored: immutable data would change (HTTP 409)."""


class BadRequest(UrzaError, ValueError):
    """The request is well-formed JSON but wrong for this resource (HTTP 400)."""


__all__ = ["BadRequest", "BlueprintRejected", "Conflict", "IllegalTransition", "NotFound", "UrzaError"]
