"""Envelope encoding, the connect factory and the error types (no broker needed)."""

from __future__ import annotations

import json

import pytest

import esper_contracts
from esper_contracts import CommandType, Envelope, KasminaControlCommand, SeedStage, SeedTelemetry
from esper_oona import (
    BrokerError,
    BusClosedError,
    DeadLetter,
    MalformedMessageError,
    OonaError,
    PayloadValidationError,
    UnknownTopicError,
    connect,
)
from esper_oona.codec import codec_for

TELEMETRY = "telemetry.seed.health"


def telemetry() -> SeedTelemetry:
    return SeedTelemetry(layer_id="model.layers.1.mlp", seed_index=3, epoch=9, stage=SeedStage.GRAFTING, alpha=0.25)


def test_encoded_bytes_are_the_envelope_json_and_decode_typed() -> None:
    codec = codec_for(TELEMETRY)
    envelope, data = codec.encode(telemetry(), producer="kasmina", correlation_id="c", trace_id="t")
    assert data == envelope.model_dump_json().encode()
    assert json.loads(data)["payload"]["layer_id"] == "model.layers.1.mlp"
    decoded = codec.decode(data)
    assert decoded == envelope and isinstance(decoded.payload, SeedTelemetry)
    assert (decoded.producer, decoded.correlation_id, decoded.trace_id) == ("kasmina", "c", "t")
    assert len(decoded.message_id) == 32


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"topic": "telemetry.system.state"}, "arrived on"),
        ({"payload_type": "SystemStatePacket"}, "payload type"),
        ({"schema_version": 99}, "newer"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_decode_rejects_envelopes_that_are_not_this_topics(change: dict[str, object], reason: str) -> None:
    codec = codec_for(TELEMETRY)
    _envelope, data = codec.encode(telemetry(), producer="p")
    tampered = json.dumps({**json.loads(data), **change}).encode()
    with pytest.raises(MalformedMessageError, match=reason):
        codec.decode(tampered)


def test_payloads_must_be_the_topics_model_or_a_mapping() -> None:
    codec = codec_for(TELEMETRY)
    assert codec.validate_payload(telemetry().model_dump()) == telemetry()
    with pytest.raises(PayloadValidationError, match="got a list"):
        codec.validate_payload([1, 2])  # type: ignore[arg-type]
    with pytest.raises(PayloadValidationError, match="got a KasminaControlCommand"):
        codec.validate_payload(KasminaControlCommand(layer_id="l", seed_index=0, command=CommandType.CULL))
    nested = telemetry()
    object.__setattr__(nested, "epoch", -5)  # bypasses validate_assignment, as model_construct does
    with pytest.raises(PayloadValidationError, match="epoch"):
        codec.validate_payload(nested)


def test_unknown_topics_are_both_oona_and_contract_errors() -> None:
    with pytest.raises(UnknownTopicError) as caught:
        codec_for("telemetry.seed.healthy")
    assert isinstance(caught.value, OonaError)
    assert isinstance(caught.value, esper_contracts.UnknownTopicError)
    assert isinstance(caught.value, KeyError)
    assert "known topics" in str(caught.value)


@pytest.mark.parametrize("url", ["kafka://broker:9092", "localhost:6650", "", "memory:/x"])
def test_unknown_schemes_name_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match=r"memory://, pulsar://"):
        connect(url, producer_name="p")


def test_connect_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="host"):
        connect("pulsar://", producer_name="p")
    with pytest.raises(ValueError, match="producer_name"):
        connect("memory://", producer_name="  ")
    with pytest.raises(ValueError, match="max_redeliveries"):
        connect("memory://", producer_name="p", max_redeliveries=-1)
    bus = connect("memory://args", producer_name="p")
    with pytest.raises(ValueError, match="initial_position"):
        bus.subscribe(TELEMETRY, "s", print, initial_position="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subscription"):
        bus.subscribe(TELEMETRY, " ", print)
    with pytest.raises(UnknownTopicError):
        bus.subscribe("nope", "s", print)
    bus.close()
    with pytest.raises(BusClosedError):
        bus.subscribe(TELEMETRY, "s", print)
    bus.close()  # closing twice is harmless


def test_a_dead_letter_gives_back_its_envelope_when_it_has_one() -> None:
    envelope, data = codec_for(TELEMETRY).encode(telemetry(), producer="p")
    letter = DeadLetter(TELEMETRY, "s", "redelivery_limit", "boom", 3, data, None)
    assert letter.envelope() == envelope
    with pytest.raises(MalformedMessageError):
        DeadLetter(TELEMETRY, "s", "malformed", "bad", 0, b"junk", None).envelope()
    assert isinstance(Envelope[SeedTelemetry].model_validate_json(data).payload, SeedTelemetry)


def test_an_unreachable_pulsar_broker_is_a_broker_error() -> None:
    bus = connect("pulsar://127.0.0.1:1", producer_name="p", operation_timeout_s=1)
    with pytest.raises(BrokerError, match=r"127\.0\.0\.1:1"):
        bus.prepare(TELEMETRY)
    with pytest.raises(BrokerError):
        bus.subscribe(TELEMETRY, "s", print)
    bus.close()
