"""Observability benchmark (issue 15): what watching, securing and tracing the platform costs.

Run: ``.venv/bin/python bench/bench_nissa.py`` (``make bench-nissa``). Each figure is one function in
``FIGURES``, returning its ``name: value`` line and a few words of detail; the table comes first and the
figures' lines are printed last, in the order of ``FIGURES``:

* ``nissa_scrape_ms_10k_seeds``: the wall time of one Prometheus scrape of Nissa (``GET /metrics`` over HTTP,
  with Prometheus's headers) holding a run of 10,000 seeds (100 layers x 100 seeds) plus the region health,
  the allocator's decisions and field reports, all fed through the bus (goal < 500). Every scrape follows a
  new epoch's telemetry, so it writes everything afresh. The median of ``SCRAPES`` scrapes after one warm-up;
  the slowest is shown in the table, with the machine's load average (the figure is wall time).

* ``auth_overhead_us``: per request, a route that verifies a bearer token (viewer role, HS256 development
  key; the verified-token cache holds it after the first request, as for a client reusing its token) minus
  the same route open (development mode, no key), through the runtime's full HTTP stack in process
  (``TestClient``); medians of interleaved batches (goal < 100).
* ``tracing_overhead_ratio``: a boundary's bus round trip (a SystemStatePacket published, consumed by a
  handler that answers with an AdaptationSignal, the answer consumed) with tracing on (the SDK provider and
  an in-memory exporter: every span made and recorded) over tracing off (goal <= 1.02). It is the bus part of
  a Tolaria boundary, not a whole training boundary, whose model work would dilute the ratio.

Add a figure by writing a function that returns a :class:`Figure` and appending it to ``FIGURES``.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.table import Table

from esper_contracts import (
    AllocatorInputs,
    ControlMode,
    FieldReport,
    HealthSummaryReport,
    NarsetAllocationDecision,
    Outcome,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    Topic,
)
from esper_nissa import NissaService, create_service
from esper_oona import connect
from esper_oona.testing import wait_for

SCRAPES = 9
LAYERS, SEEDS_PER_LAYER = 100, 100
#: What Prometheus sends with every scrape.
PROMETHEUS_HEADERS = {"Accept": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1", "Accept-Encoding": "gzip",
                      "User-Agent": "Prometheus/2.42.0"}


@dataclass(frozen=True)
class Figure:
    """One benchmark result: its ``name: value`` line and what stands behind it."""

    name: str
    value: float
    detail: str
    goal: str


@contextmanager
def served(service: NissaService) -> Iterator[str]:
    """``service`` behind a real uvicorn server on an ephemeral port, with its lifespan; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(service.app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                            log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="nissa-bench", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the Nissa server to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def telemetry_of_a_big_run(run_id: str, epoch: int) -> tuple[SystemStatePacket, list[HealthSummaryReport],
                                                             list[NarsetAllocationDecision], list[FieldReport]]:
    """A 10,000-seed heartbeat with a mix of stages, and the region telemetry of the same epoch."""
    stages = list(SeedStage)
    seeds = [SeedTelemetry(layer_id=f"blocks.{layer}.mlp", seed_index=i, epoch=epoch,
                           stage=stages[(layer + i + epoch) % 7] if i % 10 == 0 else SeedStage.DORMANT,
                           alpha=((i + epoch) % 10) / 10, gradient_norm=0.01 * i + epoch, epochs_in_stage=i % 5,
                           execution_latency_us=12.5 + i)
             for layer in range(LAYERS) for i in range(SEEDS_PER_LAYER)]
    packet = SystemStatePacket(run_id=run_id, epoch=epoch, global_step=1000 * epoch, train_loss=0.41, val_loss=0.45,
                               val_accuracy=0.88, learning_rate=0.001, host_parameters=12_000_000,
                               seed_parameters=350_000, epoch_time_s=61.0, metrics={"train_accuracy": 0.9},
                               seeds=seeds)
    summaries = [HealthSummaryReport(region_id=f"blocks.{layer}.mlp", domain_id=f"stage{layer // 25}", window=epoch,
                                     epoch=epoch, seed_count=SEEDS_PER_LAYER, active_seeds=10,
                                     stage_counts={SeedStage.DORMANT: 90, SeedStage.TRAINING: 10},
                                     mean_gradient_norm=0.3, max_gradient_norm=1.2, budget_spent=0.2)
                 for layer in range(LAYERS)]
    inputs = AllocatorInputs(progress=0.2, stability=0.8, efficiency=0.5)
    decisions = [NarsetAllocationDecision(region_id=f"blocks.{layer}.mlp", window=epoch, mode=ControlMode.REPAIR,
                                          x_T=0.9, x_E=0.2, c_T=0.9, c_E=0.2, pool=1.5, total_spent=1.1,
                                          raw_inputs=inputs, smoothed_inputs=inputs) for layer in range(LAYERS)]
    reports = [FieldReport(blueprint_id=f"{i:064x}", seed_id=f"blocks.{i}.mlp[0]", run_id=run_id, pre_metric=0.8,
                           post_metric=0.85, outcome=Outcome.FOSSILIZED) for i in range(5)]
    return packet, summaries, decisions, reports


def nissa_scrape_ms_10k_seeds() -> Figure:
    """One scrape of Nissa holding a 10,000-seed run, right after a new epoch's telemetry came through the bus.

    Before every timed scrape the trainer publishes the next epoch (every seed, region and decision new), and
    the scrape waits until Nissa took all of it: each scrape writes everything afresh, the worst case (Nissa
    reuses a run's per-seed text until its next heartbeat, so scrapes between epochs cost less).
    """
    url = f"memory://bench-nissa-{uuid.uuid4().hex[:8]}"
    service = create_service(bus_url=url)
    trainer = connect(url, producer_name="trainer")
    times = []
    with served(service) as base, httpx.Client(base_url=base, headers=PROMETHEUS_HEADERS, timeout=30) as client:
        for epoch in range(1, SCRAPES + 2):  # the first scrape warms up the server and is not counted
            packet, summaries, decisions, reports = telemetry_of_a_big_run("bench-run", epoch)
            trainer.publish_many(Topic.HEALTH_SUMMARIES, summaries)
            trainer.publish_many(Topic.NARSET_ALLOCATIONS, decisions, key=lambda d: d.region_id)
            trainer.publish_many(Topic.FIELD_REPORTS, reports)
            trainer.publish(Topic.SYSTEM_STATE, packet, key=packet.run_id)
            sent = epoch * (1 + len(summaries) + len(decisions) + len(reports))
            wait_for(lambda sent=sent: service.store.messages_taken() == sent, 120, f"Nissa to take epoch {epoch}")
            start = time.perf_counter()
            body = client.get("/metrics").raise_for_status().content
            times.append((time.perf_counter() - start) * 1000)
    trainer.close()
    times = times[1:]
    samples = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
    return Figure("nissa_scrape_ms_10k_seeds", statistics.median(times),
                  f"median of {SCRAPES}, slowest {max(times):.0f} ms; {samples:,} samples, {len(body) / 1e6:.1f} MB",
                  "< 500")


def auth_overhead_us() -> Figure:
    """Per request: a viewer route behind a verified bearer token, minus the same route open."""
    from fastapi.testclient import TestClient

    from esper_runtime import Role, Service, ServiceSettings, require
    from esper_runtime.testing import DEV_SECRET, hs256_token

    def app(**auth: object) -> Service:
        service = Service(ServiceSettings(service_name="bench-auth", development=True, **auth))  # type: ignore[arg-type]
        service.app.add_api_route("/api/v1/thing", lambda: {"ok": True}, methods=["GET"],
                                  dependencies=[require(Role.VIEWER)])
        return service

    headers = {"Authorization": f"Bearer {hs256_token('viewer', lifetime_s=3600)}"}
    batches: dict[bool, list[float]] = {True: [], False: []}
    with TestClient(app(auth_hs256_secret=DEV_SECRET).app) as verified, TestClient(app().app) as open_:
        for _ in range(30):
            for secured, client, extra in ((True, verified, headers), (False, open_, {})):
                start = time.perf_counter()
                for _ in range(100):
                    assert client.get("/api/v1/thing", headers=extra).status_code == 200
                batches[secured].append((time.perf_counter() - start) / 100 * 1e6)
        assert verified.get("/api/v1/thing").status_code == 401  # the key really is checked
    on, off = statistics.median(batches[True]), statistics.median(batches[False])
    return Figure("auth_overhead_us", on - off, f"{on:.0f} us verified vs {off:.0f} us open per request (median "
                  "of 30 batches of 100)", "< 100")


def tracing_overhead_ratio() -> Figure:
    """A boundary's bus round trip with tracing on over off (off measured first: a provider stays installed)."""
    from esper_contracts import AdaptationSignal
    from esper_runtime.testing import capture_spans

    def round_trips(n: int) -> float:
        url = f"memory://bench-trace-{uuid.uuid4().hex[:8]}"
        trainer, tamiyo = connect(url, producer_name="trainer"), connect(url, producer_name="tamiyo")
        answered = threading.Semaphore(0)
        tamiyo.subscribe(Topic.SYSTEM_STATE, "tamiyo", lambda e: tamiyo.publish(
            Topic.ADAPTATION_SIGNALS, AdaptationSignal(epoch=e.payload.epoch), parent=e))
        trainer.subscribe(Topic.ADAPTATION_SIGNALS, "trainer", lambda _e: answered.release())
        start = time.perf_counter()
        for epoch in range(1, n + 1):
            trainer.publish(Topic.SYSTEM_STATE, SystemStatePacket(run_id="bench", epoch=epoch, train_loss=1.0,
                                                                  val_loss=1.0), key="bench")
            assert answered.acquire(timeout=30)
        elapsed = time.perf_counter() - start
        trainer.close()
        tamiyo.close()
        return elapsed / n

    round_trips(200)  # warm-up
    off = statistics.median(round_trips(300) for _ in range(5))
    with capture_spans() as exporter:
        on = statistics.median(round_trips(300) for _ in range(5))
        spans = len(exporter.get_finished_spans())
    return Figure("tracing_overhead_ratio", on / off, f"{on * 1e6:.0f} us on vs {off * 1e6:.0f} us off per round "
                  f"trip; {spans:,} spans recorded", "<= 1.02")


FIGURES: list[Callable[[], Figure]] = [auth_overhead_us, nissa_scrape_ms_10k_seeds, tracing_overhead_ratio]


def main() -> None:
    """Run every figure, show the table, then print the ``name: value`` lines."""
    console = Console()
    started = time.perf_counter()
    figures = []
    for measure in FIGURES:
        console.print(f"measuring {measure.__name__} ...")
        figures.append(measure())
    table = Table("figure", "value", "goal", "detail", title=f"load average {os.getloadavg()[0]:.1f}")
    for f in figures:
        table.add_row(f.name, f"{f.value:.1f}", f.goal, f.detail)
    console.print(table)
    console.print(f"total benchmark time {time.perf_counter() - started:.1f} s")
    for f in figures:
        print(f"{f.name}: {f.value:.1f}")


if __name__ == "__main__":
    main()
