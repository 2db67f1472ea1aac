"""Every contract survives a JSON round trip and exports a JSON Schema; data is generated from that schema."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from esper_contracts import ALL_MODELS, TOPICS, Envelope, SeedTelemetry
from esper_contracts.strategies import blueprint_ir_json, from_schema

# Graph-shaped and cross-field models reject much of what their schema alone allows; hypothesis
# still finds enough valid examples, it just has to filter more.
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_json_schema_exports(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    assert schema["type"] == "object"
    assert schema.get("additionalProperties") is False, "contracts must reject unknown fields"
    assert model.__doc__ and model.__doc__.strip(), f"{model.__name__} needs a docstring"
    json.dumps(schema)  # serialisable as-is


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_round_trip_of_schema_generated_data(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()

    @SETTINGS
    @given(data=from_schema(schema, overrides={"BlueprintIR": blueprint_ir_json()}))
    def check(data: dict) -> None:
        try:
            instance = model.model_validate(data)
        except ValidationError:
            assume(False)  # schema-valid but breaks a cross-field rule (e.g. a graph cycle)
            return
        again = model.model_validate_json(instance.model_dump_json())
        assert again == instance
        assert again.model_dump(mode="json") == instance.model_dump(mode="json")

    check()


def test_every_topic_payload_is_a_contract() -> None:
    assert set(spec.payload for spec in TOPICS.values()) <= set(ALL_MODELS)
    for name, spec in TOPICS.items():
        assert spec.name == name and spec.producers and spec.consumers


@SETTINGS
@given(
    epoch=st.integers(min_value=0, max_value=10_000),
    alpha=st.floats(min_value=0, max_value=1),
    producer=st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
)
def test_envelope_round_trip(epoch: int, alpha: float, producer: str) -> None:
    payload = SeedTelemetry(layer_id="fc1", seed_index=0, epoch=epoch, stage="GRAFTING", alpha=alpha)
    env = Envelope[SeedTelemetry](producer=producer, topic="telemetry.seed.health",
                                  payload_type="SeedTelemetry", payload=payload)
    back = Envelope[SeedTelemetry].model_validate_json(env.model_dump_json())
    assert back == env
    assert back.timestamp.utcoffset() is not None and back.timestamp.utcoffset().total_seconds() == 0
