"""Sends the outbox to the bus: right after each commit, and on a timer for whatever failed to go out."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from esper_contracts import utc_now
from esper_storage import Database

from .store import outbox

if TYPE_CHECKING:
    from esper_oona import Bus

log = logging.getLogger(__name__)


class OutboxDispatcher:
    """Publishes pending outbox rows in order and marks them sent once the bus has them.

    ``dispatch`` holds a lock, so one process never sends a row twice; on PostgreSQL the rows are
    also locked (``SKIP LOCKED``), so replicas share the work. A bus failure leaves rows pending for
    the next tick: delivery is at least once, and job ids are stable so a repeat is recognisable.
    """

    def __init__(self, db: Database, bus: Callable[[], Bus], *, batch: int = 200,
                 flush_timeout_s: float = 10.0) -> None:
        self.db = db
        self._bus = bus
        self.batch = batch
        self.flush_timeout_s = flush_timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failures = 0

    def dispatch(self) -> int:
        """Publish everything pending now; returns how many messages went out."""
        with self._lock:
            total = 0
            while True:
                sent, more = self._dispatch_batch()
                total += sent
                if not more:
                    return total

    def _dispatch_batch(self) -> tuple[int, bool]:
        from esper_oona import PayloadValidationError, UnknownTopicError

        bus = self._bus()
        with self.db.write() as conn:
            rows = outbox.pending(conn, self.batch)
            if not rows:
                return 0, False
            sent: list[int] = []
            failed = False
            for row in rows:
                try:
                    bus.publish(row.topic, json.loads(row.payload_json), key=row.message_key)
                    sent.append(row.id)
                except (PayloadValidationError, UnknownTopicError) as exc:
                    # Permanent: retrying cannot fix the payload. Set it aside so it does not block the queue.
                    log.error("outbox message can never be sent; dropping it",
                              extra={"outbox_id": row.id, "topic": row.topic, "error": str(exc)})
                    outbox.mark_dropped(conn, row.id, str(exc), utc_now())
                except Exception as exc:  # the bus is down or closed: keep the rest for the next tick
                    log.warning("outbox publish failed; will retry", extra={"outbox_id": row.id, "error": str(exc)})
                    outbox.mark_failed(conn, row.id, str(exc))
                    self.failures += 1
                    failed = True
                    break
            if sent:
                try:
                    bus.flush(self.flush_timeout_s)
                except Exception as exc:  # unknown which reached the broker: resend them all later
                    log.warning("bus flush failed; outbox rows stay pending", extra={"error": str(exc)})
                    self.failures += 1
                    return 0, False
                outbox.mark_published(conn, sent, utc_now())
                self.sent += len(sent)
        return len(sent), not failed and len(rows) == self.batch

    def kick(self) -> None:
        """Dispatch now, logging rather than raising: called after commits whose callers must not fail."""
        try:
            self.dispatch()
        except Exception:
            log.exception("outbox dispatch failed; the timer will retry")

    def wake(self) -> None:
        """Have the outbox sent soon, without waiting for the bus: called after a request's commit.

        With the background thread running, this only wakes it, so a stalled broker never holds a request
        (the write is committed; the outbox catches up). Before the thread starts it dispatches inline.
        """
        if self._thread is not None:
            self._wake.set()
        else:
            self.kick()

    def backlog(self) -> int:
        """Messages still waiting to be sent."""
        with self.db.read() as conn:
            return outbox.backlog(conn)

    def start(self, interval_s: float) -> None:
        """Retry pending messages every ``interval_s`` seconds in a background thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._wake.set()  # the first round at once: whatever an earlier run left pending

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(interval_s)
                self._wake.clear()
                if not self._stop.is_set():
                    self.kick()

        self._thread = threading.Thread(target=loop, name="urza-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer thread (a dispatch in progress finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
