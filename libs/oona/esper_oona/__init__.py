"""Oona: the typed message bus client (memory:// and pulsar://).

    bus = connect("pulsar://127.0.0.1:6650", producer_name="tamiyo")
    bus.subscribe(Topic.SYSTEM_STATE, "tamiyo", handle)   # handle(envelope: Envelope[SystemStatePacket])
    bus.publish(Topic.ADAPTATION_SIGNALS, AdaptationSignal(...), key=run_id, parent=envelope)
"""

from .bus import Bus, BusOptions, DeadLetter, Subscription
from .delivery import (
    DEAD_LETTER_SUBSCRIPTION,
    REASON_DUPLICATE,
    REASON_MALFORMED,
    REASON_OVERSIZED,
    REASON_REDELIVERY_LIMIT,
    REASON_REJECTED,
    Handler,
    RejectMessage,
    SubscriptionStats,
)
from .errors import (
    BrokerError,
    BusClosedError,
    MalformedMessageError,
    OonaError,
    PayloadValidationError,
    PublishError,
    PublishUnconfirmed,
    UnknownTopicError,
)
from .factory import BACKENDS, connect

__all__ = [
    "BACKENDS",
    "DEAD_LETTER_SUBSCRIPTION",
    "REASON_DUPLICATE",
    "REASON_MALFORMED",
    "REASON_OVERSIZED",
    "REASON_REDELIVERY_LIMIT",
    "REASON_REJECTED",
    "BrokerError",
    "Bus",
    "BusClosedError",
    "BusOptions",
    "DeadLetter",
    "Handler",
    "MalformedMessageError",
    "OonaError",
    "PayloadValidationError",
    "PublishError",
    "PublishUnconfirmed",
    "RejectMessage",
    "Subscription",
    "SubscriptionStats",
    "UnknownTopicError",
    "connect",
]
