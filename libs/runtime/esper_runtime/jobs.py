"""The job worker every job-consuming service shares: Tezzeret and Urabrask today, Karn and Elesh next.

A job is a contract model with a ``job_id`` that arrives on one catalogue topic. :class:`JobWorker` takes
the jobs of one subscription one at a time and hands each to the service's handler, which does the work
and publishes its results (passing the job's envelope as ``parent``). The worker then flushes the bus and
only then acknowledges the job: a worker that dies at any point before leaves the job unacknowledged for
the broker to redeliver, and no job is acknowledged whose results the broker does not hold.

What a handler's exception means:

* :class:`PermanentJobError`: the job can never succeed; it goes to the topic's dead-letter topic at
  once, with the error text as the reason.
* anything else is taken as transient (a dependency down, a worker hiccup): the job is redelivered after
  ``nack_delay_ms``, and dead-lettered after ``max_redeliveries``.

Delivery is at least once, so handlers must be idempotent. The worker helps twice: it remembers the ids of
the last jobs it completed and acknowledges a repeat without work, and an optional ``is_done(job)`` hook
asks the service's own records (Urza, say) whether another process already did the job.

:class:`JobService` is the :class:`~esper_runtime.Service` around one worker: the bus with a receive queue
of one, the settings, the ``consuming`` health check and the ``jobs`` section of ``/healthz``, and the stop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import Field

from esper_contracts import Envelope, payload_model
from esper_oona import RejectMessage

from .metrics import StateCollector, family, histogram
from .service import Service
from .settings import ServiceSettings

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from esper_oona import Bus, Subscription
    from esper_oona.bus import InitialPosition

log = logging.getLogger(__name__)


class JobPayload(Protocol):
    """What the worker needs of a job model: an id that stays the same across redeliveries."""

    @property
    def job_id(self) -> str:
        """The job's id (contract job models default it to a fresh uuid when the job is created)."""
        ...


J = TypeVar("J", bound=JobPayload)
R = TypeVar("R")

#: Does one job and publishes its results; returns what the job came to (for ``observe``). The second
#: argument is the job's envelope, to pass as ``parent`` when publishing so results carry its trace.
JobHandler = Callable[[J, Envelope[Any]], R]


class PermanentJobError(RejectMessage):
    """Raised by a job handler for a job that can never succeed: it is dead-lettered at once, with this text."""


@dataclass(frozen=True)
class JobHealth:
    """A snapshot of one job worker, shown under ``jobs`` in ``/healthz``."""

    topic: str
    subscription: str
    consuming: bool
    #: jobs handled and acknowledged
    done: int
    #: repeats of done jobs acknowledged without work
    duplicates: int
    #: permanent errors: dead-lettered at once
    failed: int
    #: transient errors: the job was handed back for redelivery (or dead-lettered at the redelivery limit)
    retried: int
    current_job: str | None
    #: seconds the current job has been running
    current_job_s: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready values."""
        return asdict(self)


class JobWorker(Generic[J, R]):
    """Consumes one jobs topic, one job at a time, acknowledging each job only after its results are flushed.

    ``handler(job, envelope)`` does the work and publishes its results on ``bus``. ``observe(job, result)``
    is told of every completed job (for metrics; its errors are logged, never held against the job).
    ``is_done(job)`` is the service's own idempotency check: True acknowledges the job without work.
    The last ``remember`` completed job ids are acknowledged without work when they come again.
    ``max_redeliveries`` and ``nack_delay_ms`` default to the bus's.
    """

    def __init__(self, bus: Bus, topic: str, subscription: str, handler: JobHandler[J, R], *,
                 observe: Callable[[J, R], None] | None = None, is_done: Callable[[J], bool] | None = None,
                 remember: int = 1024, max_redeliveries: int | None = None, nack_delay_ms: int | None = None,
                 initial_position: InitialPosition = "earliest") -> None:
        model = payload_model(topic)
        if "job_id" not in model.model_fields:  # checked here: a pydantic model satisfies JobPayload for mypy
            raise ValueError(f"topic {topic!r} carries {model.__name__}, which has no job_id: not a jobs topic")
        self.bus = bus
        self.topic = topic
        self.subscription_name = subscription
        self._handler = handler
        self._observe = observe
        self._is_done = is_done
        self._remember = remember
        self._max_redeliveries = max_redeliveries
        self._nack_delay_ms = nack_delay_ms
        self._initial_position: InitialPosition = initial_position
        self._subscription: Subscription | None = None
        # Written by the consumer thread, read by /healthz on the server's threads.
        self._lock = threading.Lock()
        self._done_ids: dict[str, None] = {}  # insertion-ordered: the oldest id is forgotten first
        self._done = self._duplicates = self._failed = self._retried = 0
        self._current: tuple[str, float] | None = None
        self._last_error: str | None = None

    @property
    def subscription(self) -> Subscription | None:
        """The bus subscription once started (its ``stats`` count acks, nacks and dead letters)."""
        return self._subscription

    @property
    def consuming(self) -> bool:
        """True between ``start`` and ``stop``."""
        return self._subscription is not None and not self._subscription.closed

    def start(self) -> JobWorker[J, R]:
        """Subscribe and start taking jobs (a worker starts once: a second consumer would run two jobs at once)."""
        if self._subscription is not None:
            raise RuntimeError(f"job worker on {self.topic}/{self.subscription_name} was already started")
        self._subscription = self.bus.subscribe(
            self.topic, self.subscription_name, self._on_job, max_redeliveries=self._max_redeliveries,
            nack_delay_ms=self._nack_delay_ms, initial_position=self._initial_position)
        log.info("taking jobs", extra={"topic": self.topic, "subscription": self.subscription_name})
        return self

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop taking jobs; True when no job was left running.

        The job in flight gets ``timeout_s`` to finish and is then acknowledged as usual. One that overruns
        is abandoned unacknowledged: the broker gives it to the next worker (its late results, if any, are
        repeats that idempotent handlers absorb).
        """
        if self._subscription is None or self._subscription.closed:
            return True
        self._subscription.close(timeout_s)
        with self._lock:
            abandoned = self._current
        if abandoned is not None:
            log.warning("job still running at stop: abandoned unacknowledged, it will be redelivered",
                        extra={"topic": self.topic, "job_id": abandoned[0]})
        return abandoned is None

    def health(self) -> JobHealth:
        """Counters, the job in flight and the last error."""
        with self._lock:
            current = self._current
            return JobHealth(
                topic=self.topic, subscription=self.subscription_name, consuming=self.consuming,
                done=self._done, duplicates=self._duplicates, failed=self._failed, retried=self._retried,
                current_job=current[0] if current else None,
                current_job_s=round(time.monotonic() - current[1], 3) if current else None,
                last_error=self._last_error)

    def _on_job(self, envelope: Envelope[Any]) -> None:
        """The bus handler: returning acknowledges the job, raising hands it back (or dead-letters it)."""
        job: J = envelope.payload
        with self._lock:
            self._current = (job.job_id, time.monotonic())
        try:
            if self._already_done(job):
                with self._lock:
                    self._duplicates += 1
                log.info("job already done; acknowledged without work", extra={"job_id": job.job_id})
                return
            result = self._handler(job, envelope)
            self.bus.flush()  # the results must be on the broker before the acknowledgement that follows
        except Exception as exc:
            self._record_error(job, exc)
            raise
        finally:
            with self._lock:
                self._current = None
        with self._lock:
            self._done += 1
            self._done_ids[job.job_id] = None
            if len(self._done_ids) > self._remember:
                del self._done_ids[next(iter(self._done_ids))]
        if self._observe is not None:
            try:
                self._observe(job, result)
            except Exception:  # metrics must not send a finished job round again
                log.exception("observing a finished job failed", extra={"job_id": job.job_id})

    def _already_done(self, job: J) -> bool:
        with self._lock:
            if job.job_id in self._done_ids:
                return True
        return self._is_done is not None and self._is_done(job)

    def _record_error(self, job: J, exc: Exception) -> None:
        permanent = isinstance(exc, RejectMessage)
        with self._lock:
            if permanent:
                self._failed += 1
            else:
                self._retried += 1
            self._last_error = f"job {job.job_id}: {type(exc).__name__}: {exc}"[:2000]
        if permanent:
            log.error("job can never succeed; dead-lettered", extra={"job_id": job.job_id, "error": str(exc)})


class JobSettings(ServiceSettings):
    """Settings of a job-consuming service (``ESPER_SUBSCRIPTION``, ``ESPER_MAX_REDELIVERIES``, ...)."""

    subscription: str | None = Field(default=None, description="the jobs subscription; default: see subscription_name")
    max_redeliveries: int = Field(default=5, ge=0, description="redeliveries of a job whose handler raised")
    nack_delay_ms: int = Field(default=2000, ge=0, description="wait before a failed job is redelivered")

    def subscription_name(self) -> str:
        """The subscription the service's replicas share: ``subscription`` when set, else the service name."""
        return self.subscription or self.service_name


class JobService(Service, Generic[J, R]):
    """A service whose work is the jobs of one topic.

    A subclass sets ``jobs_topic`` and implements :meth:`job_handler` (and :meth:`observe` for metrics);
    it extends ``on_start``/``on_stop`` with its own set-up and clean-up around ``super()``::

        class UrabraskService(JobService[ValidationJob, ValidationOutcome]):
            jobs_topic = "validation.jobs"
            settings: UrabraskSettings  # a JobSettings

            def job_handler(self) -> JobHandler[ValidationJob, ValidationOutcome]:
                return ValidateWorker(self.bus, ...).process  # (job, envelope) -> outcome; publishes its report
    """

    #: The catalogue topic the jobs arrive on.
    jobs_topic: ClassVar[str]
    settings: JobSettings

    def __init__(self, settings: JobSettings) -> None:
        super().__init__(settings)
        self.job_worker: JobWorker[J, R] | None = None
        self.add_health_check("consuming", lambda: self.job_worker is not None and self.job_worker.consuming)
        self.add_health_view("jobs", lambda: self.job_worker.health().as_dict() if self.job_worker else {})
        self.job_seconds = histogram(self.registry, "esper_job_seconds", service=self.name)
        self.registry.register(StateCollector(self._job_families))

    @property
    def bus(self) -> Bus:
        """The bus, with a receive queue of one: a busy worker must not sit on jobs other replicas could take."""
        if self._bus is None:
            from esper_oona import connect

            self._bus = connect(self.settings.bus_url, producer_name=self.name, topic_prefix=self.settings.topic_prefix,
                                receiver_queue_size=1,
                                max_redeliveries=self.settings.max_redeliveries,
                                nack_delay_ms=self.settings.nack_delay_ms)
        return self._bus

    def job_handler(self) -> JobHandler[J, R]:
        """The handler of every job; called once at start, after the service's own set-up."""
        raise NotImplementedError(f"{type(self).__name__} must implement job_handler()")

    def observe(self, job: J, result: R) -> None:
        """Record a completed job (in metrics, say); does nothing unless overridden."""

    def on_start(self) -> None:
        """Start taking jobs on the settings' subscription, from the oldest the broker holds."""
        self.job_worker = JobWorker(self.bus, self.jobs_topic, self.settings.subscription_name(),
                                    self._timed(self.job_handler()), observe=self.observe).start()

    def _timed(self, handler: JobHandler[J, R]) -> JobHandler[J, R]:
        """``handler``, its every attempt timed into ``esper_job_seconds`` (failed attempts too)."""
        seconds = self.job_seconds.labels(self.name)

        def timed(job: J, envelope: Envelope[Any]) -> R:
            with seconds.time():
                return handler(job, envelope)

        return timed

    def _job_families(self) -> list[Metric]:
        """``esper_job_worker_jobs`` and ``esper_job_worker_busy`` from the worker's own counters."""
        jobs, busy = family("esper_job_worker_jobs"), family("esper_job_worker_busy")
        health = self.job_worker.health() if self.job_worker is not None else None
        counts = (health.done, health.duplicates, health.failed, health.retried) if health else (0, 0, 0, 0)
        for outcome, value in zip(("done", "duplicate", "failed", "retried"), counts, strict=True):
            jobs.add_metric([self.name, outcome], value)
        busy.add_metric([self.name], 1.0 if health is not None and health.current_job is not None else 0.0)
        return [jobs, busy]

    def on_stop(self) -> None:
        """Stop taking jobs: the job in flight gets the shutdown timeout, else it is redelivered elsewhere."""
        if self.job_worker is not None:
            self.job_worker.stop(self.settings.shutdown_timeout_s)
