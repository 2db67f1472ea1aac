"""What happens to one delivered message, decided the same way by every backend.

A backend hands over the raw bytes and how often the message was already redelivered; it gets back
what to do with it: acknowledge, negatively acknowledge (redeliver later) or move it to the dead-letter
topic. Keeping this in one function is what makes ``memory://`` and ``pulsar://`` behave alike.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from esper_contracts import Envelope

from .codec import TopicCodec
from .errors import MalformedMessageError
from .tracing import consume_span

logger = logging.getLogger("esper_oona")

#: A subscriber's callback. Returning acknowledges the message; raising negatively acknowledges it
#: (raising :class:`RejectMessage` dead-letters it at once).
Handler = Callable[[Envelope[Any]], None]

#: Dead-letter reasons, written into each dead letter's properties.
REASON_MALFORMED = "malformed"
REASON_OVERSIZED = "oversized"
REASON_REDELIVERY_LIMIT = "redelivery_limit"
REASON_REJECTED = "rejected"
#: Not a dead letter: the reason on the ACK of a message this consumer had already handled (sent twice).
REASON_DUPLICATE = "duplicate"

#: Message properties Oona writes on a dead letter (the payload is the original bytes, unchanged).
PROP_SOURCE_TOPIC = "oona-source-topic"
PROP_SUBSCRIPTION = "oona-subscription"
PROP_REASON = "oona-reason"
PROP_ERROR = "oona-error"
PROP_REDELIVERY_COUNT = "oona-redelivery-count"

#: Subscription that keeps every dead-letter topic's messages until someone reads them.
DEAD_LETTER_SUBSCRIPTION = "oona-dead-letters"

# Dead-letter error texts are for people; a pydantic report on a huge payload should not bloat the topic.
_MAX_ERROR_CHARS = 2000


class RejectMessage(Exception):
    """Raised by a handler for a message that can never be handled: it goes to the dead-letter topic at once.

    Redelivering such a message (a request that names something that does not exist, say) cannot help,
    so no redelivery is spent on it; the exception's text is recorded as the dead letter's error, with
    the reason ``rejected``.
    """


class Verdict(enum.Enum):
    """What the backend must do with a delivered message."""

    ACK = "ack"
    NACK = "nack"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A verdict with, for dead letters, the reason and error text to record."""

    verdict: Verdict
    reason: str = ""
    error: str = ""


_ACK = Outcome(Verdict.ACK)
_NACK = Outcome(Verdict.NACK)
_DUPLICATE = Outcome(Verdict.ACK, REASON_DUPLICATE)


class RecentIds:
    """The message ids a consumer handled lately, so that a message sent twice is handled once.

    A publisher that resends after an unconfirmed flush (``Bus.republish``: same envelope, same id) may
    deliver a message twice; the consumer acknowledges the repeat without running its handler. Bounded
    (oldest ids forgotten first) and per consumer: a repeat that lands on another consumer of the same
    subscription, or arrives after ``capacity`` newer messages, is handled again, so handlers stay idempotent
    where it matters (job workers check Urza's record; Tamiyo answers a repeated packet from its cache).
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()  # only the consumer's own thread reads or writes it

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def add(self, message_id: str) -> None:
        """Remember ``message_id`` as handled."""
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


def process(
    codec: TopicCodec,
    handler: Handler,
    data: bytes,
    redelivery_count: int,
    max_redeliveries: int,
    subscription: str,
    properties: Mapping[str, str] | None = None,
    max_bytes: int | None = None,
    seen: RecentIds | None = None,
) -> Outcome:
    """Decode ``data`` and run ``handler`` on it (in the message's trace); decide ack, nack or dead letter.

    Messages over ``max_bytes``, malformed bytes (not an envelope of the topic's model, or of a newer
    schema version than this build reads), and messages the handler rejects with :class:`RejectMessage`
    go straight to the dead-letter topic: redelivering them cannot help. A handler that raises anything
    else on a message already redelivered ``max_redeliveries`` times sends it to the dead-letter topic
    instead of asking for another try, so the handler runs at most ``max_redeliveries + 1`` times.
    A message whose id is in ``seen`` (this consumer handled it already) is acknowledged unhandled.
    """
    if max_bytes is not None and len(data) > max_bytes:
        error = f"{len(data)} bytes, over the bus limit of {max_bytes}"
        logger.warning("oona: oversized message on %s/%s goes to the dead-letter topic: %s", codec.topic,
                       subscription, error)
        return Outcome(Verdict.DEAD_LETTER, REASON_OVERSIZED, error)
    try:
        envelope = codec.decode(data)
    except MalformedMessageError as exc:
        logger.warning("oona: malformed message on %s/%s goes to the dead-letter topic: %s",
                       codec.topic, subscription, _truncate(str(exc), 300))
        return Outcome(Verdict.DEAD_LETTER, REASON_MALFORMED, _truncate(str(exc)))
    if seen is not None and envelope.message_id in seen:
        logger.info("oona: message %s on %s/%s was handled already; acknowledged again", envelope.message_id,
                    codec.topic, subscription)
        return _DUPLICATE
    try:
        with consume_span(envelope, properties, subscription):
            handler(envelope)
    except RejectMessage as exc:
        error = _truncate(f"{type(exc).__name__}: {exc}")
        logger.error("oona: handler of %s/%s rejected message %s; dead-lettered: %s",
                     codec.topic, subscription, envelope.message_id, error)
        return Outcome(Verdict.DEAD_LETTER, REASON_REJECTED, error)
    except Exception as exc:
        error = _truncate(f"{type(exc).__name__}: {exc}")
        if redelivery_count >= max_redeliveries:
            logger.error("oona: handler of %s/%s failed on message %s after %d redeliveries; dead-lettered: %s",
                         codec.topic, subscription, envelope.message_id, redelivery_count, error)
            return Outcome(Verdict.DEAD_LETTER, REASON_REDELIVERY_LIMIT, error)
        logger.warning("oona: handler of %s/%s failed on message %s (redelivery %d of %d); will retry",
                       codec.topic, subscription, envelope.message_id, redelivery_count, max_redeliveries,
                       exc_info=True)
        return _NACK
    if seen is not None:
        seen.add(envelope.message_id)
    return _ACK


def dead_letter_properties(topic: str, subscription: str, outcome: Outcome, redelivery_count: int) -> dict[str, str]:
    """The properties recorded with a dead letter: where it came from and why it was set aside."""
    return {
        PROP_SOURCE_TOPIC: topic,
        PROP_SUBSCRIPTION: subscription,
        PROP_REASON: outcome.reason,
        PROP_ERROR: outcome.error,
        PROP_REDELIVERY_COUNT: str(redelivery_count),
    }


def _truncate(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class SubscriptionStats:
    """Counters of one consumer, for metrics and tests. Updated only by the consumer's own thread."""

    delivered: int = 0
    acked: int = 0
    nacked: int = 0
    dead_lettered: int = 0
    duplicates: int = 0  # acknowledged without running the handler: handled before
    by_reason: dict[str, int] = field(default_factory=dict)

    def record(self, outcome: Outcome) -> None:
        """Count one processed delivery."""
        self.delivered += 1
        if outcome.verdict is Verdict.ACK:
            self.acked += 1
            self.duplicates += outcome.reason == REASON_DUPLICATE
        elif outcome.verdict is Verdict.NACK:
            self.nacked += 1
        else:
            self.dead_lettered += 1
            self.by_reason[outcome.reason] = self.by_reason.get(outcome.reason, 0) + 1
