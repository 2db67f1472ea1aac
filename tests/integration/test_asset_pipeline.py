"""The asset pipeline end to end, as separate processes on real Pulsar, PostgreSQL and S3.

``esper serve urza``, ``esper serve tezzeret`` and ``esper serve urabrask`` run as subprocesses configured
only through ``ESPER_*`` variables. A blueprint submitted to Urza is compiled (fast + standard), validated
and tagged, found by a tag query, and loaded and executed inside a KasminaLayer in this process. On the
way, the Tezzeret worker is killed with SIGKILL in the middle of the standard compile: after a restart
the job completes. Finally Urza itself is killed and restarted: nothing it recorded is lost; and the jobs sent
again, as an outbox does after a kill -9, are acknowledged by Tezzeret and Urabrask without doing the work twice.

Each run uses its own hardware name, database and S3 prefix, so messages other runs left on the shared
broker are skipped by these workers (they belong to another hardware target's subscription).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import torch

from esper.kasmina import kasmina_layers, wrap
from esper.kasmina.testing import Driver, advance, fast_config, mlp, train_steps
from esper_contracts import (
    BlueprintIR,
    CompilationJob,
    CompilationPipeline,
    KernelQuery,
    KernelStatus,
    SeedStage,
    TensorInterface,
    Topic,
    ValidationJob,
    builtin_blueprints,
)
from esper_devtools.processes import Proc, free_port
from esper_kernels import CompiledKernel, UrzaKernelSource
from esper_oona import connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

S = KernelStatus


@pytest.fixture
def database_url(postgres_database_url: str) -> str:
    """A throwaway database on the real PostgreSQL server (the root conftest's)."""
    return postgres_database_url


@pytest.fixture
def platform(tmp_path: Path, pulsar_url: str, database_url: str, s3_config: dict[str, str]) -> Iterator[Any]:
    run = uuid.uuid4().hex[:8]
    hardware = f"cpu_it{run}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    base |= {"ESPER_BUS_URL": pulsar_url, "ESPER_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1"}
    blob_query = urlencode({"endpoint_url": s3_config["endpoint_url"], "access_key_id": s3_config["access_key"],
                            "secret_access_key": s3_config["secret_key"],
                            "region": s3_config.get("region", "us-east-1")})
    urza_port = free_port()
    urza_url = f"http://127.0.0.1:{urza_port}"
    urza = Proc("urza", base | {
        "ESPER_PORT": str(urza_port), "ESPER_DATA_DIR": str(tmp_path / "urza"), "ESPER_DATABASE_URL": database_url,
        "ESPER_BLOB_URL": f"s3://esper-assets-it/{run}?{blob_query}", "ESPER_SEED_LIBRARY": "false",
        "ESPER_PIPELINES": '["fast", "standard"]', "ESPER_HARDWARE": f'["{hardware}"]',
        "ESPER_BATCH_SIZE": "8", "ESPER_OUTBOX_INTERVAL_S": "0.5", "ESPER_SUBSCRIPTION": f"urza-{run}",
    }, tmp_path)
    worker_env = base | {"ESPER_URZA_URL": urza_url, "ESPER_HARDWARE": hardware, "ESPER_NACK_DELAY_MS": "500"}
    tezzeret = Proc("tezzeret", worker_env | {"ESPER_PORT": str(free_port())}, tmp_path)
    urabrask = Proc("urabrask", worker_env | {"ESPER_PORT": str(free_port()), "ESPER_BUDGET_S": "2"}, tmp_path)
    procs = [urza, tezzeret, urabrask]
    try:
        urza.start()
        tezzeret.start()
        urabrask.start()
        yield type("Platform", (), {"urza": urza, "tezzeret": tezzeret, "urabrask": urabrask, "url": urza_url,
                                    "hardware": hardware, "procs": procs})
    except BaseException:
        for p in procs:
            sys.stderr.write(f"\n----- {p.service} log -----\n{p.tail(120)}\n")
        raise
    finally:
        for p in procs:
            p.stop()


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str, platform: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass  # Urza restarting
        time.sleep(0.5)
    logs = "\n".join(f"----- {p.service} -----\n{p.tail(40)}" for p in platform.procs)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs}")


def _artifacts(http: httpx.Client, blueprint_id: str) -> dict[str, dict[str, Any]]:
    """pipeline -> artifact record, from Urza's blueprint record."""
    record = http.get(f"/api/v1/blueprints/{blueprint_id}").json()
    return {a["pipeline"]: a for a in record["artifacts"]}


def _blueprint() -> BlueprintIR:
    irs = builtin_blueprints(TensorInterface(layout="BD", features=16))
    return next(ir for ir in irs if ir.tags[0] == "bottleneck")


def _counted(proc: Any, metric: str, outcome: str) -> float:
    """The sum of ``metric``'s samples with ``outcome`` on ``proc``'s /metrics (0 before the first)."""
    text = httpx.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.split("{", 1)[0] in (metric, f"{metric}_total") and f'outcome="{outcome}"' in line)


def test_blueprint_to_running_seed_through_real_services_surviving_kills(platform: Any, pulsar_url: str) -> None:
    http = httpx.Client(base_url=platform.url, timeout=30)
    ir = _blueprint()
    created = http.post("/api/v1/blueprints", content=ir.model_dump_json(),
                        headers={"Content-Type": "application/json"})
    assert created.status_code == 201, created.text
    bid = created.json()["blueprint_id"]

    # Kill the compile worker in the middle of the standard (AOTInductor) compile: it has announced
    # COMPILING and holds the job unacknowledged.
    _wait(lambda: _artifacts(http, bid).get("standard", {}).get("status") == "COMPILING", 600,
          "the standard compile to start", platform)
    time.sleep(2.0)
    platform.tezzeret.kill()
    assert _artifacts(http, bid)["standard"]["status"] == "COMPILING"
    platform.tezzeret.start()  # the broker redelivers the unacknowledged job to the new process

    _wait(lambda: {a["status"] for a in _artifacts(http, bid).values()} == {"VALIDATED"}
          and len(_artifacts(http, bid)) == 2, 900, "both artifacts to be VALIDATED", platform)
    arts = _artifacts(http, bid)
    for pipeline, art in arts.items():
        report = art["validation"]
        assert report["passed"] and report["hardware"] == platform.hardware, (pipeline, report)
        assert report["latency_ms_p50"] > 0 and report["repeats"] > 0 and art["compile_time_s"] > 0
        assert any(t.endswith("_speed") for t in report["tags"]) and art["sha256"]
    history = http.get(f"/api/v1/kernels/{arts['standard']['artifact_id']}").json()["history"]
    assert [h["to_status"] for h in history][-3:] == ["COMPILED", "VALIDATING", "VALIDATED"]

    # Tamiyo's view: a tag query finds them; Kasmina's: load one and run it as a seed.
    speed = next(t for t in arts["standard"]["validation"]["tags"] if t.endswith("_speed"))
    query = KernelQuery(tags_required=["bottleneck", speed], hardware=platform.hardware,
                        pipeline=CompilationPipeline.STANDARD, interface=ir.input)
    source = UrzaKernelSource(platform.url, cache_mb=64)
    found = source.query(query)
    assert [a.artifact_id for a in found.artifacts] == [arts["standard"]["artifact_id"]]
    aid = found.artifacts[0].artifact_id
    assert isinstance(source.load(aid), CompiledKernel)
    model = wrap(mlp(), fast_config(), source)  # layer "0" has 16 output features, like the blueprint
    x = torch.randn(16, 8)
    driver = Driver(model, x)
    driver.to_stage("0", 0, aid, SeedStage.LOADING)
    assert driver.apply(advance("0", 0, SeedStage.TRAINING)) == []
    layer = kasmina_layers(model)["0"]
    assert layer.stage(0) is SeedStage.TRAINING  # weights are program inputs: the compiled seed trains
    seed = layer.seeds["0"]
    assert isinstance(seed, CompiledKernel)
    before = seed.flat_parameters.detach().clone()
    train_steps(model, x, 6)  # forward and backward both run the compiled programs
    assert not torch.equal(before, seed.flat_parameters.detach())
    assert torch.isfinite(model(x)).all()

    # Urza dies without warning and comes back: records, tags and bytes are all still there.
    before = http.get(f"/api/v1/blueprints/{bid}").json()
    platform.urza.kill()
    platform.urza.start()
    assert http.get(f"/api/v1/blueprints/{bid}").json() == before
    again = UrzaKernelSource(platform.url, cache_mb=64, prewarm_loaders=False)
    assert [a.artifact_id for a in again.query(query).artifacts] == [aid]
    kernel = again.load(aid)
    assert torch.equal(kernel(torch.ones(2, 16)), source.load(aid)(torch.ones(2, 16)))

    # After a kill -9 the outbox may send a job again (the same job): neither worker does the work twice.
    jobs = [CompilationJob.model_validate(j["job"]) for j in http.get(f"/api/v1/blueprints/{bid}/jobs").json()]
    histories = {a["artifact_id"]: http.get(f"/api/v1/kernels/{a['artifact_id']}").json()["history"]
                 for a in arts.values()}
    def acknowledged() -> tuple[float, float]:
        return (_counted(platform.tezzeret, "esper_tezzeret_jobs", "repeat")
                + _counted(platform.tezzeret, "esper_job_worker_jobs", "duplicate"),
                _counted(platform.urabrask, "esper_urabrask_jobs", "repeat"))

    compiled_before, validated_before = acknowledged()
    replay = connect(pulsar_url, producer_name="outbox-replay")
    try:
        for job in jobs:
            replay.publish(Topic.COMPILATION_JOBS, job)
        replay.publish(Topic.VALIDATION_JOBS, ValidationJob(artifact_id=aid, blueprint_id=bid,
                                                            hardware=platform.hardware))
        replay.flush()
    finally:
        replay.close()
    # A job the restarted worker finished itself is a duplicate it remembers; one finished before the kill is
    # a repeat it recognises from Urza's record. Either way: acknowledged, no work.
    wanted = (compiled_before + len(jobs), validated_before + 1)
    _wait(lambda: all(got >= want for got, want in zip(acknowledged(), wanted, strict=True)), 120,
          "both workers to acknowledge the repeated jobs", platform)
    assert {a: http.get(f"/api/v1/kernels/{a}").json()["history"] for a in histories} == histories  # no new work
    http.close()
