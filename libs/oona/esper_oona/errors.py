"""The errors Oona raises. Every one is an OonaError, so a service can catch the bus's failures in one place."""

from __future__ import annotations

from esper_contracts import UnknownTopicError as ContractUnknownTopicError


class OonaError(Exception):
    """Base of every error raised by Oona."""


class UnknownTopicError(OonaError, ContractUnknownTopicError):
    """A topic name that is not in the catalogue (also an ``esper_contracts.UnknownTopicError``)."""


class PayloadValidationError(OonaError, ValueError):
    """A payload is not a valid instance of its topic's model; raised before anything is sent.

    ``topic`` and ``model`` name what was expected; a pydantic failure is chained as ``__cause__``.
    """

    def __init__(self, topic: str, model: type, detail: str) -> None:
        super().__init__(f"invalid payload for topic {topic!r} (expects {model.__name__}): {detail}")
        self.topic = topic
        self.model = model
        self.detail = detail


class MalformedMessageError(OonaError):
    """Bytes that arrived on a topic and are not a valid envelope of that topic's model."""


class BrokerError(OonaError):
    """The broker could not be reached, or refused to create a producer or consumer."""


class PublishError(OonaError):
    """Messages that were accepted by ``publish`` but that the broker did not persist (reported by ``flush``)."""


class PublishUnconfirmed(PublishError):
    """Messages whose acknowledgement did not arrive in time: they may or may not be on the broker.

    Only this is known, so ``flush`` says so rather than calling them lost. A caller that sends them again
    may deliver them twice; consumers recognise a repeat by its stable id (job id, report id, command id).
    """

    def __init__(self, message: str, unconfirmed: int) -> None:
        super().__init__(message)
        self.unconfirmed = unconfirmed


class BusClosedError(OonaError):
    """An operation on a bus (or subscription) that has been closed."""
