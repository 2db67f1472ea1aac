"""The one interface every backend implements: publish typed payloads, subscribe handlers, read dead letters."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel

from esper_contracts import Envelope, dead_letter_topic

from .codec import TopicCodec, codec_for
from .delivery import (
    PROP_ERROR,
    PROP_REASON,
    PROP_REDELIVERY_COUNT,
    PROP_SOURCE_TOPIC,
    PROP_SUBSCRIPTION,
    Handler,
    SubscriptionStats,
)
from .errors import BusClosedError, MalformedMessageError, PayloadValidationError
from .tracing import publish_span

#: Largest message, envelope included: under Pulsar's default 5 MB limit, so the broker never refuses one that
#: the bus let through (a telemetry packet of 10,000 seeds is about 4 MB).
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20

InitialPosition = Literal["latest", "earliest"]
#: A key for every payload of ``publish_many``: one string for all, or a function of the payload.
KeyOrKeyFunction = str | Callable[[Any], str | None] | None


@dataclass(frozen=True)
class BusOptions:
    """Settings shared by every backend (a backend ignores the ones that mean nothing to it).

    ``topic_prefix`` is prepended to every physical topic name, dead-letter topics included, so tests
    and parallel environments can share one broker without seeing each other's messages; envelopes
    keep the catalogue name.
    """

    producer_name: str
    topic_prefix: str = ""
    max_redeliveries: int = 3
    nack_delay_ms: int = 1000
    # Pulsar-only settings, accepted everywhere so that changing the URL never changes the code.
    namespace: str = "public/default"
    batching_max_publish_delay_ms: int = 1
    batching_max_messages: int = 1000
    max_pending_messages: int = 10000
    send_timeout_ms: int = 30000
    operation_timeout_s: int = 30
    receiver_queue_size: int = 1000
    #: Larger publishes are refused; larger deliveries go to the dead-letter topic (reason ``oversized``).
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if not self.producer_name.strip():
            raise ValueError("producer_name must be a non-empty name (it is written into every envelope)")
        if self.max_redeliveries < 0:
            raise ValueError(f"max_redeliveries must be >= 0, got {self.max_redeliveries}")
        if self.nack_delay_ms < 0:
            raise ValueError(f"nack_delay_ms must be >= 0, got {self.nack_delay_ms}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")


@dataclass(frozen=True)
class DeadLetter:
    """A message set aside on a dead-letter topic: the original bytes and why they were set aside."""

    topic: str
    subscription: str
    reason: str
    error: str
    redelivery_count: int
    data: bytes
    key: str | None

    @classmethod
    def from_properties(cls, data: bytes, key: str | None, properties: Mapping[str, str]) -> DeadLetter:
        """Rebuild a dead letter from the bytes and properties it was stored with."""
        return cls(
            topic=properties.get(PROP_SOURCE_TOPIC, ""),
            subscription=properties.get(PROP_SUBSCRIPTION, ""),
            reason=properties.get(PROP_REASON, ""),
            error=properties.get(PROP_ERROR, ""),
            redelivery_count=int(properties.get(PROP_REDELIVERY_COUNT, "0") or 0),
            data=data,
            key=key or None,
        )

    def envelope(self) -> Envelope[Any]:
        """The typed envelope inside, for a dead letter set aside by its handler (raises when malformed)."""
        return codec_for(self.topic).decode(self.data)


class Subscription(abc.ABC):
    """One consumer attached to a named subscription; ``close`` detaches it cleanly."""

    def __init__(self, topic: str, name: str) -> None:
        self.topic = topic
        self.name = name
        self.stats = SubscriptionStats()

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once ``close`` has run."""

    @abc.abstractmethod
    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages; let a handler in flight finish (up to ``timeout_s``) and settle its message.

        Messages this consumer had not acknowledged go back to the subscription for its next consumer;
        nothing acknowledged is delivered again.
        """

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Bus(abc.ABC):
    """A typed message bus client. Obtain one with ``esper_oona.connect(url, producer_name=...)``."""

    def __init__(self, options: BusOptions) -> None:
        self.options = options
        self.producer_name = options.producer_name.strip()
        self._closing = False
        self._closed = False
        self._subscriptions: list[Subscription] = []

    @property
    def keeps_earlier_messages(self) -> bool:
        """Whether messages published before this client connected can still be on the bus.

        True for a broker (Pulsar keeps them); False for an in-process bus whose broker this connection
        created: whatever an earlier process published died with that process.
        """
        return True

    # --- publishing -----------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        key: str | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        parent: Envelope[Any] | None = None,
    ) -> Envelope[Any]:
        """Validate ``payload`` as ``topic``'s model, wrap it in an envelope and enqueue it for sending.

        Returns the envelope once the message is enqueued; ``flush`` waits until the broker has it.
        ``key`` orders messages on topics whose catalogue entry is ``ordered_by_key``. ``parent``
        threads the correlation and trace ids of the message being answered (explicit ids win);
        without either, the envelope joins the current trace (see ``esper_oona.tracing``). Raises
        UnknownTopicError or PayloadValidationError (an invalid or oversized payload) before anything is sent.
        """
        self._check_open()
        codec = codec_for(topic)
        if parent is not None:
            correlation_id = correlation_id if correlation_id is not None else parent.correlation_id
            trace_id = trace_id if trace_id is not None else parent.trace_id
        with publish_span(topic, trace_id) as (trace_id, properties):
            envelope, data = codec.encode(
                payload, producer=self.producer_name, correlation_id=correlation_id, trace_id=trace_id
            )
            self._check_size(codec, data)
            self._send(codec, data, key, properties or None)
        return envelope

    def publish_many(
        self,
        topic: str,
        payloads: Iterable[BaseModel | Mapping[str, Any]],
        *,
        key: KeyOrKeyFunction = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
    ) -> list[Envelope[Any]]:
        """Publish several payloads on one topic; every one is validated before the first is sent.

        ``key`` is one key for all or a function of each payload. All envelopes share the given
        correlation and trace ids (a fresh correlation id per message when not given; the current trace,
        else a fresh one per message, for the trace id).
        """
        self._check_open()
        codec = codec_for(topic)
        key_of = key if callable(key) else (lambda _payload: key)
        payloads = list(payloads)
        if not payloads:
            return []
        with publish_span(topic, trace_id, count=len(payloads)) as (trace_id, properties):
            encoded = []
            for payload in payloads:
                envelope, data = codec.encode(
                    payload, producer=self.producer_name, correlation_id=correlation_id, trace_id=trace_id
                )
                self._check_size(codec, data)
                encoded.append((envelope, data, key_of(envelope.payload)))
            for _envelope, data, message_key in encoded:
                self._send(codec, data, message_key, properties or None)
        return [envelope for envelope, _data, _key in encoded]

    def republish(self, envelope: Envelope[Any], *, key: str | None = None) -> Envelope[Any]:
        """Send ``envelope`` again exactly as it was (same message id): the safe resend after PublishUnconfirmed.

        A flush that timed out cannot say whether the broker has the message; resending a *new* envelope could
        deliver it twice, resending the same one cannot be handled twice by a consumer that saw the first copy
        (each consumer acknowledges an id it already handled without running its handler). Raises
        UnknownTopicError, or PayloadValidationError when the envelope is not one of its topic's.
        """
        self._check_open()
        codec = codec_for(envelope.topic)
        data = envelope.__pydantic_serializer__.to_json(envelope)
        try:
            codec.decode(data)  # the same checks a consumer makes: topic, payload type, payload
        except MalformedMessageError as exc:
            raise PayloadValidationError(codec.topic, codec.model, str(exc)) from exc
        self._check_size(codec, data)
        with publish_span(envelope.topic, envelope.trace_id) as (_trace_id, properties):
            self._send(codec, data, key, properties or None)
        return envelope

    def _check_size(self, codec: TopicCodec, data: bytes) -> None:
        if len(data) > self.options.max_message_bytes:
            raise PayloadValidationError(codec.topic, codec.model, f"the envelope is {len(data)} bytes, over the "
                                                                   f"bus limit of {self.options.max_message_bytes}")

    def publish_raw(
        self, topic: str, data: bytes, *, key: str | None = None, properties: Mapping[str, str] | None = None
    ) -> None:
        """Send ``data`` on catalogue topic ``topic`` unvalidated: a hook for tests and bridges.

        Consumers validate what arrives, so bytes that are not a valid envelope of the topic's model
        go to its dead-letter topic.
        """
        self._check_open()
        self._send(codec_for(topic), data, key, dict(properties) if properties else None)

    def prepare(self, *topics: str) -> None:
        """Open the publishing side of ``topics`` now rather than on their first publish.

        Services call it at start-up so that an unreachable broker or a typo in a topic name fails
        there, and the first message does not wait for a producer to be created.
        """
        self._check_open()
        for topic in topics:
            self._prepare(codec_for(topic))

    @abc.abstractmethod
    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every message published so far is persisted; PublishError if any was not."""

    # --- consuming ------------------------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        subscription: str,
        handler: Handler,
        *,
        max_redeliveries: int | None = None,
        nack_delay_ms: int | None = None,
        initial_position: InitialPosition = "latest",
    ) -> Subscription:
        """Attach ``handler`` to the named subscription of ``topic`` and start delivering to it.

        Each subscription name is an independent cursor that gets every message; consumers attached to
        the same name share its messages (key-ordered on ``ordered_by_key`` topics). The handler gets a
        typed ``Envelope``; returning acknowledges, raising negatively acknowledges (redelivered after
        ``nack_delay_ms``). After ``max_redeliveries`` failed redeliveries, or at once for malformed bytes,
        the message goes to ``<topic>.dlq``. A new subscription starts at the next message published
        (``latest``) or at the oldest message the broker still holds (``earliest``).
        """
        self._check_open()
        if self._closing:
            raise BusClosedError(f"bus of producer {self.producer_name!r} is closing")
        if not subscription.strip():
            raise ValueError("subscription name must not be empty")
        if initial_position not in ("latest", "earliest"):
            raise ValueError(f"initial_position must be 'latest' or 'earliest', got {initial_position!r}")
        limit = self.options.max_redeliveries if max_redeliveries is None else max_redeliveries
        delay = self.options.nack_delay_ms if nack_delay_ms is None else nack_delay_ms
        if limit < 0 or delay < 0:
            raise ValueError(f"max_redeliveries and nack_delay_ms must be >= 0, got {limit} and {delay}")
        sub = self._subscribe(codec_for(topic), subscription.strip(), handler, limit, delay, initial_position)
        self._subscriptions.append(sub)
        return sub

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The consumers this client opened and has not closed with the bus (their ``stats`` feed metrics)."""
        return tuple(self._subscriptions)

    @abc.abstractmethod
    def read_dead_letters(self, topic: str, *, max_messages: int = 100, timeout_s: float = 1.0) -> list[DeadLetter]:
        """Take up to ``max_messages`` dead letters of ``topic`` (waiting at most ``timeout_s`` for them).

        Dead letters are kept on ``<topic>.dlq`` by the ``oona-dead-letters`` subscription until read;
        reading acknowledges them, so each is returned once.
        """

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close`` has run."""
        return self._closed

    def close(self, timeout_s: float = 10.0) -> None:
        """Close every subscription (handlers in flight finish), flush what was published, release the backend.

        The bus keeps accepting publishes until its subscriptions are closed, so a handler finishing
        during shutdown can still send its reply; everything published is flushed before release.
        """
        if self._closing:
            return
        self._closing = True
        for sub in self._subscriptions:
            sub.close(timeout_s)
        self._subscriptions.clear()
        self._closed = True
        self._close_backend(timeout_s)

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def physical_topic(self, topic: str) -> str:
        """The name the backend uses for catalogue (or dead-letter) topic ``topic``."""
        return f"{self.options.topic_prefix}{topic}"

    @staticmethod
    def dead_letter_topic_of(topic: str) -> str:
        """The dead-letter topic of catalogue topic ``topic`` (``<topic>.dlq``), checked against the catalogue."""
        return dead_letter_topic(codec_for(topic).topic)

    def _check_open(self) -> None:
        if self._closed:
            raise BusClosedError(f"bus of producer {self.producer_name!r} is closed")

    # --- backend hooks --------------------------------------------------------------------------------

    @abc.abstractmethod
    def _send(self, codec: TopicCodec, data: bytes, key: str | None, properties: dict[str, str] | None = None) -> None:
        """Enqueue ``data`` (envelope bytes, or anything for ``publish_raw``) on ``codec.topic``."""

    @abc.abstractmethod
    def _prepare(self, codec: TopicCodec) -> None:
        """Create whatever publishing on ``codec.topic`` needs, so the first publish does not wait for it."""

    @abc.abstractmethod
    def _subscribe(
        self,
        codec: TopicCodec,
        subscription: str,
        handler: Handler,
        max_redeliveries: int,
        nack_delay_ms: int,
        initial_position: InitialPosition,
    ) -> Subscription:
        """Create and start one consumer."""

    @abc.abstractmethod
    def _close_backend(self, timeout_s: float) -> None:
        """Flush and release backend resources (subscriptions are already closed)."""
