"""Karn in the loop: a field report on the bus becomes a child in Urza, with its lineage, compiled by Tezzeret.

Two ways, one check:

* on the real broker (``integration``): ``esper serve urza | tezzeret | urabrask | karn`` as processes on Pulsar,
  Urza and Karn sharing one PostgreSQL database as in docker compose, configured only by ``ESPER_*`` variables;
* in one process (``slow``): the standalone platform with Karn on the memory bus and SQLite.

Tamiyo's part is played by publishing a FieldReport: a parent kernel FOSSILIZED somewhere. Karn stores it, runs
a round, and submits a mutation of the parent to Urza; Urza keeps the mutation record in the child's lineage and
queues its compilation; Tezzeret compiles it (and Urabrask judges it).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from esper_contracts import BlueprintLineage, FieldReport, KernelStatus, Outcome, TensorInterface, builtin_blueprints
from esper_devtools.processes import Proc, free_port
from esper_oona import connect
from esper_urza_client import UrzaClient

S = KernelStatus
COMPILED_OR_LATER = frozenset({S.COMPILED, S.VALIDATING, S.VALIDATED, S.REJECTED})


def _wait(what: str, probe: Any, timeout_s: float) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def field_report_becomes_a_compiled_child(urza_url: str, karn_url: str, bus_url: str, hardware: str) -> None:
    """The check both tests run: parent validated, FieldReport published, child stored with lineage and compiled."""
    urza = UrzaClient(urza_url)
    parent = urza.submit_blueprint(builtin_blueprints(TensorInterface(layout="BD", features=8))[0])
    pid = parent.blueprint_id

    def final(blueprint_id: str) -> list[Any]:
        arts = [a for a in urza.blueprint(blueprint_id).artifacts if a.hardware == hardware]
        return arts if arts and all(a.status in (S.VALIDATED, S.REJECTED, S.FAILED) for a in arts) else []

    kernels = _wait("the parent's kernels", lambda: final(pid), 300)
    assert all(a.status is S.VALIDATED for a in kernels), [(a.status, a.error) for a in kernels]

    tamiyo = connect(bus_url, producer_name="tamiyo")
    try:
        report = FieldReport(blueprint_id=pid, kernel_artifact_id=kernels[0].artifact_id, seed_id="hidden.0[0]",
                             pre_metric=0.71, post_metric=0.78, outcome=Outcome.FOSSILIZED)
        tamiyo.publish("innovation.field_reports", report)
        tamiyo.flush()
    finally:
        tamiyo.close()

    lineage: BlueprintLineage = _wait("a child of the parent in Urza",
                                      lambda: (view := urza.lineage(pid)).children and view, 180)
    child = lineage.children[0]
    assert child.known and child.mutation is not None
    assert child.mutation.parent_id == pid and child.mutation.generation == 1 and child.mutation.proposer == "karn"
    record = urza.blueprint(child.blueprint_id)
    assert record.ir.parent_ids == [pid] and record.ir.mutation == child.mutation
    assert (record.ir.input, record.ir.output) == (parent.ir.input, parent.ir.output)
    assert urza.lineage(child.blueprint_id).mutation == child.mutation

    def compiled() -> list[Any]:
        arts = [a for a in urza.blueprint(child.blueprint_id).artifacts if a.hardware == hardware]
        return arts if arts and all(a.status in COMPILED_OR_LATER or a.status is S.FAILED for a in arts) else []

    arts = _wait("Tezzeret to compile the child", compiled, 300)
    assert all(a.status in COMPILED_OR_LATER and a.sha256 for a in arts), [(a.status, a.error) for a in arts]
    status = httpx.get(f"{karn_url}/api/v1/status", timeout=10).json()
    assert status["field_reports"] >= 1 and status["children"] >= 1
    urza.close()


@pytest.mark.integration
@pytest.mark.timeout(1200)
def test_on_pulsar_and_postgresql(tmp_path: Path, pulsar_url: str, postgres_database_url: str) -> None:
    run = uuid.uuid4().hex[:8]
    hardware = f"cpu_karn{run}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    base |= {"ESPER_BUS_URL": pulsar_url, "ESPER_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1"}
    urza_port = free_port()
    urza_url = f"http://127.0.0.1:{urza_port}"
    urza = Proc("urza", base | {
        "ESPER_PORT": str(urza_port), "ESPER_DATA_DIR": str(tmp_path / "urza"),
        "ESPER_DATABASE_URL": postgres_database_url, "ESPER_BLOB_URL": (tmp_path / "blobs").as_uri(),
        "ESPER_SEED_LIBRARY": "false", "ESPER_PIPELINES": '["fast"]', "ESPER_HARDWARE": f'["{hardware}"]',
        "ESPER_BATCH_SIZE": "8", "ESPER_OUTBOX_INTERVAL_S": "0.5", "ESPER_SUBSCRIPTION": f"urza-{run}",
    }, tmp_path)
    worker_env = base | {"ESPER_URZA_URL": urza_url, "ESPER_HARDWARE": hardware, "ESPER_NACK_DELAY_MS": "500"}
    tezzeret = Proc("tezzeret", worker_env | {"ESPER_PORT": str(free_port())}, tmp_path)
    urabrask = Proc("urabrask", worker_env | {"ESPER_PORT": str(free_port()), "ESPER_BUDGET_S": "2"}, tmp_path)
    karn_port = free_port()
    karn = Proc("karn", base | {  # the same database as Urza: its tables are karn_*
        "ESPER_PORT": str(karn_port), "ESPER_DATABASE_URL": postgres_database_url, "ESPER_URZA_URL": urza_url,
        "ESPER_SUBSCRIPTION": f"karn-{run}", "ESPER_CHILDREN_PER_ROUND": "1", "ESPER_ROUND_INTERVAL_S": "0.5",
        "ESPER_NACK_DELAY_MS": "500", "ESPER_SEED": "0",
    }, tmp_path)
    procs = [urza, tezzeret, urabrask, karn]
    try:
        for proc in procs:
            proc.start()
        field_report_becomes_a_compiled_child(urza_url, f"http://127.0.0.1:{karn_port}", pulsar_url, hardware)
    except BaseException:
        for p in procs:
            sys.stderr.write(f"\n----- {p.service} log -----\n{p.tail(120)}\n")
        raise
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Any]:
    from esper.standalone import LocalPlatform

    with LocalPlatform(tmp_path, pipelines=["fast"], profile_budget_s=0.5,
                       karn={"children_per_round": 1, "round_interval_s": 0.2, "seed": 0}) as platform:
        yield platform


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_in_process_on_the_memory_bus(standalone: Any) -> None:
    field_report_becomes_a_compiled_child(standalone.urza_url, standalone.karn_url, standalone.bus_url, "cpu")
