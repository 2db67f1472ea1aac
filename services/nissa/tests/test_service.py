"""The Nissa process: it follows the telemetry topics on the bus and answers /metrics from what it heard."""

from __future__ import annotations

from fastapi.testclient import TestClient

from esper_contracts import FieldReport, Outcome, SeedStage, SeedTelemetry, SystemStatePacket, Topic
from esper_nissa import create_service
from esper_oona import connect
from esper_oona.testing import wait_for
from esper_runtime.registry import load_factory


def test_esper_serve_finds_nissa() -> None:
    assert load_factory("nissa") is create_service


def test_telemetry_on_the_bus_reaches_metrics(memory_bus_url: str) -> None:
    service = create_service(bus_url=memory_bus_url)
    trainer = connect(memory_bus_url, producer_name="trainer")
    with TestClient(service.app) as client:
        assert client.get("/healthz").json()["checks"] == {"consuming": True}
        seeds = [SeedTelemetry(layer_id="body.1", seed_index=0, epoch=5, stage=SeedStage.GRAFTING, alpha=0.4)]
        trainer.publish(Topic.SYSTEM_STATE, SystemStatePacket(run_id="run-7", epoch=5, train_loss=0.3, val_loss=0.4,
                                                              val_accuracy=0.9, seeds=seeds), key="run-7")
        trainer.publish(Topic.FIELD_REPORTS, FieldReport(blueprint_id="b" * 64, seed_id="body.1[0]", pre_metric=0.8,
                                                         post_metric=0.9, outcome=Outcome.FOSSILIZED))
        wait_for(lambda: service.store.runs == ["run-7"] and "FOSSILIZED\"} 1" in client.get("/metrics").text)
        text = client.get("/metrics").text
        assert 'esper_run_accuracy{run="run-7",split="val"} 0.9' in text
        assert 'esper_seed_alpha{run="run-7",layer="body.1",seed="0"} 0.4' in text
        assert 'esper_nissa_messages_total{topic="telemetry.system.state"} 1' in text
        assert 'esper_bus_messages_total{outcome="acked",service="nissa",subscription="nissa",' \
               'topic="telemetry.system.state"} 1.0' in text
        assert client.get("/healthz").json()["telemetry"] == {"runs": ["run-7"], "seeds": 1}
    trainer.close()
