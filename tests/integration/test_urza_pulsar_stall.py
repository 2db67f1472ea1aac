"""Urza with its Pulsar broker stalled: a submission still commits and answers at once; the outbox catches up.

The stall is real: the local broker process (this repository's infra scripts start it, and record its pid) is
stopped with SIGSTOP for a few seconds, so every byte to and from it waits, then resumed with SIGCONT. The
memory-bus version of this case (services/urza/tests) fakes the stall; this one runs against the real client.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from esper_contracts import TensorInterface, Topic, builtin_blueprints
from esper_devtools import infra
from esper_oona import connect
from esper_oona.testing import Recorder
from esper_urza.service import create_service

pytestmark = pytest.mark.integration


def _broker_pid() -> int:
    path = Path(infra.state_dir()) / "pulsar" / "pulsar.pid"
    if not path.is_file():
        pytest.fail(f"no pid file at {path}: this test stalls the broker the infra scripts started", pytrace=False)
    return int(path.read_text().strip())


class BrokerStall:
    """Stops the broker process (SIGSTOP) and resumes it (SIGCONT); resuming twice is harmless."""

    def __init__(self, pid: int) -> None:
        self.pid, self.stopped = pid, False

    def __call__(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            os.kill(self.pid, signal.SIGCONT)
            self.stopped = False


@pytest.fixture
def stalled_broker(pulsar_url: str) -> Iterator[BrokerStall]:
    """A stall of the local broker, resumed after the test whatever happens."""
    stall = BrokerStall(_broker_pid())
    try:
        yield stall
    finally:
        stall.resume()


def test_a_stalled_broker_never_holds_a_submission(pulsar_url: str, stalled_broker: BrokerStall,
                                                   tmp_path: Path) -> None:
    prefix = f"stall-{uuid.uuid4().hex[:8]}."
    watcher = connect(pulsar_url, producer_name="test", topic_prefix=prefix)
    jobs = Recorder()
    watcher.subscribe(Topic.COMPILATION_JOBS, "test-watch", jobs, initial_position="earliest")
    urza = create_service(data_dir=tmp_path, bus_url=pulsar_url, topic_prefix=prefix, seed_library=False,
                          outbox_interval_s=0.1)
    ir = next(b for b in builtin_blueprints(TensorInterface(layout="BD", features=16)) if b.tags[0] == "bottleneck")
    try:
        with TestClient(urza.app) as client:
            assert client.get("/api/v1/blueprints").status_code == 200  # producers are open before the stall
            stalled_broker()
            started = time.monotonic()
            response = client.post("/api/v1/blueprints", content=ir.model_dump_json(),
                                   headers={"Content-Type": "application/json"})
            answered_in = time.monotonic() - started
            assert response.status_code == 201, response.text
            assert answered_in < 3.0, f"the submission waited {answered_in:.1f} s for the stalled broker"
            listed = client.get(f"/api/v1/blueprints/{ir.ir_hash()}/jobs").json()
            assert listed and not any(j["published"] for j in listed)  # committed, waiting in the outbox
            time.sleep(3.0)  # still stalled: nothing can have gone out
            assert jobs.received == []
            stalled_broker.resume()
            sent = jobs.wait_received(len(listed), timeout_s=60)  # the outbox catches up once the broker is back
            assert sorted(e.payload.job_id for e in sent) == sorted(j["job"]["job_id"] for j in listed)
    finally:
        stalled_broker.resume()
        watcher.close()
