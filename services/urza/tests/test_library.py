"""The seed library: valid, distinct, covering every family, and seeded exactly once."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from esper_contracts import BlueprintClass, TensorInterface, family
from esper_urza.library import library_blueprints
from esper_urza.shapes import check_blueprint


def test_library_has_10_to_20_valid_distinct_blueprints() -> None:
    irs = library_blueprints()
    assert 10 <= len(irs) <= 20
    assert len({ir.ir_hash() for ir in irs}) == len(irs)
    assert len({ir.name for ir in irs}) == len(irs)
    for ir in irs:
        assert ir.input == ir.output, ir.name  # a seed stands in for the activation it receives
        assert check_blueprint(ir).parameter_count > 0, ir.name
        assert ir.tags[1] == "library", ir.name  # [family, origin, ...]
    assert len({ir.tags[0] for ir in irs}) >= 8  # the first tag names the family, as Tamiyo displays it


def test_library_covers_every_family_and_interface() -> None:
    irs = library_blueprints()
    assert {ir.blueprint_class for ir in irs} == set(BlueprintClass)
    assert {ir.input.layout for ir in irs} == {"BD", "BTD", "BCHW"}
    ranks = {t for ir in irs for t in ir.tags if t.startswith("rank_")}
    assert len(ranks) >= 3
    scaffolds = [ir for ir in irs if ir.blueprint_class is BlueprintClass.SCAFFOLD]
    assert scaffolds and all(ir.sunset is not None and ir.sunset.ttl_epochs > 0 for ir in scaffolds)


def test_builders_are_parameterised_by_features() -> None:
    lora = family("low_rank_adapter")
    small = lora.blueprint(TensorInterface(layout="BD", features=16), origin="library", rank=2)
    large = lora.blueprint(TensorInterface(layout="BD", features=512), origin="library", rank=2)
    assert check_blueprint(small).parameter_count == 2 * 16 * 2
    assert check_blueprint(large).parameter_count == 2 * 512 * 2
    assert small.ir_hash() != large.ir_hash()


def test_start_up_seeds_the_library_once(urza_factory: Any, collect: Any, test_bus: Any) -> None:
    jobs = collect("compilation.jobs")
    n = len(library_blueprints())
    with TestClient(urza_factory(seed_library=True).app) as client:
        first = client.get("/api/v1/blueprints", params={"limit": 100}).json()
    assert first["total"] == n
    assert len(jobs.wait_for(2 * n)) == 2 * n
    with TestClient(urza_factory(seed_library=True).app) as client:  # a second start-up changes nothing
        second = client.get("/api/v1/blueprints", params={"limit": 100}).json()
    assert second == first
    test_bus.wait_until_idle()
    assert len(jobs.wait_for(2 * n + 1, timeout_s=0.5)) == 2 * n
