"""Distributed platform benchmark: the trainer on real services over Pulsar, against the same run standalone.

Run: ``make bench-platform`` (needs the local Pulsar broker: ``make infra-up``; about five minutes on 2 CPU cores).
Urza (SQLite and a blob folder here: the queries are not what is measured), Tezzeret, Urabrask, Tamiyo and the
Narset coordinator each run as ``esper serve <name>`` processes on Pulsar. Prints a table, then ``name: value``
lines, the last three:

* ``remote_boundary_p99_ms``: p99 of one epoch boundary as the trainer waits for it in distributed mode — the
  Narset host publishes the SystemStatePacket, the Tamiyo service decides and answers over the bus, the host
  allocates and pays and exchanges its heartbeat with the coordinator (goal < 50). 60 boundaries, a 1k-seed model.
* ``remote_vs_standalone_epoch_ratio``: the same run (spirals, the default host, seed 0) as ``esper train`` with a
  ``platform:`` section and standalone (in-process heuristic Tamiyo, eager kernels), median epoch time (training,
  validation and the boundary) distributed / standalone (goal ≤ 1.05).
* ``submit_to_validated_s``: a blueprint POSTed to Urza until its artifact is VALIDATED through the Tezzeret and
  Urabrask pools (fast pipeline), median of three blueprints submitted one after the other.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from esper_contracts import KernelStatus, SystemStatePacket, TensorInterface, builtin_blueprints
from esper_devtools.infra import endpoints
from esper_devtools.processes import ESPER, Proc, free_port
from esper_narset_worker import HostConfig, HttpCoordinator, NarsetHost
from esper_narset_worker.platform import PlatformController
from esper_oona import connect
from esper_urza_client import UrzaClient

ROOT = Path(__file__).resolve().parents[1]
HOST_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}


def start_platform(tmp: Path, bus_url: str, hardware: str) -> dict[str, Proc]:
    """The five services as processes; returns them started."""
    run = uuid.uuid4().hex[:8]
    base = HOST_ENV | {"ESPER_BUS_URL": bus_url, "ESPER_LOG_FORMAT": "text", "ESPER_LOG_LEVEL": "WARNING"}
    ports = {n: free_port() for n in ("urza", "tezzeret", "urabrask", "tamiyo", "narset-coordinator")}
    urza_url = f"http://127.0.0.1:{ports['urza']}"
    workers = base | {"ESPER_URZA_URL": urza_url, "ESPER_HARDWARE": hardware}
    envs = {
        "urza": base | {"ESPER_DATA_DIR": str(tmp / "urza"), "ESPER_SEED_LIBRARY": "false",
                        "ESPER_PIPELINES": '["fast"]', "ESPER_HARDWARE": f'["{hardware}"]',
                        "ESPER_OUTBOX_INTERVAL_S": "0.2", "ESPER_SUBSCRIPTION": f"urza-{run}"},
        "tezzeret": workers | {"ESPER_SUBSCRIPTION": f"tezzeret-{run}"},
        "urabrask": workers | {"ESPER_SUBSCRIPTION": f"urabrask-{run}", "ESPER_BUDGET_S": "1"},
        "tamiyo": base | {"ESPER_URZA_URL": urza_url, "ESPER_TOPIC_PREFIX": f"bench-{run}-",
                          "ESPER_POLICY": json.dumps({"warmup_epochs": 1, "plateau_patience_epochs": 2})},
        "narset-coordinator": base | {"ESPER_TOPIC_PREFIX": f"bench-{run}-"},
    }
    procs = {n: Proc(n, env | {"ESPER_PORT": str(ports[n])}, tmp) for n, env in envs.items()}
    for proc in procs.values():
        proc.start()
    return procs


def submit_to_validated(urza_url: str, hardware: str, blueprints: int = 3) -> list[float]:
    """Seconds from POST /blueprints to a VALIDATED artifact, one blueprint at a time."""
    urza = UrzaClient(urza_url)
    times = []
    for ir in builtin_blueprints(TensorInterface(layout="BD", features=24))[:blueprints]:
        start = time.perf_counter()
        blueprint_id = urza.submit_blueprint(ir).blueprint_id
        while True:
            arts = [a for a in urza.blueprint(blueprint_id).artifacts if a.hardware == hardware]
            if arts and all(a.status in (KernelStatus.VALIDATED, KernelStatus.REJECTED, KernelStatus.FAILED)
                            for a in arts):
                break
            time.sleep(0.05)
        times.append(time.perf_counter() - start)
    urza.close()
    return times


def remote_boundaries(bus_url: str, prefix: str, coordinator_url: str, n: int = 60) -> list[float]:
    """Wall time of ``NarsetHost.decide`` (the trainer's boundary) against the Tamiyo service, in ms."""
    import torch
    from torch import nn

    from esper.kasmina import KasminaConfig, collect_telemetry, wrap

    torch.manual_seed(0)
    model = wrap(nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)]),
                 KasminaConfig(chunks_per_layer=250, include_head=True))
    bus = connect(bus_url, producer_name=f"bench-trainer-{uuid.uuid4().hex[:6]}", topic_prefix=prefix)
    host: NarsetHost = PlatformController(model, bus, coordinator=HttpCoordinator(coordinator_url),
                                          config=HostConfig(decision_timeout_s=30))
    seeds = collect_telemetry(model, 0)
    times = []
    try:
        for epoch in range(1, n + 1):
            telemetry = [t.model_copy(update={"epoch": epoch}) for t in seeds]
            packet = SystemStatePacket(run_id="bench-boundary", epoch=epoch, train_loss=1.0, val_loss=1.0,
                                       val_accuracy=0.5, seeds=telemetry)
            start = time.perf_counter()
            host.decide(packet)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        host.close()
    return times


def epoch_times(config: dict, tmp: Path, name: str) -> list[float]:
    """Epoch times (s) of ``esper train`` on ``config`` (written to ``tmp/name.yaml``)."""
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))
    args = [ESPER, "train", str(path), "--quiet"] + ([] if "platform" in config else ["--kernels", "eager"])
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=HOST_ENV, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"esper train ({name}) failed:\n{result.stdout}\n{result.stderr}")
    metrics = Path(config["tolaria"]["run_dir"]) / name / "metrics.jsonl"
    return [json.loads(line)["epoch_time_s"] for line in metrics.read_text().splitlines()]


def main() -> None:
    console = Console(width=120)
    bus_url = str(endpoints()["pulsar_url"])
    hardware = f"cpu_bench{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="esper-bench-platform-"))
    started = time.perf_counter()
    procs = start_platform(tmp, bus_url, hardware)
    try:
        urza_url = f"http://127.0.0.1:{procs['urza'].port}"
        coordinator_url = f"http://127.0.0.1:{procs['narset-coordinator'].port}"
        prefix = procs["tamiyo"].env["ESPER_TOPIC_PREFIX"]
        validated = submit_to_validated(urza_url, hardware)
        boundaries = remote_boundaries(bus_url, prefix, coordinator_url)
        tolaria = {"epochs": 30, "task": "spirals", "run_dir": str(tmp / "runs"), "learning_rate": 0.01,
                   "progress_bar": False, "hardware": hardware}
        standalone = epoch_times({"tolaria": tolaria | {"run_id": "standalone"}}, tmp, "standalone")
        distributed = epoch_times({"tolaria": tolaria | {"run_id": "distributed"}, "platform": {
            "bus_url": bus_url, "urza_url": urza_url, "coordinator_url": coordinator_url, "topic_prefix": prefix}},
            tmp, "distributed")
    finally:
        for proc in procs.values():
            proc.stop()
    p99 = sorted(boundaries)[min(len(boundaries) - 1, round(0.99 * len(boundaries)) - 1)]
    ratio = statistics.median(distributed) / statistics.median(standalone)

    table = Table(title="Esper on the distributed platform (processes on Pulsar)")
    for column in ("measurement", "setting", "result"):
        table.add_column(column)
    table.add_row("blueprint POST -> VALIDATED", "fast pipeline, one Tezzeret and one Urabrask",
                  ", ".join(f"{t:.1f} s" for t in validated))
    table.add_row("epoch boundary, trainer -> Tamiyo -> signal", "1,000 seeds, Narset host + coordinator",
                  f"p50 {statistics.median(boundaries):.1f} ms, p99 {p99:.1f} ms ({len(boundaries)} boundaries)")
    table.add_row("epoch time, standalone", "spirals, 30 epochs, eager kernels",
                  f"median {statistics.median(standalone) * 1000:.1f} ms")
    table.add_row("epoch time, distributed", "the same run, Urza kernels, Tamiyo service",
                  f"median {statistics.median(distributed) * 1000:.1f} ms")
    console.print(table)
    console.print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
                  f"total {time.perf_counter() - started:.0f} s; logs in {tmp}")
    print(f"remote_boundary_p50_ms: {statistics.median(boundaries):.2f}")
    print(f"remote_boundary_p99_ms: {p99:.2f}")
    print(f"remote_vs_standalone_epoch_ratio: {ratio:.3f}")
    print(f"submit_to_validated_s: {statistics.median(validated):.2f}")


if __name__ == "__main__":
    sys.exit(main())
