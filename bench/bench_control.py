"""Control-plane benchmark: Narset's per-worker decision time, what reaches Tamiyo per window, Tamiyo's cycle time.

Run: ``.venv/bin/python bench/bench_control.py`` (well under three minutes on 2 CPU cores). Prints a table, then
``name: value`` lines, the last five:

* ``narset_decision_p99_ms_10k_seeds``: p99 of one worker's boundary (summaries, allocator, pricing and paying for
  a germination) with 100 workers x 100 seeds (5 regions of 20 seeds each) (goal < 1).
* ``tamiyo_msgs_per_window_{1k,10k,100k}``: messages Tamiyo's subscriptions receive in one window when 1k, 10k
  and 100k simulated seeds report through workers -> regional aggregators -> coordinator (goal: all equal). The
  regions' reports really cross the coordinator service (heartbeat handler, fan-in 10) and the memory bus.
* ``tamiyo_decision_p99_ms_10k_seeds``: p99 of one Tamiyo cycle (zones, Tamiyo-Prime, minting, proposals,
  allocations, the heuristic policy over a 10k-seed packet) without transport.
* ``tamiyo_packet_bytes_{1k,100k}``: the JSON size of the packet Tamiyo receives in distributed mode, where the
  trainer's Narset host sends regions, not seeds (``packet_for_tamiyo``: every region's seed count, the live
  seeds, two dormant candidates per region), for 1k and 100k seeds over 100 regions (goal: equal within 10%).
* ``tamiyo_decision_p99_ms_100k_seeds``: p99 of one Tamiyo cycle on those summary packets of a 100k-seed model
  (goal < 5).

Latencies are the CPU time of the deciding thread (``time.thread_time``): on a shared 2-core machine the
wall clock's tail is the scheduler's, not the decision's. The wall-clock figures are printed as well
(``..._wall_...``) and shown in the table next to the machine's load average.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from esper_contracts import (
    AllocationCommand,
    ArtifactId,
    CommandType,
    CompiledKernelArtifact,
    HealthSummaryReport,
    KasminaControlCommand,
    KernelQuery,
    KernelQueryResult,
    SeedStage,
    SeedTelemetry,
    StrategicOpportunityProposal,
    SystemStatePacket,
    TensorInterface,
)
from esper_narset_coordinator.schemas import Heartbeat, RegionRegistration, RegionSpec
from esper_narset_coordinator.service import create_service as create_coordinator
from esper_narset_worker.pricing import SlotGeometry
from esper_narset_worker.summary import packet_for_tamiyo, summarize_region
from esper_narset_worker.worker import Boundary, BudgetLedger, NarsetWorker
from esper_oona import connect
from esper_policy import TamiyoConfig, build_policy
from esper_tamiyo.controller import TamiyoController
from esper_tamiyo.domains import load_domains
from esper_tamiyo.kernels import RiskFilter

ROOT = Path(__file__).resolve().parents[1]
LLM = load_domains(ROOT / "recipes" / "configs" / "domains-llm.yaml")
ART = ArtifactId("a" * 64, "cpu", "eager", "b" * 12)
WINDOWS = 30
TAMIYO_TOPICS = ("telemetry.system.state", "telemetry.health.summaries", "control.proposals",
                 "control.scaffold.requests", "control.policy.updates", "innovation.field_reports")


class Stopwatch:
    """Wall-clock and thread CPU time of a block, in milliseconds."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append((time.perf_counter() - self._wall) * 1e3)
        self.cpu.append((time.thread_time() - self._cpu) * 1e3)

    def summary(self, skip: int) -> dict[str, float]:
        """Percentiles after dropping the first ``skip`` samples (warm-up)."""
        wall, cpu = self.wall[skip:], self.cpu[skip:]
        return {"p50": statistics.median(cpu), "p99": p99(cpu), "max": max(cpu), "wall_p50": statistics.median(wall),
                "wall_p99": p99(wall), "n": len(cpu)}


def p99(samples: list[float]) -> float:
    """99th percentile (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


def region_names(count: int) -> list[str]:
    """Region (layer) names spread over the LLM domains: embeddings, 12 blocks' sublayers, the head."""
    names = ["transformer.wte", "transformer.wpe", "lm_head", "transformer.ln_f"]
    block = 0
    while len(names) < count:
        names += [f"transformer.h.{block % 8}.mlp.c_{block // 8}_{k}" for k in range(4)]
        block += 1
    return names[:count]


def telemetry(region: str, seeds: int, epoch: int, phase: int) -> list[SeedTelemetry]:
    """One region's seed telemetry, varying with ``phase`` so the allocator sees moving inputs."""
    return [SeedTelemetry(layer_id=region, seed_index=i, epoch=epoch, stage=SeedStage.DORMANT,
                          gradient_norm=0.1 + 0.01 * ((i + phase) % 7), dead_node_ratio=0.05 * ((i + phase) % 3),
                          activation_sparsity=0.1, chunk_variance=1.0,
                          interface=TensorInterface(layout="BD", features=32))
            for i in range(seeds)]


# ---------------------------------------------------------------------------------------------- Narset


def bench_narset(workers: int = 100, regions_per_worker: int = 5, seeds_per_region: int = 20) -> dict[str, float]:
    """Time each worker's boundary over ``WINDOWS`` windows; every worker pays for one germination per window."""
    all_regions = [f"w{w}.r{r}" for w in range(workers) for r in range(regions_per_worker)]
    geometry = SlotGeometry({r: (32,) * seeds_per_region for r in all_regions},
                            32 * seeds_per_region * len(all_regions), lambda _kernel: None)
    pool = []
    for w in range(workers):
        worker = NarsetWorker(f"worker-{w:03d}")
        for r in range(regions_per_worker):
            worker.adopt(f"w{w}.r{r}")
        pool.append(worker)
    phases = [{r: telemetry(r, seeds_per_region, 0, phase) for r in all_regions} for phase in range(4)]
    watch = Stopwatch()
    for window in range(WINDOWS):
        ledger = BudgetLedger()
        for r in all_regions:
            ledger.grant(AllocationCommand(cycle=window, region_id=r, domain_id="d", atp_budget=5.0,
                                           energy_budget=1.5))
        commands = {f"w{w}.r0": [KasminaControlCommand(layer_id=f"w{w}.r0", seed_index=window % seeds_per_region,
                                                       command=CommandType.GERMINATE, kernel_artifact_id=ART)]
                    for w in range(workers)}
        boundary = Boundary(window=window, epoch=window, run_id="bench", trend=-0.001 * (window % 5), metric=0.5,
                            seeds=phases[window % len(phases)], commands=commands)
        for worker in pool:
            with watch:
                worker.step(boundary, ledger, geometry)
    return watch.summary(skip=workers * 3)  # the first windows pay for allocator creation and caches


# ---------------------------------------------------------------------------------------------- messages


class Counter:
    """Counts what arrives on the topics Tamiyo consumes."""

    def __init__(self, bus: Any) -> None:
        self.count = 0
        self._lock = threading.Lock()
        for topic in TAMIYO_TOPICS:
            bus.subscribe(topic, f"tamiyo-mirror-{topic}", self._on)

    def _on(self, _envelope: Any) -> None:
        with self._lock:
            self.count += 1

    def take(self) -> int:
        with self._lock:
            n, self.count = self.count, 0
        return n


def bench_messages(seeds: int, windows: int = 3) -> dict[str, Any]:
    """Per window: workers summarise regions, the coordinator folds them, Tamiyo gets domain summaries + a packet."""
    workers = min(100, max(1, seeds // 100))
    regions_per_worker = 5
    per_region = seeds // (workers * regions_per_worker)
    url = f"memory://bench-{uuid.uuid4().hex[:8]}"
    coordinator = create_coordinator(bus_url=url, fan_in=10, seeds_per_worker=per_region * regions_per_worker,
                                     regions_per_worker=regions_per_worker, heartbeat_timeout_s=3600)
    coordinator.on_start()
    trainer = connect(url, producer_name="bench-trainer")
    counter = Counter(trainer)
    names = region_names(workers * regions_per_worker)
    domain_of = {r: LLM.domain_of(r) for r in names}
    assignment = coordinator.register_regions(
        RegionRegistration(regions=[RegionSpec(region_id=r, seed_count=per_region) for r in names]))
    counts: list[int] = []
    for window in range(1, windows + 1):
        reports: list[HealthSummaryReport] = []
        for region in names:
            seeds_here = telemetry(region, per_region, window, window)
            reports.append(summarize_region(region, domain_of[region], seeds_here, window=window, epoch=window,
                                            trend=-0.01, budget_spent=1.0))
        coordinator.heartbeat(Heartbeat(window=window, epoch=window, workers=sorted(assignment.workers),
                                        reports=reports))
        # The epoch heartbeat: one packet; at this scale the seed detail stays with Narset.
        trainer.publish("telemetry.system.state", SystemStatePacket(run_id="bench", epoch=window, train_loss=1.0,
                                                                   val_loss=1.0), key="bench")
        trainer.flush()
        trainer.wait_until_idle(10.0)  # everything published so far has been delivered
        counts.append(counter.take())
    levels = coordinator.workers().last_tree_levels
    coordinator.on_stop()
    coordinator.bus.close()
    trainer.close()
    return {"seeds": seeds, "workers": workers, "regions": len(names), "per_window": counts[-1],
            "all_windows": counts, "levels": levels}


# ---------------------------------------------------------------------------------------------- Tamiyo


class OneKernel:
    """A kernel source with one validated kernel that fits every seed."""

    artifact = CompiledKernelArtifact(artifact_id=ART, blueprint_id="a" * 64, hardware="cpu", pipeline="eager",
                                      toolchain_hash="b" * 12, status="VALIDATED", input_shape=[1, 32], tags=["mlp"])

    def query(self, query: KernelQuery) -> KernelQueryResult:
        return KernelQueryResult(artifacts=[self.artifact], total=1)


def bench_tamiyo(seeds: int = 10_000, regions: int = 100, summary: int | None = None) -> dict[str, float]:
    """Time ``TamiyoController.on_packet`` on ``seeds``-seed packets (plus domain summaries and a proposal per window).

    With ``summary``, each packet is first reduced as the Narset host sends it in distributed mode (that many
    dormant candidates per region); the reduction runs in the trainer, so it is not timed. ``bytes`` is the
    mean JSON size of the packets Tamiyo received.
    """
    controller = TamiyoController(build_policy, RiskFilter(OneKernel()),
                                  TamiyoConfig(warmup_epochs=2, plateau_patience_epochs=2), LLM)
    names = region_names(regions)
    per_region = seeds // regions
    packets = []
    for epoch in range(1, WINDOWS + 1):
        seeds_list = [t for r in names for t in telemetry(r, per_region, epoch, epoch)]
        packet = SystemStatePacket(run_id="bench", epoch=epoch, train_loss=1.0, val_loss=1.0 - 0.0001 * epoch,
                                   val_accuracy=0.5, seeds=seeds_list)
        packets.append(packet if summary is None else packet_for_tamiyo(packet, summary))
    size = statistics.mean(len(p.model_dump_json()) for p in packets)
    watch = Stopwatch()
    for packet in packets:
        for d in LLM.domains:
            controller.on_health_summary(HealthSummaryReport(region_id=d, domain_id=d, window=packet.epoch,
                                                             epoch=packet.epoch, seed_count=seeds // 4,
                                                             mean_gradient_norm=1.0, max_gradient_norm=2.0,
                                                             loss_trend=0.001))
        controller.on_proposal(StrategicOpportunityProposal(region_id=names[packet.epoch % regions], epoch=packet.epoch,
                                                            opportunity="bench", plan=["grow"], ask=1.0,
                                                            expected_roi=0.5))
        with watch:
            controller.on_packet(packet)
    return watch.summary(skip=3) | {"bytes": size}


def main() -> None:
    console = Console(width=120)
    started = time.perf_counter()
    narset = bench_narset()
    messages = [bench_messages(n) for n in (1_000, 10_000, 100_000)]
    tamiyo = bench_tamiyo()
    regions_1k = bench_tamiyo(1_000, summary=2)
    regions_100k = bench_tamiyo(100_000, summary=2)

    table = Table(title="Esper control plane")
    for column in ("measurement", "setting", "result"):
        table.add_column(column)
    table.add_row("Narset worker boundary (CPU)", "100 workers x 100 seeds (5 regions x 20)",
                  f"p50 {narset['p50']:.3f} ms, p99 {narset['p99']:.3f} ms, max {narset['max']:.3f} ms "
                  f"({narset['n']:.0f} samples)")
    table.add_row("Narset worker boundary (wall)", f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
                  f"p50 {narset['wall_p50']:.3f} ms, p99 {narset['wall_p99']:.3f} ms")
    for m in messages:
        table.add_row(f"messages to Tamiyo, {m['seeds']:,} seeds",
                      f"{m['workers']} workers, {m['regions']} regions, fan-in 10",
                      f"{m['per_window']} per window (tree levels {m['levels']}; windows {m['all_windows']}; "
                      f"per-seed telemetry would be {m['seeds']:,})")
    table.add_row("Tamiyo cycle (CPU)", "10k-seed packet, 100 regions, 4 domains",
                  f"p50 {tamiyo['p50']:.3f} ms, p99 {tamiyo['p99']:.3f} ms, max {tamiyo['max']:.3f} ms")
    table.add_row("Tamiyo cycle (wall)", "", f"p50 {tamiyo['wall_p50']:.3f} ms, p99 {tamiyo['wall_p99']:.3f} ms")
    for label, r in (("1k", regions_1k), ("100k", regions_100k)):
        table.add_row(f"Tamiyo on region summaries, {label} seeds", "100 regions, 2 candidates each",
                      f"packet {r['bytes']:,.0f} bytes; cycle p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms (CPU)")
    console.print(table)
    console.print(f"total benchmark time {time.perf_counter() - started:.1f} s")
    print(f"narset_decision_p50_ms_10k_seeds: {narset['p50']:.4f}")
    print(f"narset_decision_p99_wall_ms_10k_seeds: {narset['wall_p99']:.4f}")
    print(f"tamiyo_decision_p50_ms_10k_seeds: {tamiyo['p50']:.4f}")
    print(f"tamiyo_decision_p99_wall_ms_10k_seeds: {tamiyo['wall_p99']:.4f}")
    print(f"narset_decision_p99_ms_10k_seeds: {narset['p99']:.4f}")
    for m, label in zip(messages, ("1k", "10k", "100k"), strict=True):
        print(f"tamiyo_msgs_per_window_{label}: {m['per_window']}")
    print(f"tamiyo_decision_p99_ms_10k_seeds: {tamiyo['p99']:.4f}")
    print(f"tamiyo_packet_bytes_1k: {regions_1k['bytes']:.0f}")
    print(f"tamiyo_packet_bytes_100k: {regions_100k['bytes']:.0f}")
    print(f"tamiyo_decision_p99_ms_100k_seeds: {regions_100k['p99']:.4f}")


if __name__ == "__main__":
    main()
