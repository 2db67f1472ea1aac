"""Bad input an operator's tooling or a fuzzer sends: every refusal is a 400 naming the field, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts.base import MAX_INT32

HUGE = [2**31, 2**63, 10**30]


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("path", ["/api/v1/blueprints", "/api/v1/blueprints/{id}/field-reports"])
def test_an_offset_past_any_stored_integer_is_a_400(client: TestClient, kit: Any, path: str, value: int) -> None:
    blueprint_id = kit.submit(kit.make_ir())
    for param in ("offset", "limit"):
        response = client.get(path.format(id=blueprint_id), params={param: value})
        assert response.status_code == 400, response.text
        assert param in response.json()["detail"] and str(MAX_INT32) in response.json()["detail"]
    assert client.get(path.format(id=blueprint_id), params={"offset": MAX_INT32}).status_code == 200


def test_a_features_filter_past_any_stored_integer_is_a_400(client: TestClient) -> None:
    response = client.get("/api/v1/blueprints", params={"features": 10**30})
    assert response.status_code == 400 and "features" in response.json()["detail"]


@pytest.mark.parametrize("value", HUGE)
def test_a_kernel_query_with_huge_interface_features_is_a_400(client: TestClient, value: int) -> None:
    response = client.post("/api/v1/kernels/query", json={"interface": {"layout": "BD", "features": value}})
    assert response.status_code == 400, response.text
    assert "interface.features" in response.json()["detail"]


@pytest.mark.parametrize("field", ["version", "edge-port", "input-features"])
@pytest.mark.parametrize("value", HUGE)
def test_check_and_submit_agree_on_integer_bounds(client: TestClient, kit: Any, field: str, value: int) -> None:
    body = kit.ir_json(kit.make_ir())
    if field == "version":
        body["version"] = value
    elif field == "edge-port":
        body["edges"][0]["port"] = value
    else:
        body["input"]["features"] = value
    checked = client.post("/api/v1/blueprints/check", json=body)
    submitted = client.post("/api/v1/blueprints", json=body)
    assert (checked.status_code, submitted.status_code) == (400, 400), (checked.text, submitted.text)
    assert checked.json()["detail"] == submitted.json()["detail"]
    assert client.get("/api/v1/blueprints").json()["total"] == 0


def test_the_largest_accepted_version_is_stored_and_read_back(client: TestClient, kit: Any) -> None:
    body = kit.ir_json(kit.make_ir())
    body["version"] = MAX_INT32
    assert client.post("/api/v1/blueprints/check", json=body).status_code == 200
    created = client.post("/api/v1/blueprints", json=body)
    assert created.status_code == 201, created.text
    assert client.get(f"/api/v1/blueprints/{created.json()['blueprint_id']}").json()["ir"]["version"] == MAX_INT32


def test_the_openapi_schema_states_the_bounds(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in schema["paths"]["/api/v1/blueprints"]["get"]["parameters"]}
    assert params["offset"]["maximum"] == MAX_INT32
    assert params["features"]["anyOf"][0]["maximum"] == MAX_INT32
    interface = schema["components"]["schemas"]["TensorInterface"]["properties"]["features"]
    assert interface["maximum"] == MAX_INT32


@pytest.mark.parametrize("where", ["tag", "description", "attr", "parent"])
def test_a_nul_character_in_any_stored_string_is_refused_up_front(client: TestClient, kit: Any, collect: Any,
                                                                 where: str) -> None:
    jobs = collect("compilation.jobs")
    body = kit.ir_json(kit.make_ir())
    if where == "tag":
        body["tags"] = ["ok", "bad\x00tag"]
    elif where == "description":
        body["description"] = "text\x00"
    elif where == "attr":
        body["nodes"][0]["attrs"]["note"] = "x\x00"
    else:
        body["parent_ids"] = ["p\x00"]
    for path in ("/api/v1/blueprints/check", "/api/v1/blueprints"):
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert "NUL character" in response.json()["detail"]
    assert client.get("/api/v1/blueprints").json()["total"] == 0
    assert jobs.wait_for(1, timeout_s=0.3) == []


def test_a_nul_character_in_a_filter_or_a_status_reason_is_a_400(client: TestClient, kit: Any) -> None:
    response = client.get("/api/v1/blueprints", params={"name": "a\x00"})
    assert response.status_code == 400 and "NUL character" in response.json()["detail"]
    query = client.post("/api/v1/kernels/query", json={"tags_required": ["a\x00"]})
    assert query.status_code == 400 and "NUL character" in query.json()["detail"]
    blueprint_id = kit.submit(kit.make_ir())
    artifact_id = kit.artifact_id(blueprint_id)
    failed = client.post(f"/api/v1/kernels/{artifact_id}/status", json={"status": "FAILED", "reason": "boom\x00"})
    assert failed.status_code == 400 and "NUL character" in failed.json()["detail"]


def test_a_scaffold_blueprint_without_sunset_metadata_is_a_400(client: TestClient, kit: Any) -> None:
    body = kit.ir_json(kit.make_ir())
    body["blueprint_class"] = "scaffold"  # a scaffold must say when it leaves (seed 002 §7)
    body.pop("sunset", None)
    response = client.post("/api/v1/blueprints", json=body)
    assert response.status_code == 400, response.text
    assert "sunset" in response.json()["detail"]
    assert client.get("/api/v1/blueprints").json()["total"] == 0
