"""REST: submitting, reading, paging blueprints; lineage; field reports; what happens to bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import (
    BlueprintClass,
    BlueprintIR,
    BlueprintLineage,
    FieldReport,
    KernelNotFoundError,
    MutationRecord,
    Outcome,
    PipelineBacklog,
)
from esper_urza_client import UrzaClient


def _counts(client: TestClient) -> int:
    total: int = client.get("/api/v1/blueprints").json()["total"]
    return total


def test_submit_stores_the_blueprint_and_queues_its_compilation_jobs(client: TestClient, kit: Any,
                                                                     collect: Any) -> None:
    jobs = collect("compilation.jobs")
    ir = kit.make_ir(features=48)
    response = client.post("/api/v1/blueprints", json=kit.ir_json(ir))
    assert response.status_code == 201
    record = response.json()
    assert record["blueprint_id"] == ir.ir_hash()
    assert response.headers["location"] == f"/api/v1/blueprints/{ir.ir_hash()}"
    assert record["parameter_count"] == 48 * 96 + 96 + 96 * 48 + 48 + 2 * 48
    assert record["artifacts"] == []
    payloads = jobs.wait_for(2)
    assert sorted((j.pipeline.value, j.hardware, tuple(j.input_shape)) for j in payloads) == [
        ("fast", "cpu", (32, 48)), ("standard", "cpu", (32, 48))]
    assert all(j.blueprint_id == ir.ir_hash() and j.ir == ir for j in payloads)
    listed = client.get(f"/api/v1/blueprints/{ir.ir_hash()}/jobs").json()
    assert len(listed) == 2 and all(j["published"] for j in listed)


def test_resubmitting_the_same_ir_returns_the_record_and_queues_nothing(client: TestClient, kit: Any,
                                                                        collect: Any, test_bus: Any) -> None:
    jobs = collect("compilation.jobs")
    ir = kit.make_ir()
    first = client.post("/api/v1/blueprints", json=kit.ir_json(ir))
    renamed = ir.model_copy(update={"name": "another-name", "description": "same graph"})
    second = client.post("/api/v1/blueprints", json=kit.ir_json(renamed))
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["blueprint_id"] == first.json()["blueprint_id"]
    assert second.json()["ir"]["name"] == ir.name  # the first submission's metadata wins
    test_bus.wait_until_idle()
    assert len(jobs.wait_for(2)) == 2
    assert _counts(client) == 1


def test_the_same_graph_with_its_defaults_spelled_out_is_the_same_blueprint(client: TestClient, kit: Any) -> None:
    body = kit.ir_json(kit.make_ir())
    spelled = json.loads(json.dumps(body))
    attrs = next(n for n in spelled["nodes"] if n["op"] == "linear")["attrs"]
    defaults = {"bias": True, "init": "default"}
    written = {k for k, v in defaults.items() if attrs.get(k) == v}
    for k in defaults:  # write out the defaults it leaves out, or leave out those it writes
        if not written:
            attrs[k] = defaults[k]
        elif k in written:
            del attrs[k]
    assert spelled != body  # one submission writes the defaults, the other leaves them out
    first = client.post("/api/v1/blueprints", json=body)
    second = client.post("/api/v1/blueprints", json=spelled)
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["blueprint_id"] == first.json()["blueprint_id"]
    assert _counts(client) == 1


def test_each_configured_pipeline_and_hardware_gets_a_job(urza_factory: Any, make_kit: Any, collect: Any) -> None:
    kit = make_kit()
    urza = urza_factory(pipelines=["fast", "standard", "aggressive"], hardware=["cpu", "h100"], batch_size=8,
                        tokens=4)
    jobs = collect("compilation.jobs")
    with TestClient(urza.app) as client:
        kit.client = client
        kit.submit(kit.make_ir(features=16, layout="BTD"))
        payloads = jobs.wait_for(6)
    assert len(payloads) == 6
    assert {(j.pipeline.value, j.hardware) for j in payloads} == {
        (p, h) for p in ("fast", "standard", "aggressive") for h in ("cpu", "h100")}
    assert {tuple(j.input_shape) for j in payloads} == {(8, 4, 16)}
    assert len({j.job_id for j in payloads}) == 6


def _cycle(body: dict[str, Any]) -> None:
    body["edges"].append({"src": "residual", "dst": "norm", "port": 0})
    body["edges"] = [e for e in body["edges"] if not (e["src"] == "input" and e["dst"] == "norm")]


def _mismatch(body: dict[str, Any]) -> None:
    body["nodes"][1]["attrs"]["in_features"] = 31


def _unknown_op(body: dict[str, Any]) -> None:
    body["nodes"][0]["op"] = "lstm"


def _oversized(body: dict[str, Any]) -> None:
    body["nodes"] += [{"id": f"extra{i}", "op": "identity"} for i in range(300)]


def _wrong_output(body: dict[str, Any]) -> None:
    body["output"]["features"] = 16


def _bad_heads(body: dict[str, Any]) -> None:
    body["input"] = body["output"] = {"layout": "BTD", "features": 32}
    body["nodes"] = [{"id": "attn", "op": "multihead_attention", "attrs": {"embed_dim": 32, "num_heads": 5}}]
    body["edges"] = [{"src": "input", "dst": "attn"}, {"src": "attn", "dst": "output"}]


def _dead_branch(body: dict[str, Any]) -> None:
    body["nodes"].append({"id": "orphan", "op": "relu"})
    body["edges"].append({"src": "input", "dst": "orphan"})


def _missing_field(body: dict[str, Any]) -> None:
    del body["blueprint_class"]


def _extra_field(body: dict[str, Any]) -> None:
    body["nodes"][0]["kernel"] = "import os"


@pytest.mark.parametrize(("mutate", "reason"), [
    (_cycle, "cycle"),
    (_mismatch, "in_features=31 but its input has 32 features"),
    (_unknown_op, "nodes.0.op"),
    (_oversized, "at most 256"),
    (_wrong_output, "declares 16"),
    (_bad_heads, "num_heads=5 does not divide embed_dim=32"),
    (_dead_branch, "do not reach the output"),
    (_missing_field, "blueprint_class: Field required"),
    (_extra_field, "Extra inputs are not permitted"),
], ids=["cyclic", "shape-mismatch", "unknown-op", "oversized", "wrong-output", "attention-heads", "dead-branch",
        "missing-field", "extra-field"])
def test_invalid_blueprints_get_400_with_the_reason_and_nothing_is_stored(
        client: TestClient, kit: Any, collect: Any, mutate: Any, reason: str) -> None:
    jobs = collect("compilation.jobs")
    body = kit.ir_json(kit.make_ir())
    mutate(body)
    response = client.post("/api/v1/blueprints", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert reason in error["detail"]
    assert error["error"] == "bad_request" and error["status"] == 400 and error["trace_id"]
    assert _counts(client) == 0
    assert jobs.wait_for(1, timeout_s=0.3) == []


def test_malformed_json_is_a_400(client: TestClient) -> None:
    response = client.post("/api/v1/blueprints", content=b'{"name": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


def test_a_body_over_the_limit_is_refused_before_parsing(urza_factory: Any, make_kit: Any) -> None:
    kit = make_kit()
    urza = urza_factory(max_body_bytes=4096)
    with TestClient(urza.app) as client:
        body = kit.ir_json(kit.make_ir(description="x" * 3900))
        response = client.post("/api/v1/blueprints", json=body)
        assert response.status_code == 413
        assert "exceeds the limit of 4096 bytes" in response.json()["detail"]
        assert client.get("/api/v1/blueprints").json()["total"] == 0


@pytest.mark.parametrize(("overrides", "features", "reason"), [
    ({"max_parameters": 1000}, 32, "more than 1000 parameters"),
    ({"allowed_ops": ["linear", "relu", "add", "layer_norm"]}, 4, "uses op(s) ['gelu']"),
    ({"max_nodes": 3}, 4, "this Urza accepts at most 3"),
], ids=["parameters", "ops", "nodes"])
def test_stricter_local_limits_apply(urza_factory: Any, make_kit: Any, overrides: dict[str, Any], features: int,
                                     reason: str) -> None:
    kit = make_kit()
    urza = urza_factory(**overrides)
    with TestClient(urza.app) as client:
        response = client.post("/api/v1/blueprints", json=kit.ir_json(kit.make_ir(features=features)))
        assert response.status_code == 400 and reason in response.json()["detail"]


def test_unknown_blueprint_is_404_everywhere(client: TestClient) -> None:
    missing = "f" * 64
    for path in ("", "/lineage", "/field-reports", "/jobs"):
        response = client.get(f"/api/v1/blueprints/{missing}{path}")
        assert response.status_code == 404, path
        assert missing in response.json()["detail"]


def test_list_pages_and_filters(client: TestClient, kit: Any) -> None:
    ids = [kit.submit(kit.make_ir(features=f)) for f in (8, 16, 24, 32, 40)]
    kit.submit(kit.make_ir(features=8, layout="BTD"))
    first = client.get("/api/v1/blueprints", params={"limit": 2}).json()
    assert [r["blueprint_id"] for r in first["items"]] == ids[:2]
    assert (first["total"], first["next_offset"]) == (6, 2)
    last = client.get("/api/v1/blueprints", params={"limit": 4, "offset": 4}).json()
    assert len(last["items"]) == 2 and last["next_offset"] is None
    btd = client.get("/api/v1/blueprints", params={"layout": "BTD"}).json()
    assert btd["total"] == 1
    assert client.get("/api/v1/blueprints", params={"features": 8}).json()["total"] == 2
    assert client.get("/api/v1/blueprints", params={"blueprint_class": "conv"}).json()["total"] == 0
    assert client.get("/api/v1/blueprints", params={"limit": 0}).status_code == 400


def test_check_validates_without_storing(client: TestClient, kit: Any) -> None:
    ir = kit.make_ir()
    response = client.post("/api/v1/blueprints/check", json=kit.ir_json(ir))
    assert response.status_code == 200
    assert response.json() == {"blueprint_id": ir.ir_hash(), "parameter_count": 4256, "stored": False}
    assert _counts(client) == 0


def test_lineage_lists_parents_and_children(client: TestClient, kit: Any) -> None:
    parent = kit.submit(kit.make_ir(features=8))
    unknown_parent = "e" * 64
    child_ir = kit.make_ir(features=16, parent_ids=[parent, unknown_parent])
    child = kit.submit(child_ir)
    grandchild = kit.submit(kit.make_ir(features=24, parent_ids=[child]))
    view = client.get(f"/api/v1/blueprints/{child}/lineage").json()
    assert [(p["blueprint_id"], p["known"]) for p in view["parents"]] == [(parent, True), (unknown_parent, False)]
    assert view["parents"][0]["blueprint_class"] == BlueprintClass.MLP.value
    assert [c["blueprint_id"] for c in view["children"]] == [grandchild]
    assert client.get(f"/api/v1/blueprints/{parent}/lineage").json()["children"][0]["blueprint_id"] == child


def test_lineage_carries_the_mutation_record(client: TestClient, kit: Any) -> None:
    parent = kit.submit(kit.make_ir(features=8))
    record = MutationRecord(parent_id=parent, operator="change_width", generation=1, detail="up: width 16 -> 24")
    child = kit.submit(BlueprintIR.model_validate(kit.make_ir(features=16).model_dump() | {
        "parent_ids": [parent], "mutation": record.model_dump()}))
    view = BlueprintLineage.model_validate(client.get(f"/api/v1/blueprints/{child}/lineage").json())
    assert view.mutation == record and view.parents[0].mutation is None
    up = BlueprintLineage.model_validate(client.get(f"/api/v1/blueprints/{parent}/lineage").json())
    assert [(c.blueprint_id, c.mutation) for c in up.children] == [(child, record)]
    assert up.mutation is None  # a designed blueprint: generation 0, no record


def test_the_urza_client_pages_blueprints_and_reads_lineage_and_backlog(client: TestClient, kit: Any) -> None:
    urza = UrzaClient(http=client)
    parent = kit.submit(kit.make_ir(features=8))
    record = MutationRecord(parent_id=parent, operator="swap_activation", generation=1)
    child = urza.submit_blueprint(BlueprintIR.model_validate(kit.make_ir(features=16).model_dump() | {
        "parent_ids": [parent], "mutation": record.model_dump()}))
    page, total = urza.blueprints(limit=1, offset=1)
    assert total == 2 and [r.blueprint_id for r in page] == [child.blueprint_id]
    assert [r.ir.input.features for r in urza.blueprints(features=8)[0]] == [8]
    assert urza.lineage(child.blueprint_id).mutation == record
    assert urza.backlog().compilation_pending == 4
    with pytest.raises(KernelNotFoundError):
        urza.lineage("f" * 64)


def test_the_backlog_counts_compilations_and_validations_waiting(client: TestClient, kit: Any) -> None:
    def backlog() -> PipelineBacklog:
        return PipelineBacklog.model_validate(client.get("/api/v1/pipeline/backlog").json())

    assert backlog().total == 0
    a, b = kit.submit(kit.make_ir(features=8)), kit.submit(kit.make_ir(features=16))
    assert backlog().compilation_pending == 4  # fast + standard for each
    kit.compile(a, pipeline="fast")  # compiled: now waits for Urabrask
    assert (backlog().compilation_pending, backlog().validation_pending) == (3, 1)
    kit.post_result(kit.result(b, status="FAILED", pipeline="standard", error="no compiler"))
    assert backlog().compilation_pending == 2
    assert kit.validate(kit.artifact_id(a, "fast")).status_code == 200
    assert (backlog().compilation_pending, backlog().validation_pending) == (2, 0)


def _report(blueprint_id: str, report_id: str = "r1") -> dict[str, Any]:
    return FieldReport(report_id=report_id, blueprint_id=blueprint_id, seed_id="layer3:0", pre_metric=0.81,
                       post_metric=0.84, outcome=Outcome.FOSSILIZED, eval_metrics={"val_acc": 0.84}
                       ).model_dump(mode="json")


def test_field_reports_over_rest_are_stored_once(client: TestClient, kit: Any) -> None:
    bid = kit.submit(kit.make_ir())
    first = client.post(f"/api/v1/blueprints/{bid}/field-reports", json=_report(bid))
    again = client.post(f"/api/v1/blueprints/{bid}/field-reports", json=_report(bid))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {"report_id": "r1", "created": False}
    page = client.get(f"/api/v1/blueprints/{bid}/field-reports").json()
    assert page["total"] == 1 and page["items"][0]["post_metric"] == 0.84
    other = kit.submit(kit.make_ir(features=8))
    wrong = client.post(f"/api/v1/blueprints/{other}/field-reports", json=_report(bid, "r2"))
    assert wrong.status_code == 400 and "posted to blueprint" in wrong.json()["detail"]


def test_field_reports_arrive_from_the_bus(client: TestClient, kit: Any, test_bus: Any) -> None:
    bid = kit.submit(kit.make_ir())
    for report_id in ("a", "b", "a"):  # "a" twice: at-least-once delivery
        test_bus.publish("innovation.field_reports", _report(bid, report_id))
    test_bus.wait_until_idle()
    page = client.get(f"/api/v1/blueprints/{bid}/field-reports").json()
    assert sorted(r["report_id"] for r in page["items"]) == ["a", "b"]


def test_a_field_report_for_an_unknown_blueprint_ends_on_the_dead_letter_topic(client: TestClient,
                                                                                test_bus: Any) -> None:
    test_bus.publish("innovation.field_reports", _report("d" * 64))
    test_bus.wait_until_idle()
    dead = test_bus.read_dead_letters("innovation.field_reports", timeout_s=3)
    assert len(dead) == 1 and "no blueprint" in dead[0].error


def test_openapi_docs_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/api/v1/blueprints", "/api/v1/blueprints/{blueprint_id}", "/api/v1/kernels/query",
                 "/api/v1/kernels/{artifact_id}/binary", "/api/v1/blueprints/{blueprint_id}/lineage"):
        assert path in spec["paths"], path
    assert json.dumps(spec)  # serialisable


def test_unexpected_errors_are_500_with_a_trace_id(client: TestClient, urza: Any, monkeypatch: Any) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(urza.catalog, "page", broken)
    response = client.get("/api/v1/blueprints", headers={"X-Trace-Id": "trace-123"})
    assert response.status_code == 500
    assert response.json()["trace_id"] == "trace-123" == response.headers["x-trace-id"]
    assert "trace-123" in response.json()["detail"] and "disk on fire" not in response.json()["detail"]


def test_roles_guard_reads_writes_and_forced_status(urza_factory: Any, make_kit: Any) -> None:
    from esper_runtime.testing import DEV_SECRET, hs256_token

    def bearer(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {hs256_token(role)}"}

    kit = make_kit()
    urza = urza_factory(auth_hs256_secret=DEV_SECRET)
    body = kit.ir_json(kit.make_ir())
    with TestClient(urza.app) as client:
        assert client.get("/api/v1/blueprints").status_code == 401
        assert client.get("/api/v1/blueprints", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/api/v1/blueprints", headers=bearer("viewer")).status_code == 200
        denied = client.post("/api/v1/blueprints", json=body, headers=bearer("viewer"))
        assert denied.status_code == 403 and "needs the operator role" in denied.json()["detail"]
        allowed = client.post("/api/v1/blueprints", json=body, headers=bearer("operator"))
        assert allowed.status_code == 201
        artifact = kit.artifact_id(allowed.json()["blueprint_id"])  # not compiled yet: 404 once past the guard
        force = {"status": "FAILED", "reason": "taken out of service"}
        assert client.post(f"/api/v1/kernels/{artifact}/status", json=force,
                           headers=bearer("operator")).status_code == 403
        assert client.post(f"/api/v1/kernels/{artifact}/status", json=force,
                           headers=bearer("admin")).status_code == 404
        assert client.get("/healthz").status_code == 200  # operations endpoints stay open


def test_no_route_sends_a_dependency_to_the_thread_pool() -> None:
    # FastAPI runs a plain ``def`` dependency on its thread pool: a thread switch per request for a lookup.
    import inspect

    from fastapi.routing import APIRoute

    from esper_urza.api.blueprints import router as blueprints_router
    from esper_urza.api.kernels import router as kernels_router

    def calls(dependant: Any) -> list[Any]:
        return [d.call for d in dependant.dependencies] + [c for d in dependant.dependencies for c in calls(d)]

    routes = [r for router in (blueprints_router, kernels_router) for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 10
    blocking = {(r.path, getattr(c, "__qualname__", c)) for r in routes for c in calls(r.dependant)
                if not (inspect.iscoroutinefunction(c) or inspect.iscoroutinefunction(type(c).__call__))}
    assert not blocking
