"""Tezzeret's worker against a real Urza: compile once, store once, adopt what is stored, fail for good."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch

from esper_contracts import CompilationJob, CompilationPipeline, KernelStatus, Topic
from esper_kernels import load_compiled, open_kernel_artifact, reference_module
from esper_oona import Bus
from esper_oona.testing import wait_for
from esper_runtime import JobWorker
from esper_tezzeret.pipelines import CompiledOutput, CompileError, compile_artifact, plan_artifact_id
from esper_tezzeret.worker import FINISHED, CompileWorker, JobOutcome
from esper_urza_client import UrzaClient, UrzaError

S = KernelStatus
FAST = CompilationPipeline.FAST


def job_for(kit: Any, urza: UrzaClient, *, features: int = 16, shape: list[int] | None = None,
            hardware: str = "cpu", pipeline: CompilationPipeline = FAST, max_attempts: int = 3) -> CompilationJob:
    ir = kit.blueprint(features)
    urza.submit_blueprint(ir)  # Urza must know the blueprint to record its artifacts
    return CompilationJob(blueprint_id=ir.ir_hash(), ir=ir, pipeline=pipeline, hardware=hardware,
                          input_shape=shape or [8, features], max_attempts=max_attempts)


def never(*_args: Any) -> CompiledOutput:
    raise AssertionError("the compiler must not run for this job")


def serve(bus: Bus, worker: CompileWorker) -> list[JobOutcome]:
    """Put ``worker`` behind a job worker on the 'cpu' pool's subscription, as the service does; its outcomes."""
    outcomes: list[JobOutcome] = []
    JobWorker(bus, Topic.COMPILATION_JOBS, "tezzeret-cpu", worker.process,
              observe=lambda _job, outcome: outcomes.append(outcome)).start()
    return outcomes


def test_a_submitted_blueprint_is_compiled_stored_and_reported(bus: Bus, urza: UrzaClient, kit: Any,
                                                               collect: Callable[..., Any]) -> None:
    results = collect("compilation.results")
    outcomes = serve(bus, CompileWorker(bus, urza, hardware="cpu"))
    ir = kit.blueprint(16)
    record = urza.submit_blueprint(ir)  # Urza queues one fast job for 'cpu'; the worker takes it from the bus
    kit.wait_until(lambda: [a.status for a in urza.blueprint(record.blueprint_id).artifacts] == [S.COMPILED],
                   what="the artifact to be COMPILED")
    art = urza.blueprint(record.blueprint_id).artifacts[0]
    assert art.compile_time_s is not None and art.compile_time_s > 0
    data, digest = urza.binary(art.artifact_id)
    assert digest == art.sha256
    kernel = load_compiled(data, digest)
    reference = reference_module(open_kernel_artifact(data, digest))
    x = torch.randn(5, 16)
    assert torch.allclose(kernel(x), reference(x), atol=1e-6)
    assert [r.status for r in results.payloads] == [S.COMPILING, S.COMPILED]
    assert [o.outcome for o in outcomes] == ["compiled"]


def test_the_artifact_id_is_known_before_compiling_and_the_same_everywhere(kit: Any) -> None:
    ir = kit.blueprint(16)
    planned = plan_artifact_id(ir, FAST, "cpu", [8, 16], "cpu")
    assert planned == plan_artifact_id(ir.model_copy(update={"name": "renamed"}), FAST, "cpu", [8, 16], "cpu")
    assert planned != plan_artifact_id(ir, FAST, "cpu", [64, 16], "cpu")  # the traced shape is a compile option
    assert planned != plan_artifact_id(ir, CompilationPipeline.STANDARD, "cpu", [8, 16], "cpu")
    out = compile_artifact(ir, FAST, "cpu", [8, 16])
    assert out.artifact_id == planned
    assert compile_artifact(ir, FAST, "cpu", [8, 16]).blob == out.blob  # fast programs are byte-deterministic


def test_a_repeated_job_is_acknowledged_without_compiling(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    job = job_for(kit, urza)
    first = CompileWorker(bus, urza, hardware="cpu").process(job)
    assert first.outcome == "compiled"
    # Urza learns of the result from the bus, on its own consumer thread: wait until it has.
    wait_for(lambda: urza.kernel(first.artifact_id).artifact.status in FINISHED, what="Urza to record the result")
    again = CompileWorker(bus, urza, hardware="cpu", compiler=never).process(job)
    assert again.outcome == "repeat" and again.status in (S.COMPILED, S.VALIDATING)


def test_bytes_stored_by_a_worker_that_died_are_adopted(bus: Bus, urza: UrzaClient, kit: Any,
                                                        collect: Callable[..., Any]) -> None:
    results = collect("compilation.results")
    job = job_for(kit, urza)
    out = compile_artifact(job.ir, FAST, "cpu", job.input_shape)
    assert urza.put_binary(out.artifact_id, out.blob, out.sha256)  # ... and then the worker was killed
    outcome = CompileWorker(bus, urza, hardware="cpu", compiler=never).process(job)
    assert outcome.outcome == "adopted"
    kit.wait_until(lambda: kit.status_of(urza, out.artifact_id) is S.COMPILED, what="COMPILED")
    assert urza.kernel(out.artifact_id).artifact.sha256 == out.sha256
    assert [r.status for r in results.payloads] == [S.COMPILED]


def test_a_worker_that_loses_the_upload_race_adopts_the_stored_blob(bus: Bus, urza: UrzaClient, kit: Any,
                                                                    collect: Callable[..., Any]) -> None:
    results = collect("compilation.results")
    job = job_for(kit, urza)
    first = compile_artifact(job.ir, FAST, "cpu", job.input_shape)

    def slow_and_different(*args: Any) -> CompiledOutput:
        # While this worker compiles, another one stores its bytes; AOTInductor output differs run to run,
        # which the extra trailing bytes stand in for.
        out = compile_artifact(*args)
        assert urza.put_binary(first.artifact_id, first.blob, first.sha256)
        blob = out.blob + b"\0"
        return replace(out, blob=blob, sha256=hashlib.sha256(blob).hexdigest())

    outcome = CompileWorker(bus, urza, hardware="cpu", compiler=slow_and_different).process(job)
    assert outcome.outcome == "adopted"
    kit.wait_until(lambda: kit.status_of(urza, first.artifact_id) is S.COMPILED, what="COMPILED")
    assert urza.binary(first.artifact_id)[1] == first.sha256  # one artifact, the first bytes
    assert {r.sha256 for r in results.payloads if r.status is S.COMPILED} == {first.sha256}


def test_compiler_errors_are_retried_then_reported_failed_and_acknowledged(
        bus: Bus, urza: UrzaClient, kit: Any) -> None:
    calls = []

    def broken(*_args: Any) -> CompiledOutput:
        calls.append(1)
        raise CompileError("standard compile failed: CppCompileError: g++ exited with 1: no space left on device")

    job = job_for(kit, urza, max_attempts=2)
    worker = CompileWorker(bus, urza, hardware="cpu", compiler=broken)
    outcome = worker.process(job)
    assert outcome.outcome == "failed" and outcome.attempts == 2 and len(calls) == 2
    aid = plan_artifact_id(job.ir, FAST, "cpu", job.input_shape, "cpu")
    kit.wait_until(lambda: kit.status_of(urza, aid) is S.FAILED, what="FAILED")
    error = urza.kernel(aid).artifact.error or ""
    assert "no space left on device" in error and "after 2 attempts" in error
    assert worker.process(job).outcome == "repeat"  # a redelivered failed job is not compiled again


def test_a_static_validation_failure_is_final_at_once(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    job = job_for(kit, urza, shape=[8, 99])
    outcome = CompileWorker(bus, urza, hardware="cpu").process(job)
    assert outcome.outcome == "failed" and outcome.attempts == 1
    aid = plan_artifact_id(job.ir, FAST, "cpu", job.input_shape, "cpu")
    kit.wait_until(lambda: kit.status_of(urza, aid) is S.FAILED, what="FAILED")
    assert "does not fit" in (urza.kernel(aid).artifact.error or "")


def test_a_handler_that_dies_mid_job_gets_the_job_again(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    died = []

    def dies_once(*args: Any) -> CompiledOutput:
        if not died:
            died.append(1)
            raise RuntimeError("worker lost mid-compile")  # not a CompileError: the handler raises, no ack
        return compile_artifact(*args)

    outcomes = serve(bus, CompileWorker(bus, urza, hardware="cpu", compiler=dies_once))
    record = urza.submit_blueprint(kit.blueprint(16))
    kit.wait_until(lambda: [a.status for a in urza.blueprint(record.blueprint_id).artifacts] == [S.COMPILED],
                   what="the redelivered job to complete")
    assert died and [o.outcome for o in outcomes] == ["compiled"]


def test_jobs_for_other_hardware_are_left_to_their_pool(bus: Bus, urza: UrzaClient, kit: Any) -> None:
    job = job_for(kit, urza, hardware="cuda_sm90")
    assert CompileWorker(bus, urza, hardware="cpu", compiler=never).process(job).outcome == "skipped"


def test_an_unreachable_urza_makes_the_job_come_back(bus: Bus, kit: Any) -> None:
    ir = kit.blueprint(16)
    job = CompilationJob(blueprint_id=ir.ir_hash(), ir=ir, pipeline=FAST, hardware="cpu", input_shape=[8, 16])
    down = UrzaClient("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(UrzaError, match="unreachable"):
        CompileWorker(bus, down, hardware="cpu", compiler=never).process(job)


@pytest.mark.slow
def test_the_standard_pipeline_builds_an_aoti_kernel_that_matches(kit: Any) -> None:
    ir = kit.blueprint(8)
    out = compile_artifact(ir, CompilationPipeline.STANDARD, "cpu", [4, 8])
    assert out.manifest is not None and out.manifest.cpu_isa  # the ISA the package was built for travels along
    kernel = load_compiled(out.blob, out.sha256)
    reference = reference_module(open_kernel_artifact(out.blob, out.sha256))
    for batch in (4, 1, 9):
        x = torch.randn(batch, 8)
        assert torch.allclose(kernel(x), reference(x), atol=1e-5)


def test_a_job_the_outbox_sends_twice_is_compiled_once(bus: Bus, urza: UrzaClient, kit: Any,
                                                       collect: Callable[..., Any]) -> None:
    """After a kill -9 Urza's outbox may publish a job again with the same id: no second compilation."""
    jobs, results = collect("compilation.jobs"), collect("compilation.results")
    calls: list[Any] = []

    def counting(*args: Any) -> CompiledOutput:
        calls.append(args)
        return compile_artifact(*args)

    worker = JobWorker(bus, Topic.COMPILATION_JOBS, "tezzeret-cpu",
                       CompileWorker(bus, urza, hardware="cpu", compiler=counting).process)
    worker.start()
    record = urza.submit_blueprint(kit.blueprint(16))
    kit.wait_until(lambda: [a.status for a in urza.blueprint(record.blueprint_id).artifacts] == [S.COMPILED],
                   what="the artifact to be COMPILED")
    [job] = jobs.wait_for(1)
    bus.publish(Topic.COMPILATION_JOBS, job, key=job.blueprint_id)  # the resend: the very same job id
    kit.wait_until(lambda: worker.health().duplicates == 1, what="the repeat to be acknowledged")
    assert len(calls) == 1 and worker.health().done == 1
    assert [r.status for r in results.payloads] == [S.COMPILING, S.COMPILED]
