"""Where Tamiyo finds kernels in distributed mode: only VALIDATED, measured kernels, and Urza errors never mean
"no kernels" (issue 10)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from esper_contracts import (
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    KernelStatus,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    TensorInterface,
    UrabraskValidationReport,
    artifact_id,
)
from esper_policy import TamiyoConfig, build_policy
from esper_tamiyo.controller import TamiyoController
from esper_tamiyo.domains import HierarchicalControlConfig
from esper_tamiyo.kernels import KernelsUnavailable, RiskFilter, UrzaKernels
from esper_tamiyo.service import create_service

BD4 = TensorInterface(layout="BD", features=4)


def kernel(n: int, *, status: KernelStatus = KernelStatus.VALIDATED, report: bool = True,
           passed: bool = True) -> CompiledKernelArtifact:
    aid = artifact_id(f"{n:064x}", "cpu", CompilationPipeline.STANDARD, "0123456789abcdef")
    validation = UrabraskValidationReport(artifact_id=aid, hardware="cpu", passed=passed, latency_ms_p50=0.1,
                                          memory_mb_peak=1.0,
                                          rejection_reason=None if passed else "drift") if report else None
    return CompiledKernelArtifact(artifact_id=aid, blueprint_id=f"{n:064x}", hardware="cpu",
                                  pipeline=CompilationPipeline.STANDARD, toolchain_hash="0123456789abcdef",
                                  status=status, validation=validation, input_shape=[1, 4], tags=["bottleneck"])


class FlakyUrza:
    """An Urza over HTTP (httpx's mock transport) that fails the first ``failures`` queries with ``status``."""

    def __init__(self, artifacts: list[CompiledKernelArtifact], failures: int = 0, status: int = 503) -> None:
        self.artifacts, self.failures, self.status = artifacts, failures, status
        self.queries: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.queries.append(json.loads(request.content))
        if self.failures > 0:
            self.failures -= 1
            return httpx.Response(self.status, json={"detail": "simulated outage"})
        q = KernelQuery.model_validate_json(request.content)
        hits = [a for a in self.artifacts if q.status is None or a.status is q.status]
        return httpx.Response(200, content=KernelQueryResult(artifacts=hits, total=len(hits)).model_dump_json())

    def source(self, attempts: int = 3) -> UrzaKernels:
        http = httpx.Client(base_url="http://urza", transport=httpx.MockTransport(self.handle))
        return UrzaKernels("http://urza", attempts=attempts, backoff_s=0.0, http=http)


def test_urza_errors_are_retried_and_then_raised_never_read_as_no_kernels() -> None:
    urza = FlakyUrza([kernel(1)], failures=2)
    assert len(urza.source(attempts=3).query(KernelQuery(interface=BD4)).artifacts) == 1
    for status in (401, 500):
        down = FlakyUrza([kernel(1)], failures=10, status=status)
        with pytest.raises(KernelsUnavailable, match=f"HTTP {status}"):
            down.source(attempts=3).query(KernelQuery(interface=BD4))
        assert len(down.queries) == 3


def test_the_risk_filter_keeps_only_measured_passing_kernels_when_reports_are_required() -> None:
    good, unmeasured, failed = kernel(1), kernel(2, report=False), kernel(3, passed=False)
    inner = FlakyUrza([good, unmeasured, failed]).source()
    strict = RiskFilter(inner, require_report=True).query(KernelQuery(interface=BD4)).artifacts
    assert [a.artifact_id for a in strict] == [good.artifact_id]
    lenient = RiskFilter(inner).query(KernelQuery(interface=BD4)).artifacts
    assert {a.artifact_id for a in lenient} == {good.artifact_id, unmeasured.artifact_id}


DOMAINS = HierarchicalControlConfig.model_validate({"tamiyo_prime": {"atp_global_budget": 30},
                                                    "domains": {"a": {"module_paths": ["l0"]}}})
EAGER = TamiyoConfig(warmup_epochs=0, plateau_patience_epochs=1, plateau_min_delta=10.0,
                     kernel_status=KernelStatus.VALIDATED)


def packet(epoch: int) -> SystemStatePacket:
    seeds = [SeedTelemetry(layer_id="l0", seed_index=0, epoch=epoch, stage=SeedStage.DORMANT, interface=BD4)]
    return SystemStatePacket(run_id="r", epoch=epoch, train_loss=1.0, val_loss=1.0, val_accuracy=0.5, seeds=seeds)


def first_germination(urza: FlakyUrza, outage: set[int]) -> tuple[int | None, list[str], TamiyoController]:
    tamiyo = TamiyoController(build_policy, RiskFilter(urza.source(attempts=2), require_report=True), EAGER, DOMAINS)
    reasons = []
    for epoch in range(1, 10):
        urza.failures = 10 if epoch in outage else 0
        messages = tamiyo.on_packet(packet(epoch))
        signal = next(m.payload for m in messages if m.topic == "control.adaptation.signals")
        reasons.append(signal.reason)
        if signal.commands:
            return epoch, reasons, tamiyo
    return None, reasons, tamiyo


def test_a_boundary_with_urza_down_waits_and_germinates_once_urza_is_back() -> None:
    planned, _, _ = first_germination(FlakyUrza([kernel(1)]), outage=set())
    assert planned is not None
    urza = FlakyUrza([kernel(1)])
    germinated, reasons, tamiyo = first_germination(urza, outage={planned, planned + 1})
    assert germinated == planned + 2  # it waited through the outage and decided as soon as Urza answered
    for epoch in (planned, planned + 1):
        assert "waiting" in reasons[epoch - 1] and "simulated outage" in reasons[epoch - 1]
    assert tamiyo.kernel_source_failures == 2
    assert all(q["status"] == "VALIDATED" for q in urza.queries)


def test_a_tamiyo_serving_from_urza_asks_only_for_validated_kernels_and_requires_reports() -> None:
    service = create_service(urza_url="http://127.0.0.1:9", bus_url="memory://tamiyo-kernels-test")
    assert service.controller.policy.config.kernel_status is KernelStatus.VALIDATED  # type: ignore[attr-defined]
    assert service.controller.kernels.require_report
    injected = create_service(bus_url="memory://tamiyo-kernels-test-2")
    assert not injected.controller.kernels.require_report
