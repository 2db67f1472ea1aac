"""POST /api/v1/kernels/query: every filter, every sort order, limits, and speed at library scale."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import ArtifactId, TensorInterface, family
from esper_urza.store.models import artifact_tags, artifacts, blueprints


@pytest.fixture
def population(client: TestClient, kit: Any) -> dict[str, str]:
    """Six artifacts over three blueprints, in various states, with known figures and tags."""
    mlp = kit.submit(kit.make_ir(features=32))
    lora = kit.submit(family("low_rank_adapter").blueprint(TensorInterface(layout="BD", features=32), origin="test",
                                                           rank=4))
    conv = kit.submit(family("depthwise_conv").blueprint(TensorInterface(layout="BCHW", features=16), origin="test"))
    names: dict[str, str] = {}

    def make(name: str, blueprint: str, pipeline: str, hardware: str = "cpu", latency: float | None = None,
             memory: float = 1.0, tags: tuple[str, ...] = (), passed: bool = True) -> None:
        artifact = kit.compile(blueprint, name.encode(), pipeline=pipeline, hardware=hardware)
        names[name] = artifact["artifact_id"]
        if latency is not None:
            assert kit.validate(artifact["artifact_id"], latency=latency, memory=memory, tags=list(tags),
                                passed=passed).status_code == 200

    make("mlp-fast", mlp, "fast", latency=2.0, memory=5.0, tags=("medium_speed", "low_memory"))
    make("mlp-std", mlp, "standard", latency=0.5, memory=9.0, tags=("high_speed", "high_memory"))
    make("lora-fast", lora, "fast", latency=1.0, memory=1.0, tags=("high_speed", "low_memory"))
    make("lora-h100", lora, "fast", hardware="h100", latency=0.1, memory=2.0, tags=("high_speed", "low_memory"))
    make("conv-fast", conv, "fast", latency=3.0, memory=4.0, tags=("low_speed",))
    make("lora-std", lora, "standard")  # compiled, waiting for validation
    return names


def _query(client: TestClient, **q: Any) -> list[str]:
    response = client.post("/api/v1/kernels/query", json=q)
    assert response.status_code == 200, response.text
    return [a["artifact_id"] for a in response.json()["artifacts"]]


def _names(population: dict[str, str], ids: list[str]) -> list[str]:
    by_id = {v: k for k, v in population.items()}
    return [by_id[i] for i in ids]


def test_default_is_validated_sorted_by_latency(client: TestClient, population: dict[str, str]) -> None:
    assert _names(population, _query(client)) == ["lora-h100", "mlp-std", "lora-fast", "mlp-fast", "conv-fast"]


@pytest.mark.parametrize(("query", "expected"), [
    ({"tags_required": ["high_speed"]}, ["lora-h100", "mlp-std", "lora-fast"]),
    ({"tags_required": ["high_speed", "low_memory"]}, ["lora-h100", "lora-fast"]),
    ({"tags_required": ["residual_mlp"]}, ["mlp-std", "mlp-fast"]),
    ({"tags_excluded": ["high_speed"]}, ["mlp-fast", "conv-fast"]),
    ({"tags_excluded": ["low_memory", "low_speed"]}, ["mlp-std"]),
    ({"hardware": "cpu"}, ["mlp-std", "lora-fast", "mlp-fast", "conv-fast"]),
    ({"hardware": "h100"}, ["lora-h100"]),
    ({"blueprint_class": "low_rank"}, ["lora-h100", "lora-fast"]),
    ({"interface": {"layout": "BCHW", "features": 16}}, ["conv-fast"]),
    ({"interface": {"layout": "BD", "features": 64}}, []),
    ({"pipeline": "standard"}, ["mlp-std"]),
    ({"status": "VALIDATING"}, ["lora-std"]),
    ({"status": None, "blueprint_class": "low_rank"}, ["lora-h100", "lora-fast", "lora-std"]),
    ({"sort_by": "memory"}, ["lora-fast", "lora-h100", "conv-fast", "mlp-fast", "mlp-std"]),
    ({"sort_by": "created_at"}, ["conv-fast", "lora-h100", "lora-fast", "mlp-std", "mlp-fast"]),
    ({"hardware": "cpu", "tags_required": ["low_memory"], "interface": {"layout": "BD", "features": 32}},
     ["lora-fast", "mlp-fast"]),
], ids=lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else None)
def test_filters_and_sorting(client: TestClient, population: dict[str, str], query: dict[str, Any],
                             expected: list[str]) -> None:
    assert _names(population, _query(client, **query)) == expected


def test_limit_keeps_the_best_and_total_counts_all(client: TestClient, population: dict[str, str]) -> None:
    body = client.post("/api/v1/kernels/query", json={"limit": 2}).json()
    assert _names(population, [a["artifact_id"] for a in body["artifacts"]]) == ["lora-h100", "mlp-std"]
    assert body["total"] == 5
    assert body["artifacts"][0]["validation"]["latency_ms_mean"] == 0.1


@pytest.mark.parametrize(("query", "reason"), [
    ({"tags_required": ["a"], "tags_excluded": ["a"]}, "both required and excluded"),
    ({"sort_by": "speed"}, "sort_by"),
    ({"limit": 0}, "limit"),
    ({"limit": 5000}, "limit"),
    ({"status": "DONE"}, "status"),
])
def test_bad_queries_are_400(client: TestClient, query: dict[str, Any], reason: str) -> None:
    response = client.post("/api/v1/kernels/query", json=query)
    assert response.status_code == 400 and reason in response.json()["detail"]


# --- speed at library scale --------------------------------------------------------------------------------------

_TAGS = ["high_speed", "medium_speed", "low_speed", "high_memory", "low_memory", "numerically_stable"]
_STATUSES = ["VALIDATED"] * 6 + ["VALIDATING", "REJECTED", "FAILED", "COMPILED"]


def _fill(urza: Any, n_blueprints: int = 1000, per_blueprint: int = 5) -> None:
    """Bulk-load a realistic population straight into the tables (the API path is tested above)."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    bp_rows, art_rows, tag_rows = [], [], []
    for i in range(n_blueprints):
        features = rng.choice([32, 64, 128, 256])
        ir = family("attention_head").blueprint(TensorInterface(layout="BTD", features=features), origin="test",
                                                heads=rng.choice([1, 2, 4, 8]))
        ir = ir.model_copy(update={"name": f"bulk-{i}", "nodes": [*ir.nodes]})
        bid = f"{i:064x}"
        layout = rng.choice(["BD", "BTD", "BCHW"])
        cls = rng.choice(["mlp", "conv", "attention", "low_rank", "normalization"])
        bp_rows.append({"blueprint_id": bid, "name": f"bulk-{i}", "version": 1, "blueprint_class": cls,
                        "input_layout": layout, "input_features": features, "output_layout": layout,
                        "output_features": features, "parameter_count": 1000, "tags_json": "[]",
                        "ir_json": ir.model_dump_json(), "created_at": start + timedelta(seconds=i)})
        for j in range(per_blueprint):
            hardware = ["cpu", "h100", "a100", "cpu", "h100"][j]
            pipeline = ["fast", "standard", "fast", "aggressive", "standard"][j]
            aid = ArtifactId(bid, hardware, pipeline, f"{j:012x}")
            tags = rng.sample(_TAGS, k=rng.randint(1, 3))
            status = rng.choice(_STATUSES)
            measured = status in ("VALIDATED", "REJECTED")
            report = None
            if measured:
                report = json.dumps({"artifact_id": aid, "hardware": hardware, "passed": status == "VALIDATED",
                                     "rejection_reason": None if status == "VALIDATED" else "drift",
                                     "latency_ms_mean": rng.uniform(0.05, 5), "memory_mb_peak": rng.uniform(1, 500),
                                     "tags": tags, "measured_at": start.isoformat()})
            art_rows.append({
                "artifact_id": aid, "blueprint_id": bid, "hardware": hardware, "pipeline": pipeline,
                "toolchain_hash": f"{j:012x}", "status": status, "input_shape_json": f"[32,{features}]",
                "sha256": "0" * 64, "size_bytes": 1024, "blob_uri": "file:///x", "compile_time_s": 1.0, "error": None,
                "compile_tags_json": "[]", "tags_json": json.dumps(tags), "validation_json": report,
                "blueprint_class": cls, "layout": layout, "features": features,
                "latency_ms": json.loads(report)["latency_ms_mean"] if report else None,
                "memory_mb": json.loads(report)["memory_mb_peak"] if report else None,
                "created_at": start + timedelta(seconds=i, milliseconds=j), "updated_at": start,
            })
            tag_rows.extend({"artifact_id": aid, "tag": t} for t in tags)
    with urza.db.write() as conn:
        conn.execute(blueprints.insert(), bp_rows)
        conn.execute(artifacts.insert(), art_rows)
        conn.execute(artifact_tags.insert(), tag_rows)


def test_queries_honour_filters_with_1000_blueprints_and_5000_artifacts(client: TestClient, urza: Any) -> None:
    _fill(urza)
    rng = random.Random(11)
    queries = []
    for _ in range(300):
        q: dict[str, Any] = {"sort_by": rng.choice(["latency", "memory", "created_at"]),
                             "limit": rng.choice([5, 20, 100])}
        if rng.random() < 0.7:
            q["tags_required"] = rng.sample(_TAGS[:3], 1) + (rng.sample(_TAGS[3:5], 1) if rng.random() < 0.5 else [])
        if rng.random() < 0.3:
            q["tags_excluded"] = ["numerically_stable"]
        if rng.random() < 0.8:
            q["hardware"] = rng.choice(["cpu", "h100", "a100"])
        if rng.random() < 0.6:
            q["interface"] = {"layout": rng.choice(["BD", "BTD", "BCHW"]),
                              "features": rng.choice([32, 64, 128, 256])}
        if rng.random() < 0.3:
            q["blueprint_class"] = rng.choice(["mlp", "conv", "attention", "low_rank", "normalization"])
        if rng.random() < 0.1:
            q["status"] = None
        queries.append(q)
    # Speed is measured by bench/bench_assets.py (urza_query_p99_ms); here, every answer at this scale
    # must honour its query: filters, status, interface and order.
    for q in queries:
        response = client.post("/api/v1/kernels/query", json=q)
        assert response.status_code == 200, response.text
        found = response.json()["artifacts"]
        assert len(found) <= q["limit"]
        for art in found:
            tags = set(art["tags"])
            assert set(q.get("tags_required", [])) <= tags, (q, art["tags"])
            assert not set(q.get("tags_excluded", [])) & tags
            if "hardware" in q:
                assert art["hardware"] == q["hardware"]
            if q.get("status", "VALIDATED") is not None:
                assert art["status"] == q.get("status", "VALIDATED")
            if "interface" in q:
                assert art["input_shape"][-1 if q["interface"]["layout"] != "BCHW" else 1] == q["interface"]["features"]
        if q["sort_by"] == "latency":
            keys = [a["validation"]["latency_ms_mean"] for a in found if a["validation"]]
            assert keys == sorted(keys)
    unfiltered = client.post("/api/v1/kernels/query", json={"status": None, "limit": 1}).json()
    assert unfiltered["total"] == 5000




def test_queries_of_one_shape_share_a_statement_but_not_their_values(client: TestClient,
                                                                     population: dict[str, str]) -> None:
    from esper_contracts import KernelQuery
    from esper_urza.store.kernel_query import _shape_and_parameters, _statement

    high = KernelQuery(tags_required=["high_speed"], hardware="cpu")
    low = KernelQuery(tags_required=["low_speed", "low_speed"], hardware="cpu", limit=1)  # a repeated tag counts once
    assert _shape_and_parameters(high)[0] == _shape_and_parameters(low)[0]
    assert _statement(_shape_and_parameters(high)[0]) is _statement(_shape_and_parameters(low)[0])
    for query, expected, total in ((high, ["mlp-std", "lora-fast"], 2), (low, ["conv-fast"], 1),
                                   (high.model_copy(update={"limit": 1}), ["mlp-std"], 2)):
        body = client.post("/api/v1/kernels/query", json=query.model_dump(mode="json")).json()
        assert _names(population, [a["artifact_id"] for a in body["artifacts"]]) == expected
        assert body["total"] == total
