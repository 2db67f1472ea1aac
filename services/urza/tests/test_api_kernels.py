"""REST and bus write paths of kernel artifacts: binaries, compilation results, validation reports, status moves."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import CompiledKernelArtifact, UrabraskValidationReport


@pytest.fixture
def bid(kit: Any) -> str:
    """A stored blueprint's id."""
    blueprint_id: str = kit.submit(kit.make_ir())
    return blueprint_id


# --- binaries ---------------------------------------------------------------------------------------------------


def test_upload_is_checked_immutable_and_idempotent(client: TestClient, kit: Any, bid: str) -> None:
    aid = kit.artifact_id(bid)
    first = kit.upload(aid, b"compiled bytes")
    assert first.status_code == 201
    assert first.json()["sha256"] == hashlib.sha256(b"compiled bytes").hexdigest()
    assert first.json()["size_bytes"] == 14 and first.json()["created"] is True
    again = kit.upload(aid, b"compiled bytes")
    assert again.status_code == 200 and again.json()["created"] is False
    other = kit.upload(aid, b"different bytes")
    assert other.status_code == 409 and "immutable" in other.json()["detail"]
    download = client.get(f"/api/v1/kernels/{aid}/binary")
    assert download.content == b"compiled bytes"


def test_upload_with_a_wrong_digest_is_refused_and_stores_nothing(client: TestClient, kit: Any, bid: str) -> None:
    aid = kit.artifact_id(bid)
    wrong = kit.upload(aid, b"payload", sha=hashlib.sha256(b"something else").hexdigest())
    assert wrong.status_code == 400 and "body's sha256 is" in wrong.json()["detail"]
    missing = client.put(f"/api/v1/kernels/{aid}/binary", content=b"payload")
    assert missing.status_code == 400 and "X-Content-SHA256" in missing.json()["detail"]
    assert client.get(f"/api/v1/kernels/{aid}/binary").status_code == 404
    assert kit.upload(aid, b"payload").status_code == 201  # the corrected upload still works


def test_upload_for_a_malformed_id_or_unknown_blueprint(kit: Any) -> None:
    assert kit.upload("not-an-artifact-id", b"x").status_code == 400
    unknown = kit.upload(kit.artifact_id("c" * 64), b"x")
    assert unknown.status_code == 404 and "unknown" in unknown.json()["detail"]


def test_upload_over_the_binary_limit_is_413(urza_factory: Any, make_kit: Any) -> None:
    kit = make_kit()
    urza = urza_factory(max_binary_bytes=1000)
    with TestClient(urza.app) as client:
        kit.client = client
        aid = kit.artifact_id(kit.submit(kit.make_ir()))
        response = kit.upload(aid, b"x" * 1001)
        assert response.status_code == 413
        assert kit.upload(aid, b"x" * 1000).status_code == 201


def test_download_streams_with_digest_headers(client: TestClient, kit: Any, bid: str) -> None:
    data = bytes(range(256)) * 5000
    artifact = kit.compile(bid, data)
    response = client.get(f"/api/v1/kernels/{artifact['artifact_id']}/binary", params={"redirect": True})
    assert response.status_code == 200  # a file store has no presigned URLs: the bytes come directly
    assert response.content == data
    assert response.headers["x-content-sha256"] == hashlib.sha256(data).hexdigest()
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "application/octet-stream"
    head = client.head(f"/api/v1/kernels/{artifact['artifact_id']}/binary")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["x-content-sha256"] == response.headers["x-content-sha256"]
    assert head.headers["content-length"] == str(len(data))
    assert client.head(f"/api/v1/kernels/{kit.artifact_id(bid, 'standard')}/binary").status_code == 404


def test_unknown_artifact_is_404(client: TestClient, bid: str, kit: Any) -> None:
    aid = kit.artifact_id(bid)
    for path in (f"/api/v1/kernels/{aid}", f"/api/v1/kernels/{aid}/binary"):
        assert client.get(path).status_code == 404


# --- compilation results ------------------------------------------------------------------------------------------


def test_compiled_result_queues_validation_and_moves_to_validating(client: TestClient, kit: Any, bid: str,
                                                                   collect: Any) -> None:
    jobs = collect("validation.jobs")
    artifact = kit.compile(bid, b"kernel-bytes")
    assert artifact["status"] == "VALIDATING"
    assert artifact["sha256"] == hashlib.sha256(b"kernel-bytes").hexdigest()
    assert artifact["blob_uri"].startswith("file://")
    assert artifact["tags"] == ["residual_mlp", "library", "residual", "mlp", "capacity"]  # design tags come first
    (job,) = jobs.wait_for(1)
    assert (job.artifact_id, job.blueprint_id, job.hardware) == (artifact["artifact_id"], bid, "cpu")
    again = kit.post_result(kit.result(bid, b"kernel-bytes"))
    assert again.status_code == 200 and again.json()["decision"] == "duplicate"
    assert len(jobs.wait_for(2, timeout_s=0.3)) == 1
    detail = client.get(f"/api/v1/kernels/{artifact['artifact_id']}").json()
    assert [h["to_status"] for h in detail["history"]] == ["COMPILED", "VALIDATING"]
    assert detail["binary"]["size_bytes"] == 12 and detail["validation"] is None
    record = client.get(f"/api/v1/blueprints/{bid}").json()
    assert [a["artifact_id"] for a in record["artifacts"]] == [artifact["artifact_id"]]


def test_validation_can_be_switched_off(urza_factory: Any, make_kit: Any, collect: Any) -> None:
    kit = make_kit()
    jobs = collect("validation.jobs")
    with TestClient(urza_factory(validate_compiled=False).app) as client:
        kit.client = client
        artifact = kit.compile(kit.submit(kit.make_ir()))
    assert artifact["status"] == "COMPILED"
    assert jobs.wait_for(1, timeout_s=0.3) == []


def test_compiled_needs_the_binary_first(kit: Any, bid: str) -> None:
    response = kit.post_result(kit.result(bid, b"never uploaded"))
    assert response.status_code == 400 and "PUT /api/v1/kernels/" in response.json()["detail"]


def test_compiled_digest_must_match_the_upload(kit: Any, bid: str) -> None:
    body = kit.result(bid, b"reported bytes")
    kit.upload(body["artifact_id"], b"uploaded bytes")
    response = kit.post_result(body)
    assert response.status_code == 409 and "uploaded binary has sha256" in response.json()["detail"]


@pytest.mark.parametrize(("change", "status", "reason"), [
    ({"toolchain_hash": "ffffffffffff"}, 400, "does not match its parts"),
    ({"status": "VALIDATED"}, 400, "validation outcomes come from validation reports"),
    ({"hardware": "CPU!"}, 400, "malformed artifact id"),
], ids=["id-parts", "validated-in-result", "bad-hardware"])
def test_inconsistent_results_are_refused(kit: Any, bid: str, change: dict[str, Any], status: int,
                                          reason: str) -> None:
    body = kit.result(bid, status="COMPILING") | change
    response = kit.client.post(f"/api/v1/kernels/{kit.artifact_id(bid)}/compilation", json=body)
    assert response.status_code == status and reason in response.json()["detail"]


def test_path_and_body_must_name_the_same_artifact(kit: Any, bid: str) -> None:
    body = kit.result(bid, status="COMPILING")
    other = kit.artifact_id(bid, pipeline="standard")
    response = kit.client.post(f"/api/v1/kernels/{other}/compilation", json=body)
    assert response.status_code == 400 and "posted to" in response.json()["detail"]


def test_result_for_an_unknown_blueprint_is_404(kit: Any) -> None:
    response = kit.post_result(kit.result("a" * 64, status="COMPILING"))
    assert response.status_code == 404


def test_failure_then_retry_then_success(kit: Any, bid: str) -> None:
    pending = kit.post_result(kit.result(bid, status="PENDING")).json()
    assert (pending["decision"], pending["artifact"]["status"]) == ("applied", "PENDING")
    failed = kit.post_result(kit.result(bid, status="FAILED", error="inductor: out of memory")).json()
    assert failed["artifact"]["status"] == "FAILED" and failed["artifact"]["error"] == "inductor: out of memory"
    assert kit.post_result(kit.result(bid, status="COMPILING")).json()["decision"] == "applied"
    compiled = kit.compile(bid, b"second attempt")
    assert compiled["status"] == "VALIDATING" and compiled["error"] is None
    late = kit.post_result(kit.result(bid, status="FAILED", error="an older attempt"))
    assert late.status_code == 200 and late.json()["decision"] == "stale"
    assert late.json()["artifact"]["status"] == "VALIDATING"
    assert kit.post_result(kit.result(bid, status="COMPILING")).json()["decision"] == "stale"


# --- validation reports ---------------------------------------------------------------------------------------------


def test_validated_report_records_figures_and_tags(client: TestClient, kit: Any, bid: str) -> None:
    aid = kit.compile(bid)["artifact_id"]
    response = kit.validate(aid, latency=0.42, memory=3.5, tags=["high_speed", "low_memory"])
    assert response.status_code == 200
    artifact = response.json()["artifact"]
    assert artifact["status"] == "VALIDATED"
    assert artifact["tags"][-2:] == ["high_speed", "low_memory"]
    assert artifact["validation"]["latency_ms_mean"] == 0.42
    assert kit.validate(aid, latency=0.42, memory=3.5, tags=["high_speed", "low_memory"]).json()["decision"] in (
        "applied", "duplicate")  # a fresh measured_at refreshes; the same report would be a duplicate
    detail = client.get(f"/api/v1/kernels/{aid}").json()
    assert detail["validation"]["memory_mb_peak"] == 3.5


def test_a_newer_report_refreshes_tags_and_an_older_one_changes_nothing(kit: Any, bid: str) -> None:
    aid = kit.compile(bid)["artifact_id"]
    kit.validate(aid, tags=["medium_speed"], measured_at="2026-01-02T00:00:00Z")
    newer = kit.validate(aid, tags=["high_speed"], latency=0.5, measured_at="2026-01-03T00:00:00Z").json()
    assert newer["decision"] == "applied" and "high_speed" in newer["artifact"]["tags"]
    assert "medium_speed" not in newer["artifact"]["tags"]
    older = kit.validate(aid, tags=["low_speed"], measured_at="2026-01-01T00:00:00Z").json()
    assert older["decision"] == "duplicate" and "high_speed" in older["artifact"]["tags"]


def test_rejected_report_keeps_the_reason(kit: Any, bid: str) -> None:
    aid = kit.compile(bid)["artifact_id"]
    artifact = kit.validate(aid, passed=False).json()["artifact"]
    assert artifact["status"] == "REJECTED" and "numerical drift" in artifact["error"]
    flip = kit.validate(aid, passed=True)
    assert flip.status_code == 409 and "REJECTED -> VALIDATED" in flip.json()["detail"]


def test_reports_before_compilation_or_for_other_hardware_are_refused(kit: Any, bid: str) -> None:
    kit.post_result(kit.result(bid, status="COMPILING"))
    aid = kit.artifact_id(bid)
    early = kit.validate(aid)
    assert early.status_code == 409 and "COMPILING -> VALIDATED" in early.json()["detail"]
    kit.compile(bid)
    wrong_hw = kit.client.post(f"/api/v1/kernels/{aid}/validation", json=kit.report(aid) | {"hardware": "h100"})
    assert wrong_hw.status_code == 400 and "targets 'cpu'" in wrong_hw.json()["detail"]
    assert kit.validate(kit.artifact_id(bid, pipeline="standard")).status_code == 404


# --- bare status moves and atomicity ----------------------------------------------------------------------------------


def test_status_endpoint_is_a_compare_and_set(kit: Any, bid: str) -> None:
    kit.post_result(kit.result(bid, status="PENDING"))
    aid = kit.artifact_id(bid)
    url = f"/api/v1/kernels/{aid}/status"
    moved = kit.client.post(url, json={"status": "COMPILING", "expected_status": "PENDING"})
    assert moved.status_code == 200 and moved.json()["previous_status"] == "PENDING"
    lost = kit.client.post(url, json={"status": "FAILED", "expected_status": "PENDING", "reason": "timeout"})
    assert lost.status_code == 409 and "expected the artifact to be PENDING" in lost.json()["detail"]
    assert kit.client.post(url, json={"status": "VALIDATED"}).status_code == 400
    assert kit.client.post(url, json={"status": "FAILED"}).status_code == 400  # a failure needs its reason
    failed = kit.client.post(url, json={"status": "FAILED", "reason": "worker lost"}).json()
    assert failed["artifact"]["status"] == "FAILED" and failed["artifact"]["error"] == "worker lost"
    assert kit.client.post(f"/api/v1/kernels/{kit.artifact_id(bid, 'standard')}/status",
                           json={"status": "COMPILING"}).status_code == 404


def test_racing_claims_have_exactly_one_winner(kit: Any, bid: str) -> None:
    kit.post_result(kit.result(bid, status="PENDING"))
    url = f"/api/v1/kernels/{kit.artifact_id(bid)}/status"
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        codes.append(kit.client.post(url, json={"status": "COMPILING", "expected_status": "PENDING"}).status_code)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * 7


def test_racing_verdicts_leave_one_consistent_outcome(client: TestClient, kit: Any, bid: str) -> None:
    aid = kit.compile(bid)["artifact_id"]
    outcomes: list[tuple[bool, int]] = []
    barrier = threading.Barrier(6)

    def report(passed: bool) -> None:
        barrier.wait()
        outcomes.append((passed, kit.validate(aid, passed=passed).status_code))

    threads = [threading.Thread(target=report, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = client.get(f"/api/v1/kernels/{aid}").json()
    winner = final["artifact"]["status"] == "VALIDATED"
    assert all(code == 409 for passed, code in outcomes if passed != winner)
    history = [h["to_status"] for h in final["history"]]
    assert history.count("VALIDATED") + history.count("REJECTED") >= 1
    assert ("VALIDATED" in history) != ("REJECTED" in history)


# --- the same paths over the bus -------------------------------------------------------------------------------------


def test_bus_results_and_reports_drive_the_artifact(client: TestClient, kit: Any, bid: str, test_bus: Any,
                                                    collect: Any) -> None:
    jobs = collect("validation.jobs")
    body = kit.result(bid, b"from the bus")
    kit.upload(body["artifact_id"], b"from the bus")
    result = CompiledKernelArtifact.model_validate(body)
    test_bus.publish("compilation.results", result)
    test_bus.publish("compilation.results", result)  # redelivered
    test_bus.wait_until_idle()
    assert len(jobs.wait_for(1)) == 1
    assert client.get(f"/api/v1/kernels/{result.artifact_id}").json()["artifact"]["status"] == "VALIDATING"
    report = UrabraskValidationReport.model_validate(kit.report(result.artifact_id, tags=["high_speed"]))
    test_bus.publish("validation.reports", report)
    test_bus.wait_until_idle()
    artifact = client.get(f"/api/v1/kernels/{result.artifact_id}").json()["artifact"]
    assert artifact["status"] == "VALIDATED" and "high_speed" in artifact["tags"]
    history = client.get(f"/api/v1/kernels/{result.artifact_id}").json()["history"]
    assert {h["source"] for h in history} == {"bus", "urza"}


def test_an_illegal_move_from_the_bus_is_logged_and_acknowledged(client: TestClient, kit: Any, bid: str,
                                                                 test_bus: Any, caplog: Any) -> None:
    aid = kit.compile(bid)["artifact_id"]
    kit.validate(aid, passed=False)
    test_bus.publish("validation.reports", UrabraskValidationReport.model_validate(kit.report(aid)))
    test_bus.wait_until_idle()
    assert test_bus.read_dead_letters("validation.reports", timeout_s=0.2) == []
    assert client.get(f"/api/v1/kernels/{aid}").json()["artifact"]["status"] == "REJECTED"
    assert any("illegal status change REJECTED -> VALIDATED" in r.getMessage() for r in caplog.records)


def test_a_report_for_an_unknown_artifact_is_dead_lettered_at_once(client: TestClient, kit: Any, bid: str,
                                                                   test_bus: Any) -> None:
    aid = kit.artifact_id(bid, pipeline="aggressive")
    test_bus.publish("validation.reports", UrabraskValidationReport.model_validate(kit.report(aid)))
    test_bus.wait_until_idle()
    dead = test_bus.read_dead_letters("validation.reports", timeout_s=3)
    # It can never succeed (Urza sends validation jobs only for artifacts it holds): no redelivery is spent.
    assert len(dead) == 1 and dead[0].redelivery_count == 0 and "unknown kernel artifact" in dead[0].error
    assert dead[0].reason == "rejected"


def test_rotted_blob_bytes_are_refused_and_recorded(client: TestClient, kit: Any, urza: Any) -> None:
    from urllib.parse import unquote, urlparse

    blueprint_id = kit.submit(kit.make_ir())
    artifact_id = kit.compile(blueprint_id, b"good kernel bytes")["artifact_id"]
    assert client.get(f"/api/v1/kernels/{artifact_id}/binary").content == b"good kernel bytes"
    info = urza.ledger.binary(artifact_id)
    path = unquote(urlparse(info.blob_uri).path)
    with open(path, "r+b") as blob:  # the disk flips a byte under Urza
        blob.write(b"G")
    response = client.get(f"/api/v1/kernels/{artifact_id}/binary")
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert "corrupted" in detail and info.sha256 in detail
    history = client.get(f"/api/v1/kernels/{artifact_id}").json()["history"]
    assert history[-1]["source"] == "integrity" and "corrupted" in history[-1]["detail"]
