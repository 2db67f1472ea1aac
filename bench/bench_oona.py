"""Oona against the raw pulsar-client on the same workload, on a real broker.

    .venv/bin/python bench/bench_oona.py [--messages 20000] [--rounds 8]

Workload: N realistic SeedTelemetry messages on ``telemetry.seed.health``, published and consumed in one
process (publisher on the main thread, consumer on its own thread), timed from the first publish to the
last message handled. Each path gets a fresh topic per run.

* ``oona``      bus.publish(topic, payload) -> handler(Envelope[SeedTelemetry])
* ``raw``       the same envelope JSON bytes built by pydantic per message, the same producer batching and
                consumer settings, a receive loop that decodes the same typed envelope and acknowledges
* ``raw-bytes`` (for context) pre-serialised bytes, no decoding: the client and broker alone

Runs alternate (oona, raw, raw, oona, ...) so that a broker warming up or a noisy neighbour hits both;
raw-bytes runs in the first ``--context-rounds`` rounds only. The throughput ratio is the median over
rounds of oona / raw (the pooled ratio is printed too). Latency is measured separately at a paced
rate (queueing in a flat-out run measures the backlog, not the bus): publish time is the envelope
timestamp, arrival is when the handler runs.

The broker is reused when one answers (``ESPER_PULSAR_URL`` or the esper_devtools.infra endpoint);
otherwise it is started through esper_devtools.infra (or infra/pulsar.sh) and stopped afterwards.
The last two lines are ``oona_vs_raw_throughput: <ratio>`` and ``oona_e2e_p99_ms: <ms>``.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pulsar
from rich.console import Console
from rich.table import Table

from esper_contracts import Envelope, SeedStage, SeedTelemetry, TensorInterface
from esper_oona import connect

REPO = Path(__file__).resolve().parents[1]
TOPIC = "telemetry.seed.health"
PRODUCER = "kasmina"
# Settings both paths share, so the comparison is of the client code and not of its tuning.
BATCH_DELAY_MS = 1
BATCH_MAX_MESSAGES = 1000
MAX_PENDING = 10000
RECEIVER_QUEUE = 1000
RUN_TIMEOUT_S = 120.0

console = Console()


# --- workload -----------------------------------------------------------------------------------------


def telemetry_batch(n: int, seed: int = 7) -> list[SeedTelemetry]:
    """``n`` SeedTelemetry reports shaped like a 24-layer model with 8 seeds per layer, epoch by epoch."""
    rng = random.Random(seed)
    stages = [SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.GRAFTING, SeedStage.STABILIZATION,
              SeedStage.EVALUATING, SeedStage.FINE_TUNING]
    reports = []
    for i in range(n):
        layer, seed_index, epoch = (i // 8) % 24, i % 8, i // 192
        stage = rng.choice(stages)
        live = stage is not SeedStage.DORMANT
        reports.append(SeedTelemetry(
            layer_id=f"model.layers.{layer}.mlp",
            seed_index=seed_index,
            epoch=epoch,
            stage=stage,
            alpha=round(rng.random(), 4) if live else 0.0,
            epochs_in_stage=rng.randint(0, 12),
            chunk_variance=rng.lognormvariate(-4, 1),
            dead_node_ratio=rng.random() * 0.2,
            avg_correlation=rng.uniform(-1, 1),
            gradient_norm=rng.lognormvariate(0, 0.8),
            activation_sparsity=rng.random(),
            is_ready_for_transition=rng.random() < 0.1,
            kernel_artifact_id=f"{rng.getrandbits(256):064x}-cpu-standard-{rng.getrandbits(48):012x}" if live else None,
            blueprint_id=f"{rng.getrandbits(256):064x}" if live else None,
            execution_latency_us=rng.lognormvariate(3, 0.5),
            error_count=0,
            interface=TensorInterface(layout="BTD", features=256),
        ))
    return reports


@dataclass
class Run:
    """One timed pass of one path."""

    path: str
    messages: int
    publish_s: float
    total_s: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Messages per second from first publish to last message handled."""
        return self.messages / self.total_s


class _Counter:
    """Counts handled messages and records publish-to-handler latency; signals when all have arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.latencies_ms: list[float] = []
        self.done = threading.Event()

    def arrived(self, envelope: Envelope[SeedTelemetry]) -> None:
        self.latencies_ms.append((time.time() - envelope.timestamp.timestamp()) * 1000)
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


def _pace(rate: float | None) -> Callable[[int], None]:
    if rate is None:
        return lambda _i: None
    start = time.perf_counter()

    def wait(i: int) -> None:
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    return wait


# --- the two paths ------------------------------------------------------------------------------------


def run_oona(url: str, payloads: list[SeedTelemetry], rate: float | None = None) -> Run:
    """Publish ``payloads`` through Oona and wait until its handler has seen every one."""
    counter = _Counter(len(payloads))
    bus = connect(url, producer_name=PRODUCER, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}-",
                  batching_max_publish_delay_ms=BATCH_DELAY_MS, batching_max_messages=BATCH_MAX_MESSAGES,
                  max_pending_messages=MAX_PENDING, receiver_queue_size=RECEIVER_QUEUE)
    try:
        bus.subscribe(TOPIC, "bench", counter.arrived)
        bus.prepare(TOPIC)
        pace = _pace(rate)
        start = time.perf_counter()
        for i, payload in enumerate(payloads):
            pace(i)
            bus.publish(TOPIC, payload)
        bus.flush()
        published = time.perf_counter()
        if not counter.done.wait(RUN_TIMEOUT_S):
            raise RuntimeError(f"oona: only {counter.count} of {len(payloads)} messages arrived")
        return Run("oona", len(payloads), published - start, time.perf_counter() - start, counter.latencies_ms)
    finally:
        bus.close()


def run_raw(url: str, payloads: list[SeedTelemetry], rate: float | None = None, *, typed: bool = True) -> Run:
    """The same workload on the bare client; ``typed=False`` sends pre-serialised bytes and skips decoding."""
    envelope_type = Envelope[SeedTelemetry]
    client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    topic = f"persistent://public/default/bench-raw-{uuid.uuid4().hex[:8]}-{TOPIC}"
    counter = _Counter(len(payloads))
    stop = threading.Event()
    try:
        consumer = client.subscribe(topic, "bench", consumer_type=pulsar.ConsumerType.Shared,
                                    receiver_queue_size=RECEIVER_QUEUE, negative_ack_redelivery_delay_ms=1000,
                                    batch_index_ack_enabled=True)
        producer = client.create_producer(topic, batching_enabled=True, batching_max_messages=BATCH_MAX_MESSAGES,
                                          batching_max_publish_delay_ms=BATCH_DELAY_MS,
                                          max_pending_messages=MAX_PENDING, block_if_queue_full=True)

        def consume() -> None:
            while not stop.is_set():
                try:
                    message = consumer.receive(100)
                except pulsar.Timeout:
                    continue
                if typed:
                    counter.arrived(envelope_type.model_validate_json(message.data()))
                else:
                    message.data()
                    counter.count += 1
                    if counter.count >= counter.expected:
                        counter.done.set()
                consumer.acknowledge(message)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()

        def sent(_result: object, _message_id: object) -> None:
            pass

        if typed:
            def encode(payload: SeedTelemetry) -> bytes:
                return envelope_type(producer=PRODUCER, topic=TOPIC, payload_type="SeedTelemetry",
                                     payload=payload).model_dump_json().encode()
        else:
            frozen = {id(p): envelope_type(producer=PRODUCER, topic=TOPIC, payload_type="SeedTelemetry",
                                           payload=p).model_dump_json().encode() for p in payloads}

            def encode(payload: SeedTelemetry) -> bytes:
                return frozen[id(payload)]

        pace = _pace(rate)
        start = time.perf_counter()
        for i, payload in enumerate(payloads):
            pace(i)
            producer.send_async(encode(payload), sent)
        producer.flush()
        published = time.perf_counter()
        if not counter.done.wait(RUN_TIMEOUT_S):
            raise RuntimeError(f"raw: only {counter.count} of {len(payloads)} messages arrived")
        total = time.perf_counter() - start
        stop.set()
        thread.join()
        consumer.close()
        producer.close()
        return Run("raw" if typed else "raw-bytes", len(payloads), published - start, total, counter.latencies_ms)
    finally:
        stop.set()
        client.close()


# --- broker -------------------------------------------------------------------------------------------


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6650), timeout=1):
            return True
    except OSError:
        return False


def broker() -> tuple[str, Callable[[], None]]:
    """A Pulsar URL that answers, and how to undo what was started to get it (nothing if it was running)."""
    explicit = os.environ.get("ESPER_PULSAR_URL")
    if explicit:
        return explicit, lambda: None
    try:
        from esper_devtools import infra
    except ImportError:
        infra = None
    if infra is not None:
        url = infra.endpoints()["pulsar_url"]
        if infra.is_running("pulsar") or _answers(url):
            return url, lambda: None
        console.print(f"[dim]starting Pulsar through esper_devtools.infra for {url} ...[/dim]")
        infra.up(["pulsar"])
        return url, lambda: infra.down(["pulsar"])
    url = f"pulsar://127.0.0.1:{os.environ.get('ESPER_PULSAR_PORT', '16650')}"
    if _answers(url):
        return url, lambda: None
    script = REPO / "infra" / "pulsar.sh"
    console.print(f"[dim]starting Pulsar with {script.relative_to(REPO)} ...[/dim]")
    subprocess.run(["bash", str(script), "up"], check=True)

    def stop() -> None:
        subprocess.run(["bash", str(script), "down"], check=False)

    return url, stop


# --- report -------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per throughput run")
    parser.add_argument("--rounds", type=int, default=8, help="oona/raw pairs (alternating order)")
    parser.add_argument("--context-rounds", type=int, default=2, help="rounds that also time raw-bytes")
    parser.add_argument("--latency-messages", type=int, default=3000)
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="messages/s in the latency runs")
    args = parser.parse_args(argv)

    url, undo = broker()
    try:
        payloads = telemetry_batch(args.messages)
        size = len(Envelope[SeedTelemetry](producer=PRODUCER, topic=TOPIC, payload_type="SeedTelemetry",
                                           payload=payloads[1]).model_dump_json())
        console.print(f"broker {url}; {args.messages} SeedTelemetry messages (~{size} bytes each), "
                      f"{args.rounds} rounds")
        # Warm-up: topic creation, JIT in the broker, first connections.
        run_oona(url, payloads[:2000])
        run_raw(url, payloads[:2000])

        runs: dict[str, list[Run]] = {"oona": [], "raw": [], "raw-bytes": []}
        ratios = []
        for round_index in range(args.rounds):
            first, second = (run_oona, run_raw) if round_index % 2 == 0 else (run_raw, run_oona)
            a, b = first(url, payloads), second(url, payloads)
            oona_run, raw_run = (a, b) if a.path == "oona" else (b, a)
            runs["oona"].append(oona_run)
            runs["raw"].append(raw_run)
            context = ""
            if round_index < args.context_rounds:
                runs["raw-bytes"].append(run_raw(url, payloads, typed=False))
                context = f", raw-bytes {runs['raw-bytes'][-1].throughput:,.0f}/s"
            ratios.append(oona_run.throughput / raw_run.throughput)
            console.print(f"  round {round_index + 1}/{args.rounds}: oona {oona_run.throughput:,.0f}/s, "
                          f"raw {raw_run.throughput:,.0f}/s{context}, ratio {ratios[-1]:.3f}")

        latency_payloads = payloads[: args.latency_messages]
        paced = {
            "oona": run_oona(url, latency_payloads, args.latency_rate),
            "raw": run_raw(url, latency_payloads, args.latency_rate),
        }
    finally:
        undo()

    table = Table(title=f"Oona vs raw pulsar-client ({args.messages} msgs/run, median of {args.rounds})")
    for column in ("path", "e2e msgs/s", "publish msgs/s", f"p50 ms @{args.latency_rate:.0f}/s",
                   f"p99 ms @{args.latency_rate:.0f}/s"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for path, path_runs in runs.items():
        if not path_runs:
            continue
        e2e = statistics.median(r.throughput for r in path_runs)
        pub = statistics.median(r.messages / r.publish_s for r in path_runs)
        lat = paced.get(path)
        table.add_row(path, f"{e2e:,.0f}", f"{pub:,.0f}",
                      f"{percentile(lat.latencies_ms, 0.5):.2f}" if lat else "-",
                      f"{percentile(lat.latencies_ms, 0.99):.2f}" if lat else "-")
    console.print(table)
    def aggregate(path: str) -> float:
        return sum(r.messages for r in runs[path]) / sum(r.total_s for r in runs[path])

    console.print(f"per-round oona / raw: {', '.join(f'{r:.3f}' for r in ratios)}; "
                  f"all rounds pooled: {aggregate('oona') / aggregate('raw'):.3f}")
    if runs["raw-bytes"]:
        pairs = zip(runs["oona"], runs["raw-bytes"], strict=False)
        console.print(f"oona / raw-bytes (no serialisation, no decoding): "
                      f"{statistics.median(o.throughput / r.throughput for o, r in pairs):.3f}")
    print(f"oona_vs_raw_throughput: {statistics.median(ratios):.3f}")
    print(f"oona_e2e_p99_ms: {percentile(paced['oona'].latencies_ms, 0.99):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
