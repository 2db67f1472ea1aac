"""Envelope encoding and decoding for one topic: the only place that touches the wire format.

The wire format is the envelope's JSON bytes. Publishing costs one serialisation of the payload, one
validation of those bytes (so what is sent is exactly what a consumer will accept) and one serialisation
of the envelope; consuming costs one validation of the envelope with its typed payload.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from esper_contracts import Envelope, topic_spec
from esper_contracts import UnknownTopicError as ContractUnknownTopicError

from .errors import MalformedMessageError, PayloadValidationError, UnknownTopicError


def _new_id() -> str:
    # Same shape as esper_contracts.new_id (32 hex characters) at a fifth of uuid4's cost: ids are minted
    # three times per published message.
    return os.urandom(16).hex()


@dataclass(frozen=True)
class TopicCodec:
    """Encodes payloads into envelope bytes for one catalogue topic and decodes them back, typed."""

    topic: str
    model: type[BaseModel]
    envelope_type: type[Envelope[Any]]
    ordered_by_key: bool

    @property
    def payload_type(self) -> str:
        """The ``payload_type`` written into every envelope of this topic (the model's class name)."""
        return self.model.__name__

    def validate_payload(self, payload: BaseModel | Mapping[str, Any]) -> BaseModel:
        """A fully validated instance of the topic's model, or PayloadValidationError naming topic and model.

        Instances are re-validated from their JSON form because ``model_construct`` and attribute
        mutation with validation disabled can hold values the model would refuse.
        """
        model = self.model
        if isinstance(payload, model):
            try:
                raw = payload.model_dump_json(warnings=False)
            except PydanticSerializationError as exc:
                raise PayloadValidationError(self.topic, model, f"cannot serialise: {exc}") from exc
            try:
                return model.model_validate_json(raw)
            except ValidationError as exc:
                raise PayloadValidationError(self.topic, model, str(exc)) from exc
        if isinstance(payload, BaseModel):
            raise PayloadValidationError(self.topic, model, f"got a {type(payload).__name__}")
        if isinstance(payload, Mapping):
            try:
                return model.model_validate(payload)
            except ValidationError as exc:
                raise PayloadValidationError(self.topic, model, str(exc)) from exc
        raise PayloadValidationError(self.topic, model, f"got a {type(payload).__name__}, not a model or a mapping")

    def encode(
        self,
        payload: BaseModel | Mapping[str, Any],
        *,
        producer: str,
        correlation_id: str | None = None,
        trace_id: str | None = None,
    ) -> tuple[Envelope[Any], bytes]:
        """Validate ``payload`` and wrap it in a fresh envelope; returns the envelope and its wire bytes."""
        validated = self.validate_payload(payload)
        try:
            envelope = self.envelope_type(
                message_id=_new_id(),
                correlation_id=correlation_id if correlation_id is not None else _new_id(),
                trace_id=trace_id if trace_id is not None else _new_id(),
                producer=producer,
                timestamp=datetime.now(UTC),
                topic=self.topic,
                payload_type=self.model.__name__,
                payload=validated,
            )
        except ValidationError as exc:
            # Only caller-supplied header fields (correlation or trace id) can fail here.
            raise PayloadValidationError(self.topic, self.model, f"invalid envelope field: {exc}") from exc
        return envelope, envelope.__pydantic_serializer__.to_json(envelope)

    def decode(self, data: bytes) -> Envelope[Any]:
        """The typed envelope in ``data``; MalformedMessageError when it is not one of this topic's."""
        try:
            envelope = self.envelope_type.model_validate_json(data)
        except ValidationError as exc:
            raise MalformedMessageError(f"not a valid {self.payload_type} envelope: {exc}") from exc
        if envelope.topic != self.topic:
            raise MalformedMessageError(f"envelope names topic {envelope.topic!r}, but arrived on {self.topic!r}")
        if envelope.payload_type != self.model.__name__:
            raise MalformedMessageError(
                f"envelope names payload type {envelope.payload_type!r}, topic {self.topic!r} carries "
                f"{self.model.__name__}"
            )
        return envelope


@cache
def codec_for(topic: str) -> TopicCodec:
    """The codec of catalogue topic ``topic``; UnknownTopicError (an OonaError) for any other name."""
    try:
        spec = topic_spec(topic)
    except ContractUnknownTopicError:
        raise UnknownTopicError(topic) from None
    envelope_type: type[Envelope[Any]] = Envelope[spec.payload]  # type: ignore[name-defined]
    return TopicCodec(topic, spec.payload, envelope_type, spec.ordered_by_key)
