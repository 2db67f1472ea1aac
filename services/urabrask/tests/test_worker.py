"""Urabrask's worker against a real Urza: jobs come from Urza over the bus, verdicts land in Urza's records."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from esper_contracts import KernelQuery, KernelStatus, OpType, Topic, ValidationJob
from esper_oona import Bus
from esper_runtime import JobWorker
from esper_urabrask.characterizer import Characterizer
from esper_urabrask.sandbox import KernelSandbox, SandboxCrash
from esper_urabrask.worker import ValidateWorker
from esper_urza_client import UrzaClient

S = KernelStatus


def worker(bus: Bus, urza: UrzaClient, kit: Any, **kw: Any) -> ValidateWorker:
    kw.setdefault("sandbox", KernelSandbox(isolated=False))
    return ValidateWorker(bus, urza, hardware="cpu", profile=kit.quick, **kw)


def serve(bus: Bus, w: ValidateWorker) -> None:
    """Put ``w`` behind a job worker on the 'cpu' pool's subscription, as the service does."""
    JobWorker(bus, Topic.VALIDATION_JOBS, "urabrask-cpu", w.process).start()


def test_a_compiled_artifact_is_validated_tagged_and_found_by_its_tags(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    serve(bus, worker(bus, urza, kit))
    ir = kit.blueprint(16)
    aid, blob, sha = kit.compiled(ir)
    kit.store(urza, ir, aid, blob, sha)  # Urza queues the ValidationJob
    kit.wait_until(lambda: kit.status_of(urza, aid) is S.VALIDATED, what="VALIDATED")
    art = urza.kernel(aid).artifact
    report = art.validation
    assert report is not None and report.passed and report.hardware == "cpu"
    assert 0 < report.latency_ms_p50 <= report.latency_ms_p99 and report.repeats > 0
    assert report.throughput_ops_per_sec > 0 and report.precision_drift_vs_fp32 <= 1e-5
    speed = next(t for t in report.tags if t.endswith("_speed"))
    assert "numerically_stable" in report.tags and set(report.tags) <= set(art.tags)
    found = urza.query(KernelQuery(tags_required=[speed, "bottleneck"], hardware="cpu"))
    assert [a.artifact_id for a in found.artifacts] == [aid]


def test_a_kernel_that_strays_from_its_reference_is_rejected_with_the_reason(
        bus: Bus, urza: UrzaClient, kit: Any) -> None:
    serve(bus, worker(bus, urza, kit))
    ir = kit.blueprint(16)
    aid, blob, _sha = kit.compiled(ir)
    _aid, other, _ = kit.compiled(kit.variant(ir, "act1", OpType.GELU))
    bad, bad_sha = kit.with_programs_of(blob, other)
    kit.store(urza, ir, aid, bad, bad_sha)
    kit.wait_until(lambda: kit.status_of(urza, aid) is S.REJECTED, what="REJECTED")
    art = urza.kernel(aid).artifact
    assert art.validation is not None and not art.validation.passed
    assert "differs from the eager reference" in (art.validation.rejection_reason or "")
    assert not urza.query(KernelQuery(hardware="cpu")).artifacts  # a rejected kernel is never offered


def test_a_repeated_job_is_not_measured_again(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    w = worker(bus, urza, kit)
    ir = kit.blueprint(16)
    aid, blob, sha = kit.compiled(ir)
    kit.store(urza, ir, aid, blob, sha)
    job = ValidationJob(artifact_id=aid, blueprint_id=ir.ir_hash(), hardware="cpu")
    assert w.process(job).outcome == "validated"
    kit.wait_until(lambda: kit.status_of(urza, aid) is S.VALIDATED, what="VALIDATED")
    assert w.process(job).outcome == "repeat"
    other = ValidationJob(artifact_id=aid, blueprint_id=ir.ir_hash(), hardware="cuda_sm90")
    assert w.process(other).outcome == "skipped"


def test_the_population_is_rebuilt_from_urza_after_a_restart(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    first = worker(bus, urza, kit)
    for features in (8, 16):
        ir = kit.blueprint(features)
        aid, blob, sha = kit.compiled(ir)
        kit.store(urza, ir, aid, blob, sha)
        first.process(ValidationJob(artifact_id=aid, blueprint_id=ir.ir_hash(), hardware="cpu"))
        kit.wait_until(lambda aid=aid: kit.status_of(urza, aid) is S.VALIDATED, what="VALIDATED")
    restarted = worker(bus, urza, kit, characterizer=Characterizer())
    assert restarted.seed_population() == 2 and restarted.characterizer.population("cpu") == 2


@pytest.mark.slow
def test_a_kernel_that_kills_the_sandbox_is_rejected_and_the_next_one_is_measured(
        bus: Bus, urza: UrzaClient, kit: Any) -> None:
    from dataclasses import replace

    sandbox = KernelSandbox(isolated=True, timeout_s=300)
    long = replace(kit.quick, min_rounds=10_000, max_rounds=10_000, budget_s=600, target_cv=1e-9)
    ir = kit.blueprint(16)
    aid, blob, sha = kit.compiled(ir)
    kit.store(urza, ir, aid, blob, sha)
    art = urza.kernel(aid).artifact

    def kill_child_soon() -> None:  # stands in for a kernel that segfaults mid-benchmark
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            proc = sandbox._proc
            if proc is not None and proc.is_alive() and time.monotonic() > start + 0.5:
                time.sleep(1.0)
                proc.kill()
                return
            time.sleep(0.05)

    start = time.monotonic()
    threading.Thread(target=kill_child_soon, daemon=True).start()
    with pytest.raises(SandboxCrash, match="SIGKILL"):
        sandbox.evaluate(art, blob, 1e-4, "cpu", long)
    w = ValidateWorker(bus, urza, hardware="cpu", sandbox=sandbox, profile=kit.quick)
    outcome = w.process(ValidationJob(artifact_id=aid, blueprint_id=ir.ir_hash(), hardware="cpu"))
    assert outcome.outcome == "validated" and sandbox.crashes == 1  # a fresh child took over
    sandbox.close()


def test_a_job_the_outbox_sends_twice_is_measured_once(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    """After a kill -9 Urza's outbox may publish a validation job again with the same id: no second measurement."""
    w = worker(bus, urza, kit)
    measured: list[str] = []
    process = w.process

    def counting(job: ValidationJob, envelope: Any = None) -> Any:
        outcome = process(job) if envelope is None else process(job, envelope)
        if outcome.outcome == "validated":
            measured.append(job.job_id)
        return outcome

    jobs: list[Any] = []
    bus.subscribe(Topic.VALIDATION_JOBS, "test-copy", lambda env: jobs.append(env.payload))
    job_worker = JobWorker(bus, Topic.VALIDATION_JOBS, "urabrask-cpu", counting)
    job_worker.start()
    ir = kit.blueprint(16)
    aid, blob, sha = kit.compiled(ir)
    kit.store(urza, ir, aid, blob, sha)  # Urza queues the ValidationJob
    kit.wait_until(lambda: kit.status_of(urza, aid) is S.VALIDATED and len(jobs) == 1, what="VALIDATED")
    bus.publish(Topic.VALIDATION_JOBS, jobs[0], key=aid)  # the resend: the very same job id
    kit.wait_until(lambda: job_worker.health().duplicates == 1, what="the repeat to be acknowledged")
    assert measured == [jobs[0].job_id] and job_worker.health().done == 1
