"""The metric catalogue matches the code: every service exposes exactly the metrics it is catalogued for.

Each runnable service (found through the ``esper.services`` entry points, as ``esper serve`` finds it) is
built on a memory bus and temporary SQLite files, started, and its ``/metrics`` answer parsed: the families
it lists are compared with ``exported_by(service)`` both ways, with their types, and every sample's labels
with the catalogue's. Nissa is fed one heartbeat first, so its per-run and per-seed families have samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from esper_contracts import METRICS, SeedStage, SeedTelemetry, SystemStatePacket, exported_by
from esper_contracts.metrics import SERVICES
from esper_runtime.registry import load_factory, runnable_services

#: What each service needs to be built here (its own files under the test's folder; Urza on no real host).
SETTINGS: dict[str, dict[str, Any]] = {
    "urza": {"seed_library": False},
    "karn": {"auto_propose": False, "urza_url": "http://127.0.0.1:9"},
    "tezzeret": {"urza_url": "http://127.0.0.1:9"},
    "urabrask": {"urza_url": "http://127.0.0.1:9", "sandbox": False},
}


@pytest.fixture(params=sorted(SERVICES))
def exposed(request: pytest.FixtureRequest, tmp_path: Path, memory_bus_url: str) -> Iterator[tuple[str, Any]]:
    """(service name, the families its /metrics lists once started)."""
    name: str = request.param
    overrides = {"bus_url": memory_bus_url, **SETTINGS.get(name, {})}
    if name in ("urza", "karn", "elesh"):
        overrides["data_dir"] = tmp_path / name
    service = load_factory(name)(**overrides)
    if name == "nissa":
        seeds = [SeedTelemetry(layer_id="body.0", seed_index=0, epoch=1, stage=SeedStage.TRAINING)]
        service.store.on_packet(SystemStatePacket(run_id="r", epoch=1, train_loss=1.0, val_loss=1.0,
                                                  val_accuracy=0.5, learning_rate=0.1, seeds=seeds))
    with TestClient(service.app) as client:
        text = client.get("/metrics").text
    yield name, list(text_string_to_metric_families(text))


def test_every_runnable_service_is_in_the_catalogue() -> None:
    assert set(runnable_services()) == set(SERVICES)


def test_a_service_exposes_exactly_its_catalogued_metrics(exposed: tuple[str, Any]) -> None:
    name, families = exposed
    found = {f.name: f.type for f in families}
    catalogued = {n: spec.type.value for n, spec in exported_by(name).items()}
    assert sorted(set(found) - set(catalogued)) == [], f"{name} exposes metrics the catalogue does not list for it"
    assert sorted(set(catalogued) - set(found)) == [], f"{name} does not expose metrics catalogued for it"
    assert found == catalogued, "types differ from the catalogue"


def test_every_sample_carries_the_catalogued_labels(exposed: tuple[str, Any]) -> None:
    name, families = exposed
    wrong = []
    for fam in families:
        spec = METRICS[fam.name]
        for sample in fam.samples:
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            if set(sample.labels) != set(spec.labels) | extra:
                wrong.append(f"{sample.name}{sorted(sample.labels)}: catalogued {spec.labels}")
    assert not wrong, f"{name}:\n" + "\n".join(wrong)


def test_fixed_label_values_are_exposed_before_the_first_event(exposed: tuple[str, Any]) -> None:
    # A catalogued set of values (outcomes, stages, kinds) is there at zero, so queries find the series.
    name, families = exposed
    for fam in families:
        spec = METRICS[fam.name]
        for label, values in spec.values:
            seen = {s.labels.get(label) for s in fam.samples}
            if fam.samples:
                assert set(values) <= seen, f"{name}: {fam.name} lacks {sorted(set(values) - seen)}"


def test_every_catalogued_metric_is_exposed_by_someone_and_says_what_it_means() -> None:
    for spec in METRICS.values():
        assert spec.exporters, spec.name
        assert len(spec.help) >= 15, f"{spec.name}: the help must say what the metric means"
