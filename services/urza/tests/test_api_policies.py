"""``/api/v1/policies``: learned policy versions stored as JSON (never pickle), immutable, fetched by version."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_policy.network import artifact_sha256, load_artifact, random_network
from esper_urza_client import UrzaClient
from esper_urza_client.client import BinaryConflictError, UrzaError


def _artifact(version: str, seed: int = 0) -> dict[str, Any]:
    return random_network(version, hidden=(8,), seed=seed).to_artifact()


def test_a_policy_version_is_stored_and_served_back_exactly_with_its_digest(client: TestClient) -> None:
    artifact = _artifact("simic-1")
    put = client.put("/api/v1/policies/simic-1", json=artifact)
    assert put.status_code == 201 and put.json()["created"] is True
    digest = put.json()["sha256"]
    assert digest == artifact_sha256(artifact) == put.headers["x-content-sha256"]
    got = client.get("/api/v1/policies/simic-1")
    assert got.status_code == 200 and got.headers["x-content-sha256"] == digest
    assert got.json() == artifact
    load_artifact(got.json())  # what Tamiyo will do with it
    assert [p["version"] for p in client.get("/api/v1/policies").json()] == ["simic-1"]


def test_versions_are_immutable_the_same_document_again_is_a_no_op(client: TestClient) -> None:
    artifact = _artifact("v2")
    assert client.put("/api/v1/policies/v2", json=artifact).status_code == 201
    again = client.put("/api/v1/policies/v2", json=artifact)
    assert again.status_code == 200 and again.json()["created"] is False
    other = client.put("/api/v1/policies/v2", json=_artifact("v2", seed=1))
    assert other.status_code == 409 and "immutable" in other.json()["detail"]
    assert client.get("/api/v1/policies/v2").json() == artifact


@pytest.mark.parametrize(("version", "change", "reason"), [
    ("v3", lambda a: a.update(format="pickle"), "format"),
    ("v3", lambda a: a.update(version="v4"), "names version 'v4'"),
    ("v3", lambda a: a.pop("weights"), "lacks weights"),
    ("v3", lambda a: a.update(weights=[]), "weights must be"),
    ("bad%20version", lambda a: a.update(version="bad version"), "letters, digits"),
])
def test_a_malformed_artifact_is_refused_with_the_reason_and_nothing_is_stored(
        client: TestClient, version: str, change: Any, reason: str) -> None:
    artifact = _artifact("v3")
    change(artifact)
    response = client.put(f"/api/v1/policies/{version}", json=artifact)
    assert response.status_code == 400 and reason in response.json()["detail"]
    assert client.get("/api/v1/policies").json() == []
    assert client.put("/api/v1/policies/v5", content=b"[1, 2]",
                      headers={"Content-Type": "application/json"}).status_code in (400, 422)


def test_an_unknown_version_is_404_and_the_client_round_trips(client: TestClient) -> None:
    assert client.get("/api/v1/policies/nope").status_code == 404
    urza = UrzaClient(http=client)  # type: ignore[arg-type]
    artifact = _artifact("v6")
    digest = urza.put_policy("v6", artifact)
    body, sent = urza.policy("v6")
    assert body == artifact and sent == digest
    assert hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == digest
    with pytest.raises(BinaryConflictError):
        urza.put_policy("v6", _artifact("v6", seed=2))
    with pytest.raises(UrzaError) as failure:
        urza.policy("missing")
    assert failure.value.status == 404
