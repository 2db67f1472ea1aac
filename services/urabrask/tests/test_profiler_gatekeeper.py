"""The profiler's loop and memory probe, and the gatekeeper's verdicts on real artifacts."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from esper_contracts import (
    BlueprintClass,
    BlueprintIR,
    CompilationPipeline,
    CompiledKernelArtifact,
    IREdge,
    IRNode,
    KernelStatus,
    OpType,
    TensorInterface,
)
from esper_kernels import sha256_hex
from esper_urabrask.evaluate import evaluate
from esper_urabrask.profiler import PeakMemory, ProfileSettings, measure_latency, robust_cv


def record(aid: str, blob: bytes, sha: str, shape: list[int]) -> CompiledKernelArtifact:
    return CompiledKernelArtifact.for_id(aid, status=KernelStatus.VALIDATING, input_shape=shape, sha256=sha,
                                         size_bytes=len(blob))


def test_latency_of_a_known_duration_is_measured_and_consistent() -> None:
    settings = ProfileSettings(warmup_calls=3, warmup_s=0.0, round_s=0.02, min_rounds=4, max_rounds=6, budget_s=2.0)
    profile = measure_latency(lambda: time.sleep(0.002), settings=settings)
    assert 1.9 <= profile.p50_ms <= 6.0  # sleep overshoots a little, never undershoots
    assert profile.p50_ms <= profile.p99_ms and profile.mean_ms > 0
    assert 4 <= profile.rounds <= 6 and profile.calls >= 4 * 5
    assert profile.throughput_per_s == pytest.approx(1000 / profile.mean_ms, rel=0.2)
    assert profile.cv >= 0.0


def test_the_loop_stops_early_once_rounds_agree() -> None:
    x = torch.randn(64, 64)
    settings = ProfileSettings(min_rounds=5, max_rounds=200, target_cv=0.5, budget_s=5.0, round_s=0.005)
    profile = measure_latency(lambda: x @ x, settings=settings)
    assert profile.rounds == 5 and profile.cv <= 0.5


def test_the_cv_ignores_a_few_disturbed_rounds_but_not_a_noisy_measurement() -> None:
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0]
    assert robust_cv(steady) < 0.02
    assert robust_cv([*steady, 3.0]) < 0.02  # one round hit by another process
    assert robust_cv([1.0, 1.3, 0.7, 1.2, 0.8, 1.25, 0.75]) > 0.2


def test_peak_memory_sees_a_large_temporary_allocation() -> None:
    with PeakMemory("cpu") as mem:
        big = torch.ones(64, 1024, 1024)  # 256 MiB, touched
        del big
    assert mem.peak_mb >= 200


def test_a_correct_kernel_passes_with_its_drift_and_timings(kit: Any) -> None:
    ir = kit.blueprint(16)
    aid, blob, sha = kit.compiled(ir)
    ev = evaluate(record(aid, blob, sha, [8, 16]), blob, tolerance=1e-4, settings=kit.quick)
    assert ev.passed and ev.reason is None
    assert ev.drift <= 1e-5 and ev.stable
    assert 0 < ev.latency_ms_p50 <= ev.latency_ms_p99 and ev.calls > 0 and ev.throughput_per_s > 0


def test_a_program_that_is_not_its_irs_is_rejected(kit: Any) -> None:
    ir = kit.blueprint(16)
    aid, blob, _sha = kit.compiled(ir)
    _aid, other, _ = kit.compiled(kit.variant(ir, "act1", OpType.GELU))  # same weights, another function
    bad, sha = kit.with_programs_of(blob, other)
    ev = evaluate(record(aid, bad, sha, [8, 16]), bad, tolerance=1e-4, settings=kit.quick)
    assert not ev.passed and "differs from the eager reference" in (ev.reason or "")


@pytest.mark.slow
def test_a_native_kernel_with_a_wrong_backward_is_rejected(kit: Any) -> None:
    ir = kit.blueprint(8)
    standard = CompilationPipeline.STANDARD
    aid, blob, sha = kit.compiled(ir, [4, 8], standard)
    good = evaluate(record(aid, blob, sha, [4, 8]), blob, tolerance=1e-4, settings=kit.quick)
    assert good.passed, good.reason
    _aid, other, _ = kit.compiled(kit.variant(ir, "act1", OpType.GELU), [4, 8], standard)
    bad, bad_sha = kit.with_programs_of(blob, other, forward=False)  # right forward, wrong backward
    ev = evaluate(record(aid, bad, bad_sha, [4, 8]), bad, tolerance=1e-4, settings=kit.quick)
    assert not ev.passed and "gradient differs from the eager reference" in (ev.reason or ""), ev.reason


def test_non_finite_outputs_are_rejected(kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    iface = TensorInterface(layout="BD", features=4)
    ir = BlueprintIR(name="overflow", blueprint_class=BlueprintClass.MLP, input=iface, output=iface,
                     nodes=[IRNode(id="big", op=OpType.SCALE, attrs={"value": 1e30}), IRNode(id="sq", op=OpType.MUL)],
                     edges=[IREdge(src="input", dst="big"), IREdge(src="big", dst="sq", port=0),
                            IREdge(src="big", dst="sq", port=1), IREdge(src="sq", dst="output")])
    import esper_tezzeret.pipelines as pipelines

    # Tezzeret's own static check would refuse to compile this; Urabrask must not rely on that.
    monkeypatch.setattr(pipelines, "static_check", lambda ir, _shape: pipelines.seeded_module(ir))
    aid, blob, sha = kit.compiled(ir)
    ev = evaluate(record(aid, blob, sha, [8, 4]), blob, tolerance=1e-4, settings=kit.quick)
    assert not ev.passed and "non-finite" in (ev.reason or "")


def test_bytes_that_do_not_load_are_rejected_with_the_loader_error(kit: Any) -> None:
    ir = kit.blueprint(16)
    aid, blob, sha = kit.compiled(ir)
    ev = evaluate(record(aid, blob, sha, [8, 16]), blob[:-10], tolerance=1e-4, settings=kit.quick)
    assert not ev.passed and "load failed" in (ev.reason or "")
    other = b"garbage"
    ev = evaluate(record(aid, other, sha256_hex(other), [8, 16]), other, tolerance=1e-4, settings=kit.quick)
    assert not ev.passed and "KernelFormatError" in (ev.reason or "")
