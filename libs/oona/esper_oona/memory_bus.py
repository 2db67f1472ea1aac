"""The ``memory://`` backend: an in-process broker with Pulsar's delivery semantics, for standalone mode and tests.

Every ``memory://<name>`` URL in a process shares one broker (``memory://`` is the broker named ""), so
services running in one process talk to each other as they would through Pulsar. Messages travel as
the same envelope bytes, subscriptions are durable independent cursors, consumers of one subscription
share its messages, negative acknowledgements redeliver after a delay, and dead letters land on a
real ``<topic>.dlq`` topic.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .bus import Bus, BusOptions, DeadLetter, InitialPosition, Subscription
from .codec import TopicCodec, codec_for
from .delivery import (
    DEAD_LETTER_SUBSCRIPTION,
    Handler,
    Outcome,
    RecentIds,
    Verdict,
    dead_letter_properties,
    process,
)
from .errors import BusClosedError

#: Messages a memory topic keeps for subscriptions created with ``initial_position="earliest"``.
RETAINED_MESSAGES = 10_000


@dataclass(frozen=True, slots=True)
class _Record:
    data: bytes
    key: str | None
    properties: dict[str, str] | None


@dataclass(eq=False, slots=True)
class _Pending:
    """One message waiting in (or delivered from) one subscription, with its redelivery count there."""

    record: _Record
    redelivery_count: int = 0


class _SubscriptionState:
    """The broker side of one named subscription: its backlog, scheduled redeliveries and what is in flight."""

    def __init__(self, topic: str, name: str, ordered: bool) -> None:
        self.topic = topic
        self.name = name
        self.ordered = ordered
        self.cond = threading.Condition()
        self.ready: deque[_Pending] = deque()
        self.delayed: list[tuple[float, int, _Pending]] = []
        self.keys_in_flight: set[str | None] = set()
        self.consumers: list[MemorySubscription] = []
        self._sequence = itertools.count()

    def push(self, pending: _Pending) -> None:
        """Append a new message to the backlog and wake the consumers."""
        with self.cond:
            self.ready.append(pending)
            self.cond.notify_all()

    def take(self, consumer: MemorySubscription) -> _Pending | None:
        """Block until a message can go to ``consumer``; None once the consumer is stopping."""
        with self.cond:
            while True:
                if consumer.stopping:
                    return None
                wait_s = self._promote_due()
                pending = self._pop_eligible()
                if pending is not None:
                    consumer.in_flight.add(pending)
                    if self.ordered:
                        self.keys_in_flight.add(pending.record.key)
                    return pending
                self.cond.wait(wait_s)

    def settle(self, consumer: MemorySubscription, pending: _Pending, verdict: Verdict, nack_delay_ms: int) -> bool:
        """Apply a handler's verdict; False when the message was already taken back from ``consumer``."""
        with self.cond:
            if pending not in consumer.in_flight:
                return False
            consumer.in_flight.discard(pending)
            if self.ordered:
                self.keys_in_flight.discard(pending.record.key)
            if verdict is Verdict.NACK:
                due = time.monotonic() + nack_delay_ms / 1000
                retry = _Pending(pending.record, pending.redelivery_count + 1)
                heapq.heappush(self.delayed, (due, next(self._sequence), retry))
            self.cond.notify_all()
            return True

    def take_back(self, consumer: MemorySubscription) -> None:
        """Return everything ``consumer`` holds unacknowledged to the front of the backlog (it went away)."""
        with self.cond:
            held = sorted(consumer.in_flight, key=lambda p: p.redelivery_count)
            consumer.in_flight.clear()
            for pending in held:
                if self.ordered:
                    self.keys_in_flight.discard(pending.record.key)
                self.ready.appendleft(_Pending(pending.record, pending.redelivery_count + 1))
            if consumer in self.consumers:
                self.consumers.remove(consumer)
            self.cond.notify_all()

    def drain(self, max_messages: int, timeout_s: float) -> list[_Pending]:
        """Take (and thereby acknowledge) up to ``max_messages`` messages, waiting at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        taken: list[_Pending] = []
        with self.cond:
            while len(taken) < max_messages:
                self._promote_due()
                while self.ready and len(taken) < max_messages:
                    taken.append(self.ready.popleft())
                remaining = deadline - time.monotonic()
                if len(taken) >= max_messages or remaining <= 0:
                    break
                self.cond.wait(remaining)
        return taken

    def idle(self) -> bool:
        """True when nothing is queued, scheduled or in flight (subscriptions nobody consumes count as idle)."""
        with self.cond:
            if not self.consumers:
                return True
            return not self.ready and not self.delayed and not any(c.in_flight for c in self.consumers)

    def _promote_due(self) -> float | None:
        """Move redeliveries whose delay has passed to the front of the backlog; seconds until the next one."""
        if not self.delayed:
            return None
        now = time.monotonic()
        due: list[_Pending] = []
        while self.delayed and self.delayed[0][0] <= now:
            due.append(heapq.heappop(self.delayed)[2])
        # Redeliveries go ahead of new messages, as Pulsar's dispatcher replays them first.
        self.ready.extendleft(reversed(due))
        return max(self.delayed[0][0] - now, 0.0) if self.delayed else None

    def _pop_eligible(self) -> _Pending | None:
        if not self.ready:
            return None
        if not self.ordered:
            return self.ready.popleft()
        # Key order: a key's next message waits while an earlier one of that key is in flight.
        for index, pending in enumerate(self.ready):
            if pending.record.key not in self.keys_in_flight:
                del self.ready[index]
                return pending
        return None


class _MemoryTopic:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.subscriptions: dict[str, _SubscriptionState] = {}
        self.retained: deque[_Record] = deque(maxlen=RETAINED_MESSAGES)

    def append(self, record: _Record) -> None:
        with self.lock:
            self.retained.append(record)
            for state in self.subscriptions.values():
                state.push(_Pending(record))

    def subscription(self, name: str, ordered: bool, initial_position: InitialPosition) -> _SubscriptionState:
        with self.lock:
            state = self.subscriptions.get(name)
            if state is None:
                state = _SubscriptionState(self.name, name, ordered)
                if initial_position == "earliest":
                    state.ready.extend(_Pending(record) for record in self.retained)
                self.subscriptions[name] = state
            return state


@dataclass
class MemoryBroker:
    """The in-process broker behind one ``memory://<name>`` URL."""

    name: str
    _topics: dict[str, _MemoryTopic] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def topic(self, name: str) -> _MemoryTopic:
        """The topic called ``name`` (physical name), created on first use as Pulsar does."""
        topic = self._topics.get(name)
        if topic is None:
            with self._lock:
                topic = self._topics.setdefault(name, _MemoryTopic(name))
        return topic

    def wait_until_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until every consumed subscription has nothing queued, scheduled or in flight; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                states = [s for t in self._topics.values() for s in list(t.subscriptions.values())]
            if all(state.idle() for state in states):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)


_BROKERS: dict[str, MemoryBroker] = {}
_BROKERS_LOCK = threading.Lock()


def memory_broker(name: str = "") -> MemoryBroker:
    """The process-wide broker called ``name`` (``memory://<name>``), created on first use."""
    return memory_broker_created(name)[0]


def memory_broker_created(name: str = "") -> tuple[MemoryBroker, bool]:
    """The broker called ``name`` and whether this call created it."""
    with _BROKERS_LOCK:
        broker = _BROKERS.get(name)
        if broker is None:
            broker = _BROKERS[name] = MemoryBroker(name)
            return broker, True
        return broker, False


def drop_memory_broker(name: str = "") -> None:
    """Forget the broker called ``name`` and everything on it (buses still holding it keep their copy)."""
    with _BROKERS_LOCK:
        _BROKERS.pop(name, None)


class MemorySubscription(Subscription):
    """One consumer of a memory subscription, running its handler on its own thread."""

    def __init__(
        self,
        bus: MemoryBus,
        codec: TopicCodec,
        state: _SubscriptionState,
        handler: Handler,
        max_redeliveries: int,
        nack_delay_ms: int,
    ) -> None:
        super().__init__(codec.topic, state.name)
        self._bus = bus
        self._codec = codec
        self._state = state
        self._handler = handler
        self._max_redeliveries = max_redeliveries
        self._seen = RecentIds()  # a message sent twice (a resend after an unconfirmed flush) is handled once
        self._nack_delay_ms = nack_delay_ms
        self.stopping = False
        self.in_flight: set[_Pending] = set()
        self._closed = False
        with state.cond:
            state.consumers.append(self)
        self._thread = threading.Thread(target=self._run, name=f"oona-memory-{codec.topic}-{state.name}", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """True once ``close`` has run."""
        return self._closed

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop; a handler in flight gets ``timeout_s`` to finish, else its message goes back to the subscription."""
        if self._closed:
            return
        self._closed = True
        with self._state.cond:
            self.stopping = True
            self._state.cond.notify_all()
        if threading.current_thread() is self._thread:
            return  # closed by its own handler: _run detaches once that handler's message is settled
        self._thread.join(timeout_s)
        # Whatever is still held (a handler that overran the timeout) is redelivered to the next consumer;
        # the late handler's verdict is then ignored by settle().
        self._state.take_back(self)

    def _run(self) -> None:
        state = self._state
        while True:
            pending = state.take(self)
            if pending is None:
                state.take_back(self)
                return
            outcome = process(self._codec, self._handler, pending.record.data, pending.redelivery_count,
                              self._max_redeliveries, state.name, pending.record.properties,
                              self._bus.options.max_message_bytes, self._seen)
            if outcome.verdict is Verdict.DEAD_LETTER:
                self._bus._dead_letter(self._codec, state.name, pending, outcome)
            if state.settle(self, pending, outcome.verdict, self._nack_delay_ms):
                self.stats.record(outcome)


class MemoryBus(Bus):
    """A bus on an in-process broker (see the module docstring for its semantics)."""

    def __init__(self, broker: MemoryBroker, options: BusOptions, *, new_broker: bool = False) -> None:
        super().__init__(options)
        self.broker = broker
        self._new_broker = new_broker

    @property
    def keeps_earlier_messages(self) -> bool:
        """False when this connection created the broker: nothing published before can be on it."""
        return not self._new_broker

    def _send(self, codec: TopicCodec, data: bytes, key: str | None, properties: dict[str, str] | None = None) -> None:
        self.broker.topic(self.physical_topic(codec.topic)).append(_Record(data, key, properties))

    def _prepare(self, codec: TopicCodec) -> None:
        self.broker.topic(self.physical_topic(codec.topic))

    def flush(self, timeout_s: float = 30.0) -> None:
        """Nothing to wait for: a memory publish is delivered to every subscription before it returns."""
        self._check_open()

    def _subscribe(
        self,
        codec: TopicCodec,
        subscription: str,
        handler: Handler,
        max_redeliveries: int,
        nack_delay_ms: int,
        initial_position: InitialPosition,
    ) -> Subscription:
        topic = self.broker.topic(self.physical_topic(codec.topic))
        state = topic.subscription(subscription, codec.ordered_by_key, initial_position)
        return MemorySubscription(self, codec, state, handler, max_redeliveries, nack_delay_ms)

    def _dead_letter(self, codec: TopicCodec, subscription: str, pending: _Pending, outcome: Outcome) -> None:
        dlq = self._dead_letter_topic(codec)
        properties = dead_letter_properties(codec.topic, subscription, outcome, pending.redelivery_count)
        dlq.append(_Record(pending.record.data, pending.record.key, properties))

    def _dead_letter_topic(self, codec: TopicCodec) -> _MemoryTopic:
        topic = self.broker.topic(self.physical_topic(self.dead_letter_topic_of(codec.topic)))
        # The keeping subscription exists before the first dead letter arrives, so none is ever dropped.
        topic.subscription(DEAD_LETTER_SUBSCRIPTION, False, "earliest")
        return topic

    def read_dead_letters(self, topic: str, *, max_messages: int = 100, timeout_s: float = 1.0) -> list[DeadLetter]:
        """Take up to ``max_messages`` dead letters of ``topic``, waiting at most ``timeout_s``."""
        self._check_open()
        state = self._dead_letter_topic(codec_for(topic)).subscription(DEAD_LETTER_SUBSCRIPTION, False, "earliest")
        return [
            DeadLetter.from_properties(p.record.data, p.record.key, p.record.properties or {})
            for p in state.drain(max_messages, timeout_s)
        ]

    def wait_until_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until the broker's consumers have handled everything delivered so far; False on timeout.

        Memory-only: lets tests and standalone runs step deterministically ("publish, then wait").
        """
        if self._closed:
            raise BusClosedError(f"bus of producer {self.producer_name!r} is closed")
        return self.broker.wait_until_idle(timeout_s)

    def _close_backend(self, timeout_s: float) -> None:
        """Nothing to release: the broker outlives its clients, as a real one does."""
