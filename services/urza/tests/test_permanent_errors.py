"""A valid message that can never succeed goes to the dead-letter topic at once, with the reason.

A field report, compilation result or validation report naming a blueprint Urza does not hold cannot
succeed on a later try (a blueprint is committed before any job about it is sent), so Urza rejects it:
one delivery, no redelivery spent, and ``<topic>.dlq`` says why. A report about a stored blueprint sent
after it is still handled: the consumer goes on.
"""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from esper_contracts import (
    CompilationPipeline,
    CompiledKernelArtifact,
    FieldReport,
    Outcome,
    Topic,
    UrabraskValidationReport,
)
from esper_oona import REASON_REJECTED, Bus
from esper_oona.testing import wait_for


def _unknown_blueprint(kit: Any) -> str:
    blueprint_id: str = kit.make_ir(features=24).ir_hash()  # never submitted
    return blueprint_id


def test_messages_naming_an_unknown_blueprint_are_dead_lettered_at_once(client: TestClient, kit: Any,
                                                                         test_bus: Bus) -> None:
    unknown = _unknown_blueprint(kit)
    artifact = f"{unknown}-cpu-fast-ab12cd34ef56"
    sent = {
        Topic.FIELD_REPORTS: test_bus.publish(Topic.FIELD_REPORTS, FieldReport(
            blueprint_id=unknown, seed_id="m.0[0]", pre_metric=0.5, post_metric=0.6, outcome=Outcome.FOSSILIZED)),
        Topic.COMPILATION_RESULTS: test_bus.publish(Topic.COMPILATION_RESULTS, CompiledKernelArtifact(
            artifact_id=artifact, blueprint_id=unknown, hardware="cpu", pipeline=CompilationPipeline.FAST,
            toolchain_hash="ab12cd34ef56", input_shape=[4, 8])),
        Topic.VALIDATION_REPORTS: test_bus.publish(Topic.VALIDATION_REPORTS, UrabraskValidationReport(
            artifact_id=artifact, hardware="cpu", passed=True)),
    }
    test_bus.flush()
    for topic, envelope in sent.items():
        letters: list[Any] = []

        def arrived(t: str = topic, found: list[Any] = letters) -> bool:
            found.extend(test_bus.read_dead_letters(t, timeout_s=0.5))
            return bool(found)

        wait_for(arrived, what=f"the dead letter on {topic}.dlq", timeout_s=30)
        [letter] = letters
        assert letter.reason == REASON_REJECTED, (topic, letter)
        assert letter.redelivery_count == 0, "no redelivery was spent on a message that can never succeed"
        assert "NotFound" in letter.error and unknown in letter.error, letter.error
        assert envelope.message_id.encode() in letter.data

    # The consumer goes on: a report about a stored blueprint is stored.
    known = kit.submit(kit.make_ir())
    test_bus.publish(Topic.FIELD_REPORTS, FieldReport(blueprint_id=known, seed_id="m.0[0]", pre_metric=0.5,
                                                     post_metric=0.6, outcome=Outcome.FOSSILIZED))
    test_bus.flush()
    wait_for(lambda: client.get(f"/api/v1/blueprints/{known}/field-reports").json()["items"],
             what="the known blueprint's field report", timeout_s=30)
