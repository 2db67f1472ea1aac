"""The in-process broker's own guarantees, beyond the shared conformance suite."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any

import pytest

from esper_contracts import Envelope, SeedStage, SeedTelemetry, SystemStatePacket
from esper_oona import connect
from esper_oona.memory_bus import MemoryBus, drop_memory_broker, memory_broker
from esper_oona.testing import Recorder, wait_for

TELEMETRY = "telemetry.seed.health"
STATE = "telemetry.system.state"


def telemetry(epoch: int) -> SeedTelemetry:
    return SeedTelemetry(layer_id="l", seed_index=0, epoch=epoch, stage=SeedStage.TRAINING)


@pytest.fixture
def url() -> Any:
    name = f"unit-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    drop_memory_broker(name)


def test_one_url_is_one_broker_and_other_names_are_isolated(url: str) -> None:
    publisher, same, other = (connect(u, producer_name="p") for u in (url, url, url + "-other"))
    here, elsewhere = Recorder(), Recorder()
    same.subscribe(TELEMETRY, "s", here)
    other.subscribe(TELEMETRY, "s", elsewhere)
    publisher.publish(TELEMETRY, telemetry(1))
    here.wait_received(1)
    time.sleep(0.05)
    assert elsewhere.received == []
    assert isinstance(publisher, MemoryBus) and publisher.broker is memory_broker(url.removeprefix("memory://"))
    for bus in (publisher, same, other):
        bus.close()


def test_only_the_connection_that_created_a_broker_says_earlier_messages_are_gone(url: str) -> None:
    first, second = connect(url, producer_name="a"), connect(url, producer_name="b")
    assert not first.keeps_earlier_messages  # a new in-process broker: nothing from before can be on it
    assert second.keeps_earlier_messages  # the broker was there already, with whatever it holds
    first.close()
    second.close()


def test_redelivery_limit_counts_exactly_and_waits_the_nack_delay(url: str) -> None:
    bus = connect(url, producer_name="p", nack_delay_ms=150)
    times: list[float] = []
    recorder = Recorder(fail=lambda _e: times.append(time.monotonic()) is None)
    bus.subscribe(TELEMETRY, "s", recorder, max_redeliveries=2)
    bus.publish(TELEMETRY, telemetry(1))
    [letter] = bus.read_dead_letters(TELEMETRY, max_messages=1, timeout_s=5)
    assert letter.redelivery_count == 2
    assert len(recorder.attempts) == 3
    assert all(later - earlier >= 0.14 for earlier, later in itertools.pairwise(times))
    bus.close()


def test_zero_redeliveries_dead_letters_on_first_failure(url: str) -> None:
    bus = connect(url, producer_name="p")
    recorder = Recorder(fail=lambda _e: True)
    bus.subscribe(TELEMETRY, "s", recorder, max_redeliveries=0)
    bus.publish(TELEMETRY, telemetry(1))
    assert len(bus.read_dead_letters(TELEMETRY, max_messages=1, timeout_s=5)) == 1
    assert len(recorder.attempts) == 1
    bus.close()


def test_key_order_holds_across_several_consumers(url: str) -> None:
    bus = connect(url, producer_name="p")
    lock = threading.Lock()
    busy: set[str] = set()
    overlaps: list[str] = []
    seen: list[tuple[str, int]] = []

    def handler(envelope: Envelope[Any]) -> None:
        run = envelope.payload.run_id
        with lock:
            if run in busy:
                overlaps.append(run)
            busy.add(run)
        time.sleep(0.001)
        with lock:
            busy.discard(run)
            seen.append((run, envelope.payload.epoch))

    for _ in range(3):
        bus.subscribe(STATE, "workers", handler)
    runs = ["a", "b", "c", "d", "e"]
    for epoch in range(30):
        for run in runs:
            bus.publish(STATE, SystemStatePacket(run_id=run, epoch=epoch, train_loss=1, val_loss=1), key=run)
    assert bus.wait_until_idle(10)
    assert overlaps == []
    for run in runs:
        assert [epoch for r, epoch in seen if r == run] == list(range(30))
    bus.close()


def test_a_handler_may_close_its_own_subscription(url: str) -> None:
    bus = connect(url, producer_name="p")
    holder: dict[str, Any] = {}
    first = Recorder(work=lambda e: holder["sub"].close() if e.payload.epoch == 0 else None)
    holder["sub"] = bus.subscribe(TELEMETRY, "s", first)
    bus.publish_many(TELEMETRY, [telemetry(i) for i in range(3)])
    wait_for(lambda: holder["sub"].stats.acked == 1)
    second = Recorder()
    bus.subscribe(TELEMETRY, "s", second)
    assert sorted(e.payload.epoch for e in second.wait_received(2)) == [1, 2]
    assert [e.payload.epoch for e in first.received] == [0]
    bus.close()


def test_wait_until_idle_covers_scheduled_redeliveries(url: str) -> None:
    bus = connect(url, producer_name="p", nack_delay_ms=50)
    failed: set[str] = set()
    recorder = Recorder(fail=lambda e: e.message_id not in failed and not failed.add(e.message_id))
    bus.subscribe(TELEMETRY, "s", recorder)
    bus.publish_many(TELEMETRY, [telemetry(i) for i in range(20)])
    assert bus.wait_until_idle(5)
    assert len(recorder.received) == 20 and len(recorder.attempts) == 40
    bus.close()


def test_dead_letters_live_on_the_prefixed_dead_letter_topic(url: str) -> None:
    bus = connect(url, producer_name="p", topic_prefix="x-")
    bus.subscribe(TELEMETRY, "s", Recorder())
    bus.publish_raw(TELEMETRY, b"junk")
    assert bus.wait_until_idle(5)
    topics = set(memory_broker(url.removeprefix("memory://"))._topics)
    assert topics == {"x-telemetry.seed.health", "x-telemetry.seed.health.dlq"}
    bus.close()
