"""Urza's API over the production backends: a real PostgreSQL database and a real S3 server.

The same service code as the unit tests (which run on SQLite and a folder); only the storage URLs
differ. Each test gets a fresh database on the root fixture's server and its own S3 prefix.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from botocore.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from esper_contracts import TensorInterface, UrabraskValidationReport, family
from esper_oona import connect
from esper_oona.memory_bus import drop_memory_broker
from esper_oona.testing import wait_for
from esper_urza.library import library_blueprints
from esper_urza.service import create_service

pytestmark = pytest.mark.integration

TOOLCHAIN = "0123456789ab"


@pytest.fixture
def database_url(postgres_database_url: str) -> str:
    """A throwaway database on the real PostgreSQL server (the root conftest's)."""
    return postgres_database_url


@pytest.fixture
def blob_url(s3_config: dict[str, str]) -> str:
    """A fresh prefix in a bucket on the real S3 server."""
    query = urlencode({"endpoint_url": s3_config["endpoint_url"], "access_key_id": s3_config["access_key"],
                       "secret_access_key": s3_config["secret_key"], "region": s3_config.get("region", "us-east-1")})
    return f"s3://esper-urza-it/{uuid.uuid4().hex[:12]}?{query}"


@pytest.fixture
def bus_url() -> Iterator[str]:
    name = f"urza-it-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    drop_memory_broker(name)


@pytest.fixture
def make_urza(database_url: str, blob_url: str, bus_url: str, tmp_path: Any) -> Any:
    def make(**overrides: Any) -> Any:
        values = {"database_url": database_url, "blob_url": blob_url, "bus_url": bus_url, "data_dir": tmp_path,
                  "seed_library": False, "outbox_interval_s": 0.1, "nack_delay_ms": 20}
        return create_service(**(values | overrides))
    return make


def _ir(features: int = 24) -> dict[str, Any]:
    ir = family("residual_mlp").blueprint(TensorInterface(layout="BD", features=features), origin="test", expansion=2)
    return ir.model_dump(mode="json")


def _result(blueprint_id: str, data: bytes, status: str = "COMPILED", pipeline: str = "fast") -> dict[str, Any]:
    body: dict[str, Any] = {"artifact_id": f"{blueprint_id}-cpu-{pipeline}-{TOOLCHAIN}", "blueprint_id": blueprint_id,
                            "hardware": "cpu", "pipeline": pipeline, "toolchain_hash": TOOLCHAIN, "status": status,
                            "input_shape": [32, 24]}
    if status == "COMPILED":
        body["sha256"] = hashlib.sha256(data).hexdigest()
    return body


def _compile(client: TestClient, blueprint_id: str, data: bytes, pipeline: str = "fast") -> dict[str, Any]:
    body = _result(blueprint_id, data, pipeline=pipeline)
    upload = client.put(f"/api/v1/kernels/{body['artifact_id']}/binary", content=data,
                        headers={"X-Content-SHA256": body["sha256"]})
    assert upload.status_code == 201, upload.text
    response = client.post(f"/api/v1/kernels/{body['artifact_id']}/compilation", json=body)
    assert response.status_code == 200, response.text
    artifact: dict[str, Any] = response.json()["artifact"]
    return artifact


def _report(artifact_id: str, passed: bool = True, tags: tuple[str, ...] = ("high_speed",)) -> dict[str, Any]:
    report = {"artifact_id": artifact_id, "hardware": "cpu", "passed": passed, "latency_ms_mean": 0.3,
              "memory_mb_peak": 2.0, "tags": list(tags)}
    return report | ({} if passed else {"rejection_reason": "crashed on load"})


def test_the_full_artifact_flow_on_postgres_and_s3(make_urza: Any, bus_url: str, s3_config: dict[str, str],
                                                   database_url: str) -> None:
    observer = connect(bus_url, producer_name="it")
    compile_jobs: list[Any] = []
    validation_jobs: list[Any] = []
    observer.subscribe("compilation.jobs", "it", lambda e: compile_jobs.append(e.payload), initial_position="earliest")
    observer.subscribe("validation.jobs", "it", lambda e: validation_jobs.append(e.payload),
                       initial_position="earliest")
    urza = make_urza(seed_library=True)
    with TestClient(urza.app) as client:
        n = len(library_blueprints())
        assert client.get("/api/v1/blueprints", params={"limit": 100}).json()["total"] == n
        created = client.post("/api/v1/blueprints", json=_ir())
        assert created.status_code == 201
        bid = created.json()["blueprint_id"]
        assert client.post("/api/v1/blueprints", json=_ir()).status_code == 200
        bad = _ir()
        bad["nodes"][1]["attrs"]["in_features"] = 5
        refused = client.post("/api/v1/blueprints", json=bad)
        assert refused.status_code == 400 and "in_features=5" in refused.json()["detail"]
        # The outbox is sent by Urza's dispatcher thread, after the request has answered.
        wait_for(lambda: len(compile_jobs) == 2 * (n + 1), what="the compilation jobs")

        data = bytes(range(256)) * 4096  # 1 MiB, streamed through S3
        artifact = _compile(client, bid, data)
        assert artifact["status"] == "VALIDATING" and artifact["blob_uri"].startswith("s3://esper-urza-it/")
        wait_for(lambda: [j.artifact_id for j in validation_jobs] == [artifact["artifact_id"]],
                 what="the validation job")
        other = client.put(f"/api/v1/kernels/{artifact['artifact_id']}/binary", content=b"other",
                           headers={"X-Content-SHA256": hashlib.sha256(b"other").hexdigest()})
        assert other.status_code == 409

        s3 = boto3.client("s3", endpoint_url=s3_config["endpoint_url"], aws_access_key_id=s3_config["access_key"],
                          aws_secret_access_key=s3_config["secret_key"], region_name=s3_config.get("region"),
                          config=Config(s3={"addressing_style": "path"}))
        bucket, key = artifact["blob_uri"].removeprefix("s3://").split("/", 1)
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(data)

        streamed = client.get(f"/api/v1/kernels/{artifact['artifact_id']}/binary")
        assert streamed.content == data and streamed.headers["x-content-sha256"] == hashlib.sha256(data).hexdigest()
        redirect = client.get(f"/api/v1/kernels/{artifact['artifact_id']}/binary", params={"redirect": True},
                              follow_redirects=False)
        assert redirect.status_code == 307
        with urllib.request.urlopen(redirect.headers["location"], timeout=10) as response:
            assert response.read() == data

        report = UrabraskValidationReport.model_validate(_report(artifact["artifact_id"]))
        observer.publish("validation.reports", report)
        observer.wait_until_idle()
        found = client.post("/api/v1/kernels/query", json={"tags_required": ["high_speed"],
                                                           "interface": {"layout": "BD", "features": 24}}).json()
        assert [a["artifact_id"] for a in found["artifacts"]] == [artifact["artifact_id"]]
        assert found["artifacts"][0]["status"] == "VALIDATED"
        before = client.get(f"/api/v1/blueprints/{bid}").json()

    with TestClient(make_urza(seed_library=True).app) as client:  # restart: same database, same bucket
        assert client.get(f"/api/v1/blueprints/{bid}").json() == before
        assert client.get(f"/api/v1/kernels/{artifact['artifact_id']}/binary").content == data
        assert client.get("/api/v1/blueprints", params={"limit": 100}).json()["total"] == n + 1
    observer.close()

    engine = create_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"blueprints", "artifacts", "artifact_tags", "outbox", "alembic_version_esper_urza"} <= tables


def test_status_changes_are_atomic_on_postgres(make_urza: Any) -> None:
    with TestClient(make_urza().app) as client:
        bid = client.post("/api/v1/blueprints", json=_ir()).json()["blueprint_id"]
        pending = _result(bid, b"", status="PENDING")
        assert client.post(f"/api/v1/kernels/{pending['artifact_id']}/compilation", json=pending).status_code == 200
        url = f"/api/v1/kernels/{pending['artifact_id']}/status"
        codes: list[int] = []
        barrier = threading.Barrier(8)

        def claim() -> None:
            barrier.wait()
            codes.append(client.post(url, json={"status": "COMPILING", "expected_status": "PENDING"}).status_code)

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200] + [409] * 7

        artifact = _compile(client, bid, b"verdicts", pipeline="standard")
        outcomes: list[tuple[bool, int]] = []
        barrier = threading.Barrier(6)

        def verdict(passed: bool) -> None:
            barrier.wait()
            response = client.post(f"/api/v1/kernels/{artifact['artifact_id']}/validation",
                                   json=_report(artifact["artifact_id"], passed=passed))
            outcomes.append((passed, response.status_code))

        threads = [threading.Thread(target=verdict, args=(i % 2 == 0,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = client.get(f"/api/v1/kernels/{artifact['artifact_id']}").json()
        won = final["artifact"]["status"] == "VALIDATED"
        assert all(code == 409 for passed, code in outcomes if passed != won)
        statuses = [h["to_status"] for h in final["history"]]
        assert ("VALIDATED" in statuses) != ("REJECTED" in statuses)


def test_two_replicas_on_one_database_share_the_outbox_without_loss(make_urza: Any, bus_url: str) -> None:
    observer = connect(bus_url, producer_name="it")
    jobs: list[Any] = []
    observer.subscribe("compilation.jobs", "it", lambda e: jobs.append(e.payload.job_id), initial_position="earliest")
    first, second = make_urza(), make_urza(subscription="urza")
    with TestClient(first.app) as a, TestClient(second.app) as b:
        for i, features in enumerate(range(8, 48, 4)):
            client = a if i % 2 else b
            assert client.post("/api/v1/blueprints", json=_ir(features)).status_code == 201
        for client in (a, b):
            assert client.post("/api/v1/blueprints", json=_ir(8)).status_code == 200
    observer.wait_until_idle()
    observer.close()
    assert len(jobs) == 20 and len(set(jobs)) == 20  # every job sent, none twice
