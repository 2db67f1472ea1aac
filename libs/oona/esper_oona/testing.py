"""Helpers for tests of code that uses the bus: a fresh memory bus, a recording handler, a topic collector
and a polling wait.

The workspace's root ``conftest.py`` serves :func:`memory_bus` as the ``memory_bus_url`` fixture.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from esper_contracts import Envelope

from .bus import Bus
from .memory_bus import drop_memory_broker


@contextmanager
def memory_bus(prefix: str = "test") -> Iterator[str]:
    """A ``memory://`` URL naming a broker of its own, which is dropped (with all its messages) on exit."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    try:
        yield f"memory://{name}"
    finally:
        drop_memory_broker(name)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition", *,
             poll_s: float = 0.005) -> None:
    """Poll ``predicate`` every ``poll_s`` until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


class Recorder:
    """A handler that records every envelope it is given; ``fail`` decides which ones it raises on.

    ``attempts`` holds every delivery (redeliveries included), ``received`` only the ones it acknowledged.
    """

    def __init__(self, fail: Callable[[Envelope[Any]], bool] | None = None,
                 work: Callable[[Envelope[Any]], None] | None = None) -> None:
        self._fail = fail
        self._work = work
        self._lock = threading.Lock()
        self.attempts: list[Envelope[Any]] = []
        self.received: list[Envelope[Any]] = []

    def __call__(self, envelope: Envelope[Any]) -> None:
        with self._lock:
            self.attempts.append(envelope)
        if self._work is not None:
            self._work(envelope)
        if self._fail is not None and self._fail(envelope):
            raise RuntimeError(f"recorder refuses message {envelope.message_id}")
        with self._lock:
            self.received.append(envelope)

    @property
    def payloads(self) -> list[Any]:
        """Payloads of the acknowledged envelopes, in arrival order."""
        with self._lock:
            return [envelope.payload for envelope in self.received]

    def wait_received(self, count: int, timeout_s: float = 10.0) -> list[Envelope[Any]]:
        """Wait until at least ``count`` envelopes were acknowledged; returns a snapshot of them."""
        wait_for(lambda: len(self.received) >= count, timeout_s, f"{count} messages (got {len(self.received)})")
        with self._lock:
            return list(self.received)

    def wait_attempts(self, count: int, timeout_s: float = 10.0) -> list[Envelope[Any]]:
        """Wait until the handler ran at least ``count`` times; returns a snapshot of every attempt."""
        wait_for(lambda: len(self.attempts) >= count, timeout_s, f"{count} attempts (got {len(self.attempts)})")
        with self._lock:
            return list(self.attempts)


class Collector(Recorder):
    """Everything published on one topic, from the first message on (an ``earliest`` subscription of its own)."""

    def __init__(self, bus: Bus, topic: str) -> None:
        super().__init__()
        bus.subscribe(topic, f"test-{uuid.uuid4().hex[:8]}", self, initial_position="earliest")

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Any]:
        """Wait until at least ``count`` messages arrived (or ``timeout_s`` passed: no error); return the payloads."""
        deadline = time.monotonic() + timeout_s
        while len(self.payloads) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.payloads
