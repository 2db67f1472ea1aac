"""One behaviour, every backend: the bus contract that memory:// and pulsar:// must both honour.

Each test gets buses sharing a fresh topic prefix, so tests never see each other's messages even on a
shared Pulsar broker. Timings are short (nack delay 100 ms) and waits poll, so the suite stays fast.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from esper_contracts import (
    AdaptationSignal,
    CommandType,
    Envelope,
    KasminaControlCommand,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    UnknownTopicError,
)
from esper_oona import (
    REASON_MALFORMED,
    REASON_REDELIVERY_LIMIT,
    REASON_REJECTED,
    BusClosedError,
    OonaError,
    PayloadValidationError,
    RejectMessage,
)
from esper_oona.testing import Recorder, wait_for

TELEMETRY = "telemetry.seed.health"
STATE = "telemetry.system.state"  # ordered_by_key in the catalogue


def telemetry(epoch: int, layer: str = "model.layers.0.mlp") -> SeedTelemetry:
    """A small valid SeedTelemetry; its epoch identifies it in assertions."""
    return SeedTelemetry(layer_id=layer, seed_index=0, epoch=epoch, stage=SeedStage.TRAINING, alpha=0.5)


def epochs(envelopes: list[Envelope[Any]]) -> list[int]:
    return [envelope.payload.epoch for envelope in envelopes]


def test_round_trip_delivers_the_typed_payload(make_bus: Any) -> None:
    bus = make_bus()
    recorder = Recorder()
    bus.subscribe(TELEMETRY, "round-trip", recorder)
    sent = telemetry(3)
    bus.publish(TELEMETRY, sent)
    bus.flush()

    [envelope] = recorder.wait_received(1)
    assert isinstance(envelope.payload, SeedTelemetry)
    assert envelope.payload == sent
    assert envelope.topic == TELEMETRY
    assert envelope.payload_type == "SeedTelemetry"


def test_envelope_metadata_survives_the_trip(make_bus: Any) -> None:
    publisher, consumer = make_bus("kasmina"), make_bus("tamiyo")
    recorder = Recorder()
    consumer.subscribe(TELEMETRY, "metadata", recorder)
    before = time.time()
    first = publisher.publish(TELEMETRY, telemetry(1), correlation_id="corr-1", trace_id="trace-1")
    answer = publisher.publish(TELEMETRY, telemetry(2), parent=first)
    plain = publisher.publish(TELEMETRY, telemetry(3))
    publisher.flush()

    received = {e.message_id: e for e in recorder.wait_received(3)}
    assert set(received) == {first.message_id, answer.message_id, plain.message_id}
    got = received[first.message_id]
    assert (got.correlation_id, got.trace_id, got.producer) == ("corr-1", "trace-1", "kasmina")
    assert got.timestamp == first.timestamp
    assert got.timestamp.utcoffset() == timedelta(0)
    assert before - 1 <= got.timestamp.timestamp() <= time.time() + 1
    threaded = received[answer.message_id]
    assert (threaded.correlation_id, threaded.trace_id) == ("corr-1", "trace-1")
    fresh = received[plain.message_id]
    assert fresh.correlation_id not in {"corr-1", first.message_id} and fresh.trace_id != "trace-1"
    assert len({first.message_id, answer.message_id, plain.message_id}) == 3


def test_acknowledged_messages_are_not_delivered_again(make_bus: Any) -> None:
    bus = make_bus()
    first = Recorder()
    sub = bus.subscribe(TELEMETRY, "acks", first)
    for epoch in range(5):
        bus.publish(TELEMETRY, telemetry(epoch))
    bus.flush()
    first.wait_received(5)
    sub.close()
    assert sub.stats.acked == 5

    second = Recorder()
    bus.subscribe(TELEMETRY, "acks", second)
    bus.publish(TELEMETRY, telemetry(99))
    bus.flush()
    second.wait_received(1)
    time.sleep(0.3)  # a redelivery of an acknowledged message would arrive in this window
    assert epochs(second.received) == [99]


def test_a_message_sent_again_with_republish_is_handled_once(make_bus: Any) -> None:
    bus = make_bus()
    recorder = Recorder()
    sub = bus.subscribe(TELEMETRY, "resend", recorder)
    first = bus.publish(TELEMETRY, telemetry(1))
    bus.flush()
    recorder.wait_received(1)
    assert bus.republish(first) is first  # the resend after an unconfirmed flush: same envelope, same id
    bus.publish(TELEMETRY, telemetry(2))  # a new message behind it is still handled
    bus.flush()

    wait_for(lambda: sub.stats.delivered == 3)
    assert epochs(recorder.received) == [1, 2]
    assert (sub.stats.acked, sub.stats.duplicates, sub.stats.dead_lettered) == (3, 1, 0)


def test_republish_refuses_an_envelope_that_is_not_its_topics(make_bus: Any) -> None:
    bus = make_bus()
    envelope = bus.publish(TELEMETRY, telemetry(1))
    with pytest.raises(PayloadValidationError):
        bus.republish(envelope.model_copy(update={"topic": STATE}))


def test_a_failing_handler_gets_the_message_again(make_bus: Any) -> None:
    bus = make_bus()
    failed: set[str] = set()

    def fail_once(envelope: Envelope[Any]) -> bool:
        if envelope.message_id in failed:
            return False
        failed.add(envelope.message_id)
        return True

    recorder = Recorder(fail=fail_once)
    bus.subscribe(TELEMETRY, "nack", recorder)
    sent = bus.publish(TELEMETRY, telemetry(7))
    bus.flush()

    [envelope] = recorder.wait_received(1)
    assert envelope.message_id == sent.message_id
    assert [a.message_id for a in recorder.attempts[:2]] == [sent.message_id] * 2
    assert bus.read_dead_letters(TELEMETRY, timeout_s=0.3) == []


def test_redelivery_limit_moves_the_message_to_the_dead_letter_topic(make_bus: Any) -> None:
    bus = make_bus()
    recorder = Recorder(fail=lambda envelope: envelope.payload.epoch == 13)
    sub = bus.subscribe(TELEMETRY, "limit", recorder, max_redeliveries=2)
    doomed = bus.publish(TELEMETRY, telemetry(13))
    bus.flush()
    bus.publish(TELEMETRY, telemetry(14))
    bus.flush()

    [letter] = bus.read_dead_letters(TELEMETRY, max_messages=1, timeout_s=10)
    assert letter.reason == REASON_REDELIVERY_LIMIT
    assert (letter.topic, letter.subscription) == (TELEMETRY, "limit")
    assert letter.redelivery_count == 2
    assert "recorder refuses" in letter.error
    assert letter.envelope().message_id == doomed.message_id
    # Tried once and redelivered twice (at least: delivery is at-least-once), never acknowledged.
    assert sum(a.message_id == doomed.message_id for a in recorder.attempts) >= 3
    assert epochs(recorder.wait_received(1)) == [14]
    wait_for(lambda: sub.stats.dead_lettered == 1, what="the dead letter to be counted")


def test_a_rejected_message_is_dead_lettered_at_once_with_its_reason(make_bus: Any) -> None:
    bus = make_bus()

    def reject_21(envelope: Envelope[Any]) -> None:
        if envelope.payload.epoch == 21:
            raise RejectMessage("epoch 21 can never be handled")

    recorder = Recorder(work=reject_21)
    sub = bus.subscribe(TELEMETRY, "reject", recorder, max_redeliveries=3)
    doomed = bus.publish(TELEMETRY, telemetry(21))
    bus.flush()
    bus.publish(TELEMETRY, telemetry(22))
    bus.flush()

    [letter] = bus.read_dead_letters(TELEMETRY, max_messages=1, timeout_s=10)
    assert (letter.reason, letter.subscription, letter.redelivery_count) == (REASON_REJECTED, "reject", 0)
    assert "RejectMessage: epoch 21 can never be handled" in letter.error
    assert letter.envelope().message_id == doomed.message_id
    assert epochs(recorder.wait_received(1)) == [22]
    assert epochs(recorder.attempts).count(21) == 1  # no redelivery spent on it
    wait_for(lambda: sub.stats.dead_lettered == 1, what="the dead letter to be counted")


def test_malformed_messages_go_to_the_dead_letter_topic_and_consumption_continues(make_bus: Any) -> None:
    bus = make_bus()
    recorder = Recorder()
    sub = bus.subscribe(TELEMETRY, "malformed", recorder)
    other_topic = bus.publish("control.adaptation.signals", AdaptationSignal(epoch=1))
    wrong_topic_bytes = other_topic.model_dump_json().encode()
    valid = Envelope[SeedTelemetry](producer="x", topic=TELEMETRY, payload_type="SeedTelemetry", payload=telemetry(1))
    bad_payload_bytes = valid.model_dump_json().replace('"alpha":0.5', '"alpha":7.0').encode()
    bus.publish_raw(TELEMETRY, b"\x00\xffnot json at all", key="k1")
    bus.publish_raw(TELEMETRY, wrong_topic_bytes)
    bus.publish_raw(TELEMETRY, bad_payload_bytes)
    bus.flush()
    good = bus.publish(TELEMETRY, telemetry(2))
    bus.flush()

    assert [e.message_id for e in recorder.wait_received(1)] == [good.message_id]
    letters = bus.read_dead_letters(TELEMETRY, max_messages=3, timeout_s=10)
    assert sorted(letter.data for letter in letters) == sorted(
        [b"\x00\xffnot json at all", wrong_topic_bytes, bad_payload_bytes])
    assert {letter.reason for letter in letters} == {REASON_MALFORMED}
    assert {letter.redelivery_count for letter in letters} == {0}  # straight there, never retried
    assert next(letter.key for letter in letters if letter.data.startswith(b"\x00")) == "k1"
    assert len(recorder.attempts) == 1  # the handler never saw the malformed ones
    wait_for(lambda: sub.stats.dead_lettered == 3, what="three dead letters counted")


def publish_foreign_bytes(bus: Any, topic: str, payloads: list[bytes]) -> None:
    """Put bytes on ``topic`` the way a foreign producer would: the bare pulsar client, or the memory hook."""
    from esper_oona.pulsar_bus import PulsarBus

    if not isinstance(bus, PulsarBus):
        for data in payloads:
            bus.publish_raw(topic, data)
        return
    import pulsar

    client = pulsar.Client(bus.service_url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    try:
        producer = client.create_producer(bus.full_topic(topic))
        for data in payloads:
            producer.send(data)
    finally:
        client.close()


def test_bytes_from_a_foreign_producer_are_dead_lettered_and_consumption_continues(make_bus: Any) -> None:
    bus = make_bus()
    recorder = Recorder()
    bus.subscribe(TELEMETRY, "foreign", recorder)
    junk = [b"", b"{}", b'{"payload": 1}', "ünïcode but not json".encode()]
    publish_foreign_bytes(bus, TELEMETRY, junk)
    good = bus.publish(TELEMETRY, telemetry(8))
    bus.flush()

    assert [e.message_id for e in recorder.wait_received(1)] == [good.message_id]
    letters = bus.read_dead_letters(TELEMETRY, max_messages=len(junk), timeout_s=10)
    assert sorted(letter.data for letter in letters) == sorted(junk)
    assert {letter.reason for letter in letters} == {REASON_MALFORMED}


def test_invalid_payloads_are_refused_before_anything_is_sent(make_bus: Any) -> None:
    bus = make_bus()
    recorder = Recorder()
    bus.subscribe(TELEMETRY, "validation", recorder)

    with pytest.raises(PayloadValidationError, match="SeedTelemetry") as wrong_model:
        bus.publish(TELEMETRY, KasminaControlCommand(layer_id="l", seed_index=0, command=CommandType.CULL))
    assert wrong_model.value.topic == TELEMETRY and wrong_model.value.model is SeedTelemetry
    unvalidated = SeedTelemetry.model_construct(**{**telemetry(0).__dict__, "alpha": 3.0})
    with pytest.raises(PayloadValidationError, match="alpha"):
        bus.publish(TELEMETRY, unvalidated)
    with pytest.raises(PayloadValidationError, match="epoch"):
        bus.publish(TELEMETRY, {"layer_id": "l", "seed_index": 0, "stage": "TRAINING"})
    with pytest.raises(PayloadValidationError):
        bus.publish(TELEMETRY, telemetry(0), correlation_id="   ")
    with pytest.raises(PayloadValidationError):
        bus.publish_many(TELEMETRY, [telemetry(0), {"epoch": -1}])  # all validated before the first is sent
    with pytest.raises(UnknownTopicError) as unknown:
        bus.publish("telemetry.nope", telemetry(0))
    assert isinstance(unknown.value, OonaError) and "telemetry.seed.health" in str(unknown.value)

    bus.publish(TELEMETRY, {"layer_id": "l", "seed_index": 0, "epoch": 41, "stage": "TRAINING"})
    bus.publish(TELEMETRY, telemetry(42))
    bus.flush()
    recorder.wait_received(2)
    time.sleep(0.2)
    assert epochs(recorder.received) == [41, 42]


def test_messages_with_one_key_arrive_in_order(make_bus: Any) -> None:
    bus = make_bus()
    seen: list[tuple[str, int]] = []
    bus.subscribe(STATE, "ordered", lambda e: seen.append((e.payload.run_id, e.payload.epoch)))
    runs = [f"run-{i}" for i in range(4)]
    packets = [SystemStatePacket(run_id=run, epoch=epoch, train_loss=1.0, val_loss=1.0)
               for epoch in range(50) for run in runs]
    bus.publish_many(STATE, packets[:100], key=lambda packet: packet.run_id)
    for packet in packets[100:]:
        bus.publish(STATE, packet, key=packet.run_id)
    bus.flush()

    wait_for(lambda: len(seen) >= len(packets), what="every packet")
    for run in runs:
        assert [epoch for r, epoch in seen if r == run] == list(range(50))


def test_every_subscription_gets_every_message(make_bus: Any) -> None:
    bus = make_bus()
    tamiyo, nissa = Recorder(), Recorder()
    bus.subscribe(TELEMETRY, "tamiyo", tamiyo)
    make_bus().subscribe(TELEMETRY, "nissa", nissa)
    bus.publish_many(TELEMETRY, [telemetry(i) for i in range(30)])
    bus.flush()

    assert sorted(epochs(tamiyo.wait_received(30))) == list(range(30))
    assert sorted(epochs(nissa.wait_received(30))) == list(range(30))


def test_consumers_of_one_subscription_share_the_work_without_loss(make_bus: Any) -> None:
    publisher = make_bus()
    slow = Recorder(work=lambda _envelope: time.sleep(0.005))
    other = Recorder(work=lambda _envelope: time.sleep(0.005))
    # A small prefetch queue, so one consumer cannot take the whole backlog before the other asks.
    make_bus("worker-a", receiver_queue_size=5).subscribe(TELEMETRY, "workers", slow)
    make_bus("worker-b", receiver_queue_size=5).subscribe(TELEMETRY, "workers", other)
    for start in range(0, 120, 10):
        publisher.publish_many(TELEMETRY, [telemetry(i) for i in range(start, start + 10)])
        publisher.flush()

    wait_for(lambda: len(slow.received) + len(other.received) >= 120, what="120 messages across both")
    time.sleep(0.2)
    a, b = epochs(slow.received), epochs(other.received)
    assert sorted(a + b) == list(range(120))  # nothing lost, nothing twice
    assert a and b


def test_close_lets_the_handler_in_flight_finish_and_hands_the_rest_on(
    make_bus: Any, broker_acks_batch_indexes: bool
) -> None:
    bus = make_bus()
    started = threading.Event()

    def slow_first(envelope: Envelope[Any]) -> None:
        if envelope.payload.epoch == 0:
            started.set()
            time.sleep(0.3)

    first = Recorder(work=slow_first)
    sub = bus.subscribe(TELEMETRY, "handover", first)
    bus.publish_many(TELEMETRY, [telemetry(i) for i in range(20)])
    bus.flush()
    assert started.wait(10)
    sub.close(timeout_s=10)

    assert epochs(first.received) == [0]  # finished and acknowledged, not cut off
    second = Recorder()
    bus.subscribe(TELEMETRY, "handover", second)
    second.wait_received(19)
    time.sleep(0.2)
    handed_on = sorted(epochs(second.received))
    assert set(handed_on) >= set(range(1, 20))  # nothing lost
    # All 20 messages travel in one batch: only a broker that tracks acks per batch index (our
    # standalone.conf sets acknowledgmentAtBatchIndexLevelEnabled=true) avoids redelivering message 0.
    assert broker_acks_batch_indexes, "set acknowledgmentAtBatchIndexLevelEnabled=true on the broker"
    assert handed_on == list(range(1, 20)), f"an acknowledged message was delivered again: {handed_on}"


def test_a_handler_overrunning_close_has_its_message_redelivered(make_bus: Any) -> None:
    bus = make_bus()
    release, started = threading.Event(), threading.Event()

    def stuck(envelope: Envelope[Any]) -> None:
        if envelope.payload.epoch == 0:
            started.set()
            release.wait(10)

    first = Recorder(work=stuck)
    sub = bus.subscribe(TELEMETRY, "overrun", first)
    bus.publish_many(TELEMETRY, [telemetry(i) for i in range(5)])
    bus.flush()
    assert started.wait(10)
    sub.close(timeout_s=0.2)  # gives up on the stuck handler

    second = Recorder()
    bus.subscribe(TELEMETRY, "overrun", second)
    assert sorted(epochs(second.wait_received(5))) == list(range(5))
    release.set()
    time.sleep(0.2)
    assert sorted(epochs(second.received)) == list(range(5))


def test_closing_the_bus_delivers_everything_published(make_bus: Any) -> None:
    consumer = make_bus()
    recorder = Recorder()
    consumer.subscribe(TELEMETRY, "flush-on-close", recorder)
    publisher = make_bus()
    for i in range(200):
        publisher.publish(TELEMETRY, telemetry(i))
    publisher.close()  # no flush: close must not drop what publish accepted

    assert sorted(epochs(recorder.wait_received(200))) == list(range(200))
    with pytest.raises(BusClosedError):
        publisher.publish(TELEMETRY, telemetry(0))


def test_a_handler_finishing_during_close_can_still_publish_its_reply(make_bus: Any) -> None:
    publisher, replier, listener = make_bus("tolaria"), make_bus("tamiyo"), make_bus("nissa")
    started = threading.Event()

    def answer(envelope: Envelope[Any]) -> None:
        started.set()
        time.sleep(0.2)
        replier.publish("control.adaptation.signals", AdaptationSignal(epoch=envelope.payload.epoch),
                        key="run-1", parent=envelope)

    replies = Recorder()
    listener.subscribe("control.adaptation.signals", "replies", replies)
    replier.subscribe(TELEMETRY, "answer", answer)
    asked = publisher.publish(TELEMETRY, telemetry(5), trace_id="trace-5")
    publisher.flush()
    assert started.wait(10)
    replier.close()

    [reply] = replies.wait_received(1)
    assert (reply.payload.epoch, reply.trace_id, reply.correlation_id) == (5, "trace-5", asked.correlation_id)
    assert reply.producer == "tamiyo"


def test_dead_letters_are_kept_on_the_broker_for_any_reader(make_bus: Any) -> None:
    bus = make_bus()
    bus.subscribe(TELEMETRY, "keeper", Recorder())
    bus.publish_raw(TELEMETRY, b"garbage")
    bus.flush()
    wait_for(lambda: bus._subscriptions[0].stats.dead_lettered == 1, what="the dead letter")
    bus.close()

    reader = make_bus("operator")
    [letter] = reader.read_dead_letters(TELEMETRY, max_messages=1, timeout_s=10)
    assert (letter.data, letter.reason, letter.subscription) == (b"garbage", REASON_MALFORMED, "keeper")
    assert reader.read_dead_letters(TELEMETRY, timeout_s=0.2) == []  # reading acknowledges


def test_initial_position_earliest_sees_messages_published_before_it(make_bus: Any) -> None:
    bus = make_bus()
    bus.subscribe(TELEMETRY, "early-bird", Recorder())  # keeps the topic's messages on Pulsar
    bus.publish(TELEMETRY, telemetry(1))
    bus.flush()
    latest, earliest = Recorder(), Recorder()
    bus.subscribe(TELEMETRY, "from-latest", latest)
    bus.subscribe(TELEMETRY, "from-earliest", earliest, initial_position="earliest")
    bus.publish(TELEMETRY, telemetry(2))
    bus.flush()

    assert sorted(epochs(earliest.wait_received(2))) == [1, 2]
    latest.wait_received(1)
    time.sleep(0.2)
    assert epochs(latest.received) == [2]


def test_an_oversized_publish_is_refused_before_anything_is_sent(make_bus: Any) -> None:
    bus = make_bus(max_message_bytes=2048)
    recorder = Recorder()
    bus.subscribe(STATE, "oversized", recorder)
    packet = SystemStatePacket(run_id="r", epoch=1, train_loss=1.0, val_loss=1.0,
                               metrics={f"metric_{i}": float(i) for i in range(200)})
    with pytest.raises(PayloadValidationError, match="over the bus limit of 2048"):
        bus.publish(STATE, packet, key="r")
    with pytest.raises(PayloadValidationError, match="over the bus limit"):
        bus.publish_many(STATE, [SystemStatePacket(run_id="r", epoch=0, train_loss=1.0, val_loss=1.0), packet])
    bus.publish(STATE, SystemStatePacket(run_id="r", epoch=2, train_loss=1.0, val_loss=1.0), key="r")
    bus.flush()
    assert [e.payload.epoch for e in recorder.wait_received(1)] == [2]  # publish_many sent none of its two
