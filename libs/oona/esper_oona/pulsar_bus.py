"""The ``pulsar://host:port`` backend, on the pulsar-client package.

Topics are ``persistent://<namespace>/<prefix><catalogue name>``. Producers batch (key-based batching on
``ordered_by_key`` topics, as Key_Shared requires) and send asynchronously: ``publish`` returns once the
message is enqueued, ``flush`` waits for the broker. Each subscription consumer runs its handler on its
own thread; subscriptions are Shared, or Key_Shared on ``ordered_by_key`` topics. Dead letters are
republished by Oona itself to ``<topic>.dlq`` (with the original bytes and key), because pulsar's
ConsumerDeadLetterPolicy cannot send a malformed message there without first retrying it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import pulsar

from .bus import Bus, BusOptions, DeadLetter, InitialPosition, Subscription
from .codec import TopicCodec
from .delivery import (
    DEAD_LETTER_SUBSCRIPTION,
    Handler,
    Outcome,
    RecentIds,
    Verdict,
    dead_letter_properties,
    process,
)
from .errors import BrokerError, BusClosedError, PublishError, PublishUnconfirmed

logger = logging.getLogger("esper_oona")

# How often an idle consumer thread looks at its stop flag: bounds how long close() waits for it.
_RECEIVE_POLL_MS = 100
_MAX_REPORTED_FAILURES = 20

_POSITIONS = {"latest": pulsar.InitialPosition.Latest, "earliest": pulsar.InitialPosition.Earliest}


def _client_logger() -> pulsar.ConsoleLogger:
    """The native client's logger, at the level Python logging sets for ``esper_oona.pulsar_client``.

    Not a bridge to Python logging: the client's bridge calls into Python, taking the GIL, for every
    statement the C++ library logs (filtered debug lines included), which cost ~15 µs per message.
    """
    level = logging.getLogger("esper_oona.pulsar_client").getEffectiveLevel()
    if level <= logging.DEBUG:
        return pulsar.ConsoleLogger(pulsar.LoggerLevel.Debug)
    if level <= logging.INFO:
        return pulsar.ConsoleLogger(pulsar.LoggerLevel.Info)
    if level <= logging.WARNING:
        return pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
    return pulsar.ConsoleLogger(pulsar.LoggerLevel.Error)


class PulsarSubscription(Subscription):
    """One consumer of a Shared (or Key_Shared) Pulsar subscription, with its receive loop on its own thread."""

    def __init__(
        self,
        bus: PulsarBus,
        codec: TopicCodec,
        name: str,
        handler: Handler,
        max_redeliveries: int,
        nack_delay_ms: int,
        initial_position: InitialPosition,
    ) -> None:
        super().__init__(codec.topic, name)
        self._bus = bus
        self._codec = codec
        self._handler = handler
        self._max_redeliveries = max_redeliveries
        self._seen = RecentIds()  # a message sent twice (a resend after an unconfirmed flush) is handled once
        self._stop = threading.Event()
        self._close_lock = threading.Lock()
        self._consumer_closed = False
        self._closed = False
        try:
            self._consumer = bus.client.subscribe(
                bus.full_topic(codec.topic),
                name,
                consumer_type=pulsar.ConsumerType.KeyShared if codec.ordered_by_key else pulsar.ConsumerType.Shared,
                receiver_queue_size=bus.options.receiver_queue_size,
                # Without batch-index acks a nack (or this consumer leaving) makes the broker redeliver the
                # whole batch, acknowledged messages included; the broker must enable them too.
                batch_index_ack_enabled=True,
                negative_ack_redelivery_delay_ms=nack_delay_ms,
                initial_position=_POSITIONS[initial_position],
                consumer_name=f"{bus.producer_name}-{os.urandom(4).hex()}",
            )
        except pulsar.PulsarException as exc:
            raise BrokerError(f"cannot subscribe {name!r} to {codec.topic!r} at {bus.service_url}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name=f"oona-pulsar-{codec.topic}-{name}", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """True once ``close`` has run."""
        return self._closed

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop; a handler in flight gets ``timeout_s`` to finish and settle its message.

        Closing the consumer flushes its pending acknowledgements; the broker then redelivers whatever it
        had not acknowledged (prefetched messages, a handler that overran) to the subscription's other or
        next consumers.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if threading.current_thread() is self._thread:
            return  # closed by its own handler: _run closes the consumer after settling that message
        self._thread.join(timeout_s)
        self._close_consumer()

    def _close_consumer(self) -> None:
        with self._close_lock:
            if self._consumer_closed:
                return
            self._consumer_closed = True
        try:
            self._consumer.close()
        except pulsar.PulsarException as exc:
            logger.warning("oona: closing consumer of %s/%s: %s", self.topic, self.name, exc)

    def _run(self) -> None:
        receive = self._consumer.receive
        try:
            while not self._stop.is_set():
                try:
                    message = receive(_RECEIVE_POLL_MS)
                except pulsar.Timeout:
                    continue
                except pulsar.AlreadyClosed:
                    return
                except pulsar.PulsarException as exc:
                    logger.warning("oona: receive on %s/%s failed: %s", self.topic, self.name, exc)
                    time.sleep(_RECEIVE_POLL_MS / 1000)
                    continue
                self._handle(message)
        finally:
            if self._stop.is_set():
                self._close_consumer()

    def _handle(self, message: pulsar.Message) -> None:
        consumer = self._consumer
        redelivery_count = message.redelivery_count()
        outcome = process(self._codec, self._handler, message.data(), redelivery_count, self._max_redeliveries,
                          self.name, message.properties(), self._bus.options.max_message_bytes, self._seen)
        try:
            if outcome.verdict is Verdict.ACK:
                consumer.acknowledge(message)
            elif outcome.verdict is Verdict.NACK:
                consumer.negative_acknowledge(message)
            else:
                try:
                    self._bus.dead_letter(self._codec, self.name, message, outcome, redelivery_count)
                except pulsar.PulsarException as exc:
                    # Not set aside, so not acknowledged either: it comes back and the move is retried.
                    logger.error("oona: could not dead-letter a message of %s/%s: %s", self.topic, self.name, exc)
                    consumer.negative_acknowledge(message)
                    return
                consumer.acknowledge(message)
        except pulsar.PulsarException as exc:
            # Typically the consumer was closed under a handler that overran close(): the broker
            # redelivers this message to another consumer.
            logger.info("oona: could not settle a message of %s/%s (%s); it will be redelivered",
                        self.topic, self.name, exc)
            return
        self.stats.record(outcome)


class PulsarBus(Bus):
    """A bus on an Apache Pulsar cluster."""

    def __init__(self, service_url: str, options: BusOptions) -> None:
        super().__init__(options)
        self.service_url = service_url
        self.client = pulsar.Client(
            service_url,
            operation_timeout_seconds=options.operation_timeout_s,
            logger=_client_logger(),
        )
        self._producers: dict[str, pulsar.Producer] = {}
        self._dead_letter_producers: dict[str, pulsar.Producer] = {}
        self._lock = threading.Lock()
        # Taken by the client's I/O thread in _on_sent: never held across a blocking broker call.
        self._failure_lock = threading.Lock()
        self._failures: list[str] = []
        self._failure_count = 0
        self._unconfirmed = 0  # send timeouts: the broker may have persisted these, or not

    def full_topic(self, topic: str) -> str:
        """The fully qualified Pulsar topic of catalogue (or dead-letter) topic ``topic``."""
        return f"persistent://{self.options.namespace}/{self.physical_topic(topic)}"

    # --- publishing -----------------------------------------------------------------------------------

    def _producer(self, codec: TopicCodec) -> pulsar.Producer:
        producer = self._producers.get(codec.topic)
        if producer is None:
            with self._lock:
                producer = self._producers.get(codec.topic)
                if producer is None:
                    producer = self._producers[codec.topic] = self._create_producer(codec)
        return producer

    def _create_producer(self, codec: TopicCodec) -> pulsar.Producer:
        # No producer_name: Pulsar requires names unique per topic, and several processes of one service
        # publish on the same topics. The envelope carries the service's name instead.
        options = self.options
        try:
            return self.client.create_producer(
                self.full_topic(codec.topic),
                batching_enabled=True,
                # Key_Shared dispatches a whole batch by its first key, so ordered topics batch per key.
                batching_type=pulsar.BatchingType.KeyBased if codec.ordered_by_key else pulsar.BatchingType.Default,
                batching_max_messages=options.batching_max_messages,
                batching_max_publish_delay_ms=options.batching_max_publish_delay_ms,
                max_pending_messages=options.max_pending_messages,
                block_if_queue_full=True,
                send_timeout_millis=options.send_timeout_ms,
            )
        except pulsar.PulsarException as exc:
            raise BrokerError(f"cannot publish on {codec.topic!r} at {self.service_url}: {exc}") from exc

    def _prepare(self, codec: TopicCodec) -> None:
        self._producer(codec)

    def _send(self, codec: TopicCodec, data: bytes, key: str | None, properties: dict[str, str] | None = None) -> None:
        try:
            self._producer(codec).send_async(data, self._on_sent, properties=properties, partition_key=key)
        except pulsar.AlreadyClosed as exc:
            # A publish racing close() on another thread.
            raise BusClosedError(f"bus of producer {self.producer_name!r} is closed") from exc
        except pulsar.PulsarException as exc:
            raise PublishError(f"could not enqueue a message on {codec.topic!r}: {exc}") from exc

    def _on_sent(self, result: Any, _message_id: Any) -> None:
        # Runs on the client's I/O thread for every message: keep the success path to one comparison.
        if result == pulsar.Result.Ok:
            return
        if result == pulsar.Result.Timeout:  # no acknowledgement in time: not known to be lost
            with self._failure_lock:
                self._unconfirmed += 1
            logger.warning("oona: a message was not acknowledged within the send timeout; it may be on the broker")
            return
        with self._failure_lock:
            self._failure_count += 1
            if len(self._failures) < _MAX_REPORTED_FAILURES:
                self._failures.append(str(result))
        logger.error("oona: a message was not persisted by the broker: %s", result)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every published message is persisted (bounded by ``send_timeout_ms``, not ``timeout_s``).

        Raises PublishError naming the failures since the last flush.
        """
        self._check_open()
        self._flush_producers()

    def _flush_producers(self) -> None:
        for producer in list(self._producers.values()):
            producer.flush()
        with self._failure_lock:
            failures, count, unconfirmed = self._failures, self._failure_count, self._unconfirmed
            self._failures, self._failure_count, self._unconfirmed = [], 0, 0
        if count:
            also = f"; {unconfirmed} more unconfirmed" if unconfirmed else ""
            raise PublishError(f"{count} message(s) were refused by the broker: {', '.join(failures)}{also}")
        if unconfirmed:
            raise PublishUnconfirmed(
                f"{unconfirmed} message(s) were not acknowledged within {self.options.send_timeout_ms} ms: they "
                f"may or may not be on the broker (resend each with Bus.republish: a consumer skips an id it handled)",
                unconfirmed)

    # --- consuming ------------------------------------------------------------------------------------

    def _subscribe(
        self,
        codec: TopicCodec,
        subscription: str,
        handler: Handler,
        max_redeliveries: int,
        nack_delay_ms: int,
        initial_position: InitialPosition,
    ) -> Subscription:
        return PulsarSubscription(self, codec, subscription, handler, max_redeliveries, nack_delay_ms,
                                  initial_position)

    def dead_letter(
        self, codec: TopicCodec, subscription: str, message: pulsar.Message, outcome: Outcome, redelivery_count: int
    ) -> None:
        """Republish ``message`` unchanged to the dead-letter topic and wait until the broker has it."""
        properties = dead_letter_properties(codec.topic, subscription, outcome, redelivery_count)
        key = message.partition_key() or None
        self._dead_letter_producer(codec).send(message.data(), properties=properties, partition_key=key)

    def _dead_letter_producer(self, codec: TopicCodec) -> pulsar.Producer:
        producer = self._dead_letter_producers.get(codec.topic)
        if producer is None:
            with self._lock:
                producer = self._dead_letter_producers.get(codec.topic)
                if producer is None:
                    dlq = self.full_topic(self.dead_letter_topic_of(codec.topic))
                    # The keeping subscription must exist before the first dead letter: a topic without
                    # subscriptions does not keep its messages.
                    self.client.subscribe(dlq, DEAD_LETTER_SUBSCRIPTION, consumer_type=pulsar.ConsumerType.Shared,
                                          initial_position=pulsar.InitialPosition.Earliest).close()
                    producer = self.client.create_producer(dlq, send_timeout_millis=self.options.send_timeout_ms)
                    self._dead_letter_producers[codec.topic] = producer
        return producer

    def read_dead_letters(self, topic: str, *, max_messages: int = 100, timeout_s: float = 1.0) -> list[DeadLetter]:
        """Take up to ``max_messages`` dead letters of ``topic``, waiting at most ``timeout_s``."""
        self._check_open()
        dlq = self.full_topic(self.dead_letter_topic_of(topic))
        try:
            consumer = self.client.subscribe(dlq, DEAD_LETTER_SUBSCRIPTION, consumer_type=pulsar.ConsumerType.Shared,
                                             initial_position=pulsar.InitialPosition.Earliest)
        except pulsar.PulsarException as exc:
            raise BrokerError(f"cannot read the dead letters of {topic!r} at {self.service_url}: {exc}") from exc
        letters: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(letters) < max_messages:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                try:
                    message = consumer.receive(remaining_ms)
                except pulsar.Timeout:
                    break
                letters.append(DeadLetter.from_properties(message.data(), message.partition_key() or None,
                                                          message.properties()))
                consumer.acknowledge(message)
        finally:
            consumer.close()
        return letters

    # --- lifecycle ------------------------------------------------------------------------------------

    def _close_backend(self, timeout_s: float) -> None:
        try:
            self._flush_producers()
        finally:
            for producer in [*self._producers.values(), *self._dead_letter_producers.values()]:
                try:
                    producer.close()
                except pulsar.PulsarException as exc:
                    logger.warning("oona: closing producer of %s: %s", producer.topic(), exc)
            self._producers.clear()
            self._dead_letter_producers.clear()
            self.client.close()

