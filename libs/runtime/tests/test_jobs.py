"""The job worker on memory://: results before the ack, one job at a time, dead letters, stop, health."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from esper_contracts import Envelope, UrabraskValidationReport, ValidationJob
from esper_oona import REASON_REJECTED, Bus, connect
from esper_oona.testing import Collector, wait_for
from esper_runtime import JobService, JobSettings, JobWorker, PermanentJobError

JOBS = "validation.jobs"
RESULTS = "validation.reports"
SUBSCRIPTION = "workers"


@pytest.fixture
def bus(memory_bus_url: str) -> Iterator[Bus]:
    b = connect(memory_bus_url, producer_name="worker", nack_delay_ms=20, max_redeliveries=3)
    yield b
    b.close(timeout_s=1)


def job(n: int) -> ValidationJob:
    """A job whose artifact id carries ``n`` (its result names the same artifact)."""
    return ValidationJob(artifact_id=f"{n:064x}-cpu-fast-{'a' * 12}", blueprint_id=f"{n:064x}", hardware="cpu")


def report_for(j: ValidationJob) -> UrabraskValidationReport:
    return UrabraskValidationReport(artifact_id=j.artifact_id, hardware=j.hardware, passed=False,
                                    rejection_reason=f"done by job {j.job_id}")


class Publishing:
    """A handler that publishes one report per job, after ``gate`` opens (when given), or ``dies`` there."""

    def __init__(self, bus: Bus, gate: threading.Event | None = None, *, dies: bool = False) -> None:
        self.bus = bus
        self.gate = gate
        self.dies = dies
        self.started = threading.Event()
        self.jobs: list[str] = []

    def __call__(self, j: ValidationJob, envelope: Envelope[Any]) -> str:
        self.jobs.append(j.job_id)
        self.started.set()
        if self.gate is not None and not self.gate.wait(10):
            raise RuntimeError("gate never opened")
        if self.dies:
            raise RuntimeError("killed before publishing")  # what a killed process never gets to do
        self.bus.publish(RESULTS, report_for(j), key=j.artifact_id, parent=envelope)
        return "reported"


def test_results_are_flushed_before_the_job_is_acknowledged(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    results = Collector(bus, RESULTS)
    worker = JobWorker(bus, JOBS, SUBSCRIPTION, Publishing(bus)).start()
    events: list[str] = []
    real_publish, real_flush = bus.publish, bus.flush

    def acked() -> int:
        return worker.subscription.stats.acked if worker.subscription is not None else -1

    def publish(topic: str, payload: Any, **kw: Any) -> Envelope[Any]:
        events.append(f"publish {topic} (acked: {acked()})")
        return real_publish(topic, payload, **kw)

    def flush(timeout_s: float = 30.0) -> None:
        events.append(f"flush (acked: {acked()})")
        real_flush(timeout_s)

    monkeypatch.setattr(bus, "publish", publish)
    monkeypatch.setattr(bus, "flush", flush)
    sent = bus.publish(JOBS, job(1))
    [report] = results.wait_for(1)
    wait_for(lambda: acked() == 1, what="the ack")
    # The job's own publish, then the handler's result and the worker's flush, both before the ack.
    assert events == [f"publish {JOBS} (acked: 0)", f"publish {RESULTS} (acked: 0)", "flush (acked: 0)"]
    assert results.received[0].correlation_id == sent.correlation_id  # results answer their job
    assert report.artifact_id == job(1).artifact_id


def test_a_worker_killed_before_publishing_leaves_the_job_to_the_next_one(bus: Bus) -> None:
    results = Collector(bus, RESULTS)
    gate = threading.Event()
    dying = Publishing(bus, gate, dies=True)
    first = JobWorker(bus, JOBS, SUBSCRIPTION, dying).start()
    sent = bus.publish(JOBS, job(2)).payload
    assert dying.started.wait(5)
    assert first.health().current_job == sent.job_id
    assert first.stop(timeout_s=0.05) is False  # abandoned mid-job, unacknowledged

    survivor = Publishing(bus)
    second = JobWorker(bus, JOBS, SUBSCRIPTION, survivor).start()
    wait_for(lambda: second.health().done == 1, what="the redelivered job to be done")
    assert survivor.jobs == [sent.job_id]
    assert [r.artifact_id for r in results.wait_for(1)] == [sent.artifact_id]
    gate.set()  # the abandoned handler ends late; its job was taken from it, so its verdict counts for nothing
    wait_for(lambda: first.health().current_job is None, what="the late handler to end")
    time.sleep(0.1)
    assert survivor.jobs == [sent.job_id]  # not delivered a third time
    assert len(results.payloads) == 1


def test_a_worker_killed_after_publishing_is_followed_by_an_idempotent_ack(bus: Bus) -> None:
    results = Collector(bus, RESULTS)
    gate = threading.Event()

    def publish_then_hang(j: ValidationJob, envelope: Envelope[Any]) -> None:
        bus.publish(RESULTS, report_for(j), parent=envelope)
        gate.wait(10)
        raise RuntimeError("killed after publishing")

    first = JobWorker(bus, JOBS, SUBSCRIPTION, publish_then_hang).start()
    sent = bus.publish(JOBS, job(3)).payload
    results.wait_for(1)
    assert first.stop(timeout_s=0.05) is False

    def already_reported(j: ValidationJob) -> bool:
        return any(r.artifact_id == j.artifact_id for r in results.payloads)

    never = Publishing(bus)
    second = JobWorker(bus, JOBS, SUBSCRIPTION, never, is_done=already_reported).start()
    wait_for(lambda: second.health().duplicates == 1, what="the redelivered job to be recognised as done")
    gate.set()
    assert never.jobs == [] and second.health().done == 0
    assert [r.artifact_id for r in results.payloads] == [sent.artifact_id]


def test_jobs_run_one_at_a_time_in_arrival_order(bus: Bus) -> None:
    running, overlap, order = [0], [0], []
    lock = threading.Lock()

    def slow(j: ValidationJob, _envelope: Envelope[Any]) -> None:
        with lock:
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        time.sleep(0.02)
        order.append(j.job_id)
        with lock:
            running[0] -= 1

    worker = JobWorker(bus, JOBS, SUBSCRIPTION, slow).start()
    sent = [bus.publish(JOBS, job(n)).payload.job_id for n in range(6)]
    wait_for(lambda: worker.health().done == 6, what="six jobs")
    assert overlap[0] == 1 and order == sent
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()
    with pytest.raises(ValueError, match="SeedTelemetry, which has no job_id"):
        JobWorker(bus, "telemetry.seed.health", SUBSCRIPTION, slow)


def test_a_permanent_error_dead_letters_the_job_at_once_with_its_reason(bus: Bus) -> None:
    attempts: list[str] = []

    def refuse(j: ValidationJob, _envelope: Envelope[Any]) -> None:
        attempts.append(j.job_id)
        raise PermanentJobError(f"artifact {j.artifact_id[:8]} is unknown")

    worker = JobWorker(bus, JOBS, SUBSCRIPTION, refuse).start()
    sent = bus.publish(JOBS, job(4))
    [letter] = bus.read_dead_letters(JOBS, max_messages=1, timeout_s=5)
    assert letter.reason == REASON_REJECTED and letter.redelivery_count == 0
    assert f"artifact {job(4).artifact_id[:8]} is unknown" in letter.error
    assert letter.envelope().message_id == sent.message_id
    health = worker.health()
    assert attempts == [sent.payload.job_id] and (health.failed, health.retried, health.done) == (1, 0, 0)
    assert health.last_error is not None and "is unknown" in health.last_error


def test_a_transient_error_is_retried_and_counted(bus: Bus) -> None:
    calls: list[str] = []

    def flaky(j: ValidationJob, _envelope: Envelope[Any]) -> str:
        calls.append(j.job_id)
        if len(calls) == 1:
            raise ConnectionError("urza is down")
        return "ok"

    observed: list[tuple[str, str]] = []
    worker = JobWorker(bus, JOBS, SUBSCRIPTION, flaky, observe=lambda j, r: observed.append((j.job_id, r))).start()
    sent = bus.publish(JOBS, job(5)).payload
    wait_for(lambda: worker.health().done == 1, what="the retried job")
    health = worker.health()
    assert calls == [sent.job_id] * 2 and observed == [(sent.job_id, "ok")]
    assert (health.retried, health.failed) == (1, 0) and "ConnectionError: urza is down" in (health.last_error or "")
    assert bus.read_dead_letters(JOBS, timeout_s=0.1) == []


def test_a_repeat_of_a_done_job_is_acknowledged_without_work(bus: Bus) -> None:
    handler = Publishing(bus)
    worker = JobWorker(bus, JOBS, SUBSCRIPTION, handler).start()
    once = job(6)
    bus.publish(JOBS, once)
    bus.publish(JOBS, once)  # the producer sent it twice (an outbox replay, say)
    wait_for(lambda: worker.health().duplicates == 1, what="the repeat")
    assert handler.jobs == [once.job_id] and worker.health().done == 1


def test_stop_lets_the_job_in_flight_finish_and_acknowledges_it(bus: Bus) -> None:
    gate = threading.Event()
    handler = Publishing(bus, gate)
    worker = JobWorker(bus, JOBS, SUBSCRIPTION, handler).start()
    bus.publish(JOBS, job(7))
    assert handler.started.wait(5)
    threading.Timer(0.1, gate.set).start()
    assert worker.stop(timeout_s=5) is True
    health = worker.health()
    assert (health.done, health.consuming, health.current_job) == (1, False, None)
    after = Publishing(bus)
    JobWorker(bus, JOBS, SUBSCRIPTION, after).start()
    time.sleep(0.1)
    assert after.jobs == []  # acknowledged: nobody gets it again
    assert worker.stop() is True  # stopping twice is harmless


class Echo(JobService[ValidationJob, str]):
    """The smallest job service: reports every job as done."""

    jobs_topic = "validation.jobs"

    def job_handler(self) -> Any:
        return Publishing(self.bus)


def test_a_job_service_shows_its_worker_in_healthz_and_stops_it(memory_bus_url: str) -> None:
    service = Echo(JobSettings(service_name="echo", bus_url=memory_bus_url))
    with TestClient(service.app) as client:
        assert service.settings.subscription_name() == "echo"
        other = connect(memory_bus_url, producer_name="urza")
        results = Collector(other, RESULTS)
        other.publish(JOBS, job(8))
        results.wait_for(1)
        wait_for(lambda: client.get("/healthz").json()["jobs"]["done"] == 1, what="the job in /healthz")
        body = client.get("/healthz").json()
        assert body["checks"] == {"consuming": True}
        assert body["jobs"]["subscription"] == "echo" and body["jobs"]["topic"] == JOBS
        assert body["jobs"]["current_job"] is None and body["jobs"]["failed"] == 0
        other.close()
    assert service.job_worker is not None and not service.job_worker.consuming


class Picky(JobService[ValidationJob, str]):
    """Reports the jobs of even artifacts; refuses the others for good."""

    jobs_topic = "validation.jobs"

    def job_handler(self) -> Any:
        publishing = Publishing(self.bus)

        def handle(j: ValidationJob, envelope: Envelope[Any]) -> str:
            if int(j.blueprint_id, 16) % 2:
                raise PermanentJobError(f"odd artifact {j.artifact_id}")
            return publishing(j, envelope)

        return handle


def test_a_job_service_counts_its_jobs_their_time_and_its_dead_letters_on_metrics(memory_bus_url: str) -> None:
    service = Picky(JobSettings(service_name="tezzeret", bus_url=memory_bus_url))
    with TestClient(service.app) as client:
        other = connect(memory_bus_url, producer_name="urza")
        for n in (2, 3, 4):
            other.publish(JOBS, job(n))
        wait_for(lambda: 'outcome="dead_lettered",service="tezzeret",subscription="tezzeret",topic="validation.jobs"'
                         '} 1.0' in client.get("/metrics").text, what="the dead letter on /metrics")
        wait_for(lambda: 'esper_job_worker_jobs_total{outcome="done",service="tezzeret"} 2.0' in
                 client.get("/metrics").text, what="two jobs done on /metrics")
        text = client.get("/metrics").text
        assert 'esper_job_worker_jobs_total{outcome="failed",service="tezzeret"} 1.0' in text
        assert 'esper_job_worker_jobs_total{outcome="retried",service="tezzeret"} 0.0' in text
        assert 'esper_job_seconds_count{service="tezzeret"} 3.0' in text  # the refused attempt is timed too
        assert 'esper_job_worker_busy{service="tezzeret"} 0.0' in text
        other.close()
