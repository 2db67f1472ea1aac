"""A learned policy reaches a running Tamiyo as a PolicyUpdate naming a version stored in Urza.

Urza is the real service (SQLite, in process); the bus is the memory bus and, marked integration, the real
Pulsar broker. A version Tamiyo cannot fetch, verify or serve goes to the dead-letter topic with the reason,
and Tamiyo keeps the policy it had.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import (
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    PolicyArtifactRef,
    PolicyUpdate,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    TensorInterface,
    artifact_id,
)
from esper_oona import connect
from esper_policy import LearnedPolicy
from esper_policy.network import random_network
from esper_tamiyo.service import create_service
from esper_urza.service import create_service as create_urza
from esper_urza_client import UrzaClient

BLUEPRINT = "c" * 64


class ResidualKernel:
    """One validated residual_mlp kernel fitting every interface."""

    def query(self, query: KernelQuery) -> KernelQueryResult:
        art = CompiledKernelArtifact(artifact_id=artifact_id(BLUEPRINT, "cpu", "eager", "b" * 12),
                                     blueprint_id=BLUEPRINT, hardware="cpu", pipeline="eager",
                                     toolchain_hash="b" * 12, status="VALIDATED", input_shape=[1, 8],
                                     tags=["residual_mlp"])
        return KernelQueryResult(artifacts=[art], total=1)


def packet(epoch: int) -> SystemStatePacket:
    seeds = [SeedTelemetry(layer_id="fc1", seed_index=0, epoch=epoch, stage=SeedStage.DORMANT,
                           interface=TensorInterface(layout="BD", features=8))]
    return SystemStatePacket(run_id="run-learned", epoch=epoch, train_loss=1.0, val_loss=1.0, val_accuracy=0.5,
                             seeds=seeds)


@pytest.fixture(params=["memory", pytest.param("pulsar", marks=pytest.mark.integration)])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://learned-{uuid.uuid4().hex[:8]}"
    return str(request.getfixturevalue("pulsar_url"))


@pytest.fixture
def platform(bus_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Urza (SQLite) behind a client, Tamiyo fetching policies from it, and a probe on the same bus."""
    prefix = f"learned-{uuid.uuid4().hex[:8]}-"
    urza = create_urza(data_dir=tmp_path / "urza", bus_url=f"memory://urza-{prefix}", seed_library=False)
    tamiyo = create_service(bus_url=bus_url, topic_prefix=prefix, kernels=ResidualKernel(),
                            policy={"warmup_epochs": 1})
    with TestClient(urza.app) as urza_http, TestClient(tamiyo.app) as tamiyo_http:
        client = UrzaClient(http=urza_http)  # type: ignore[arg-type]
        tamiyo.controller.policy_fetcher = client.policy  # what TamiyoService wires from settings.urza_url
        bus = connect(bus_url, producer_name=f"simic-{prefix}", topic_prefix=prefix)
        try:
            yield {"urza": client, "tamiyo": tamiyo, "http": tamiyo_http, "bus": bus}
        finally:
            bus.close()


def _publish_version(urza: UrzaClient, version: str, *, seed: int = 0, **changes: Any) -> str:
    artifact = random_network(version, hidden=(8,), seed=seed).to_artifact()
    artifact.update(changes)
    return urza.put_policy(version, artifact)


def _dead_letters(bus: Any, count: int, timeout_s: float = 20.0) -> list[Any]:
    letters: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(letters) < count and time.monotonic() < deadline:
        letters += bus.read_dead_letters("control.policy.updates", timeout_s=0.5)
    return letters


def _wait(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_policy_update_switches_tamiyo_to_the_learned_version_and_bad_ones_are_dead_lettered(
        platform: dict[str, Any]) -> None:
    urza, tamiyo, bus = platform["urza"], platform["tamiyo"], platform["bus"]
    good = _publish_version(urza, "simic-good")
    bus.publish("control.policy.updates",
                PolicyUpdate(policy_version=2, learned_policy=PolicyArtifactRef(version="simic-good", sha256=good)))
    _wait(lambda: tamiyo.controller.network is not None)
    assert isinstance(tamiyo.controller.policy, LearnedPolicy)
    assert tamiyo.controller.network.version == "simic-good"

    # Tamiyo now decides with the learned policy; the status reports it and its vetoes.
    tamiyo.controller.on_packet(packet(1))
    status = platform["http"].get("/api/v1/system/status").json()
    assert status["policy"]["policy"] == "learned" and status["policy"]["version"] == "simic-good"
    assert status["policy"]["vetoes"] + status["policy"]["invalid_actions"] >= 0

    # Incompatible (another observation layout), tampered (digest differs), unknown: refused with the reason.
    incompatible = _publish_version(urza, "simic-old", observation_size=7)
    _publish_version(urza, "simic-other", seed=3)
    for version, digest in (("simic-old", incompatible), ("simic-other", "0" * 64), ("simic-missing", good)):
        bus.publish("control.policy.updates", PolicyUpdate(
            policy_version=3, learned_policy=PolicyArtifactRef(version=version, sha256=digest)))
    letters = _dead_letters(bus, 3)
    reasons = sorted(letter.error for letter in letters)
    assert len(reasons) == 3, reasons
    assert any("incompatible policy: observation_size" in r for r in reasons)
    assert any("does not match" in r for r in reasons)
    assert any("could not be fetched" in r and "404" in r for r in reasons)
    assert tamiyo.controller.network.version == "simic-good"  # kept
    assert tamiyo.controller.update.policy_version == 2


def test_policy_learned_in_the_service_config_serves_the_artifact_file(tmp_path: Path) -> None:
    import json

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(random_network("from-config", hidden=(8,)).to_artifact()))
    tamiyo = create_service(bus_url=f"memory://cfg-{uuid.uuid4().hex[:8]}", kernels=ResidualKernel(),
                            policy={"policy": "learned", "learned_policy_path": str(path)})
    assert isinstance(tamiyo.controller.policy, LearnedPolicy)
    assert tamiyo.controller.policy_stats()["version"] == "from-config"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(ValueError, match="format"):
        create_service(bus_url="memory://cfg-broken", kernels=ResidualKernel(),
                       policy={"policy": "learned", "learned_policy_path": str(broken)})
