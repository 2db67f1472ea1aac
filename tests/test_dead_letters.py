"""Every consumed topic of the catalogue sets bad raw messages aside on its dead-letter topic, and its consumer goes on.

For each topic someone consumes, on the memory bus and on the real Pulsar broker: bytes that are no envelope,
JSON that is no envelope, an envelope of a newer schema version, an envelope holding another topic's model
and an oversized message each go to ``<topic>.dlq`` with the reason, unchanged; the valid message sent after
them is handled, and nothing bad ever reaches the handler.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from esper_contracts import (
    SCHEMA_VERSION,
    TOPICS,
    CompilationPipeline,
    ControlMode,
    Outcome,
    SeedStage,
    TensorInterface,
    builtin_blueprints,
)
from esper_oona import REASON_MALFORMED, REASON_OVERSIZED, Bus, connect
from esper_oona.codec import codec_for
from esper_oona.testing import Recorder, wait_for

#: Small, so an oversized message stays light on the broker; publisher and consumer share it.
LIMIT = 64 * 1024
CONSUMED = sorted(name for name, spec in TOPICS.items() if spec.consumers)

_IR = builtin_blueprints(TensorInterface(layout="BD", features=8))[0]
_BLUEPRINT = _IR.ir_hash()
_ARTIFACT = f"{_BLUEPRINT}-cpu-fast-ab12cd34ef56"
_INPUTS = {"progress": 0.1, "stability": 0.2, "efficiency": 0.3}

#: A valid payload of every catalogue model (a new topic's model must be added here).
SAMPLES: dict[str, Callable[[], dict[str, Any]]] = {
    "AdaptationSignal": lambda: {"epoch": 1},
    "SeedTelemetry": lambda: {"layer_id": "m.0", "seed_index": 0, "epoch": 1, "stage": SeedStage.DORMANT},
    "SystemStatePacket": lambda: {"run_id": "r", "epoch": 1, "train_loss": 1.0, "val_loss": 1.0},
    "HealthSummaryReport": lambda: {"region_id": "m.0", "window": 1, "epoch": 1, "seed_count": 1},
    "NarsetAllocationDecision": lambda: {"region_id": "m.0", "window": 1, "mode": ControlMode.REPAIR,
                                         "x_T": 0.5, "x_E": 0.5, "c_T": 0.5, "c_E": 0.5, "pool": 1.0,
                                         "total_spent": 0.0, "raw_inputs": _INPUTS, "smoothed_inputs": _INPUTS},
    "FieldReport": lambda: {"blueprint_id": _BLUEPRINT, "seed_id": "m.0[0]", "pre_metric": 0.5, "post_metric": 0.6,
                            "outcome": Outcome.FOSSILIZED},
    "CompilationJob": lambda: {"blueprint_id": _BLUEPRINT, "ir": _IR, "pipeline": CompilationPipeline.FAST,
                               "hardware": "cpu", "input_shape": [4, 8]},
    "CompiledKernelArtifact": lambda: {"artifact_id": _ARTIFACT, "blueprint_id": _BLUEPRINT, "hardware": "cpu",
                                       "pipeline": CompilationPipeline.FAST, "toolchain_hash": "ab12cd34ef56",
                                       "input_shape": [4, 8]},
    "ValidationJob": lambda: {"artifact_id": _ARTIFACT, "blueprint_id": _BLUEPRINT, "hardware": "cpu"},
    "UrabraskValidationReport": lambda: {"artifact_id": _ARTIFACT, "hardware": "cpu", "passed": True},
    "PolicyUpdate": lambda: {},
    "AllocationCommand": lambda: {"cycle": 1, "region_id": "m.0", "atp_budget": 1.0},
    "StrategicOpportunityProposal": lambda: {"region_id": "m.0", "epoch": 1, "opportunity": "grow",
                                             "plan": ["germinate"], "ask": 1.0, "expected_roi": 0.1},
    "ProposalDecision": lambda: {"proposal_id": "p1", "region_id": "m.0", "approved": False, "reason": "no reserve"},
    "ScaffoldRequest": lambda: {"region_id": "m.0", "blueprint_id": _BLUEPRINT, "reason": "steady",
                                "ttl_epochs": 3},
    "ProtectedZone": lambda: {"module_patterns": ["m.0"], "reason": "volatile", "created_epoch": 1},
    "ImportanceReport": lambda: {"epoch": 1, "checkpoint_id": "ckpt-1"},
    "PruningPlan": lambda: {"epoch": 1, "importance_report_id": "imp-1", "allowance": 0.1},
    "ImportanceRequest": lambda: {"run_id": "r", "epoch": 1, "checkpoint_id": "ckpt-1",
                                  "checkpoint_key": "checkpoints/r/1.safetensors",
                                  "modules": [{"module_path": "m.0", "kind": "linear"}]},
    "PruningOutcome": lambda: {"plan_id": "plan-1", "epoch": 1, "mode": "probe", "accepted": False,
                               "reason": "refused: the plan names a protected zone"},
}


def sample(topic: str) -> BaseModel:
    model = TOPICS[topic].payload
    return model.model_validate(SAMPLES[model.__name__]())


def _envelope(topic: str, payload: dict[str, Any], **changes: Any) -> bytes:
    """A valid envelope of ``topic`` around ``payload`` (JSON), with header fields changed."""
    _envelope_model, data = codec_for(topic).encode(sample(topic), producer="bridge")
    body = json.loads(data) | {"payload": payload} | changes
    return json.dumps(body).encode()


def bad_messages(topic: str) -> dict[str, tuple[bytes, str]]:
    """What a bridge or a broken producer could put on ``topic``: name -> (bytes, expected dead-letter reason)."""
    own = sample(topic).model_dump(mode="json")
    other = next(t for t in CONSUMED if TOPICS[t].payload is not TOPICS[topic].payload
                 and not _fits(TOPICS[topic].payload, sample(t)))
    _envelope_model, valid = codec_for(topic).encode(sample(topic), producer="bridge")
    return {
        "not an envelope": (b"\x00\xff binary junk", REASON_MALFORMED),
        "JSON, no envelope": (json.dumps({"hello": "world", "epoch": 1}).encode(), REASON_MALFORMED),
        "unknown schema version": (_envelope(topic, own, schema_version=SCHEMA_VERSION + 1), REASON_MALFORMED),
        "the wrong model": (_envelope(topic, sample(other).model_dump(mode="json")), REASON_MALFORMED),
        "oversized": (valid + b" " * LIMIT, REASON_OVERSIZED),  # a valid envelope, padded past the limit
    }


def _fits(model: type[BaseModel], payload: BaseModel) -> bool:
    try:
        model.model_validate(payload.model_dump(mode="json"))
    except ValueError:
        return False
    return True


def test_every_catalogue_model_has_a_sample() -> None:
    assert {TOPICS[t].payload.__name__ for t in CONSUMED} <= set(SAMPLES)


@pytest.fixture(params=["memory", pytest.param("pulsar", marks=pytest.mark.integration)])
def make_bus(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Bus]]:
    if request.param == "memory":
        url = f"memory://dead-letters-{uuid.uuid4().hex[:12]}"
    else:
        url = os.environ.get("OONA_TEST_PULSAR_URL") or str(request.getfixturevalue("pulsar_url"))
    prefix = f"dl{uuid.uuid4().hex[:10]}-"
    buses: list[Bus] = []

    def factory(name: str) -> Bus:
        bus = connect(url, producer_name=name, topic_prefix=prefix, max_message_bytes=LIMIT, nack_delay_ms=100,
                      operation_timeout_s=15)
        buses.append(bus)
        return bus

    yield factory
    for bus in buses:
        bus.close(timeout_s=2)
    if url.startswith("memory://"):
        from esper_oona.memory_bus import drop_memory_broker

        drop_memory_broker(url.removeprefix("memory://"))


@pytest.mark.parametrize("topic", CONSUMED)
def test_bad_raw_messages_go_to_the_dead_letter_topic_and_the_consumer_goes_on(make_bus: Any, topic: str) -> None:
    consumer, bridge = make_bus("consumer"), make_bus("bridge")
    handled = Recorder()
    subscription = consumer.subscribe(topic, "dead-letter-test", handled, initial_position="earliest")
    bad = bad_messages(topic)
    for data, _reason in bad.values():
        bridge.publish_raw(topic, data)
    good = bridge.publish(topic, sample(topic))
    bridge.flush()

    [received] = handled.wait_received(1)
    assert received.message_id == good.message_id and received.payload == good.payload
    letters = []
    wait_for(lambda: letters.extend(consumer.read_dead_letters(topic, max_messages=10, timeout_s=1)) or
             len(letters) >= len(bad), what=f"{len(bad)} dead letters on {topic}.dlq", timeout_s=60)
    by_data = {letter.data: letter for letter in letters}
    for name, (data, reason) in bad.items():
        assert data in by_data, f"{name} was not dead-lettered"
        letter = by_data[data]
        assert (letter.topic, letter.subscription, letter.reason) == (topic, "dead-letter-test", reason), name
        assert letter.error, name
    assert [a.message_id for a in handled.attempts] == [good.message_id]  # nothing bad reached the handler
    wait_for(lambda: subscription.stats.dead_lettered == len(bad) and subscription.stats.acked == 1,
             what="the consumer's counts")
