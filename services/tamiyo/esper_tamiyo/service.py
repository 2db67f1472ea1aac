"""The Tamiyo service: the strategic controller on the bus, with its REST API.

It consumes ``telemetry.system.state`` (one packet per epoch boundary), ``telemetry.health.summaries``
(one per domain and window from the Narset coordinator), ``control.proposals``,
``control.scaffold.requests``, ``control.policy.updates`` and outcome reports on
``innovation.field_reports``; it publishes what :class:`~esper_tamiyo.controller.TamiyoController`
decides. Every reply carries the correlation id of the packet or proposal it answers.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError
from opentelemetry import trace
from pydantic import Field

from esper_contracts import Envelope, KernelStatus, Topic
from esper_policy import KernelSelector, TamiyoConfig, build_policy
from esper_runtime import Service, ServiceSettings, load_settings
from esper_runtime.metrics import StateCollector
from esper_urza_client import UrzaClient

from .api import bad_request, build_router
from .controller import ControllerOptions, Outgoing, TamiyoController
from .domains import load_domains
from .kernels import FileKernels, NoKernels, RiskFilter, UrzaKernels
from .tally import tamiyo_families

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("esper_tamiyo")


class TamiyoSettings(ServiceSettings):
    """Settings of Tamiyo (``ESPER_`` environment variables or a YAML file)."""

    service_name: str = "tamiyo"
    port: int = Field(default=8100, ge=0, le=65535)
    domains_file: Path | None = Field(default=None, description="Hierarchical control YAML (domains-*.yaml)")
    policy: TamiyoConfig = Field(default_factory=TamiyoConfig, description="The control policy's options")
    urza_url: str | None = Field(default=None, description="Urza's base URL, where kernels are queried")
    urza_token: str | None = Field(default=None,
                                   description="Urza's bearer token, viewer role (ESPER_URZA_TOKEN, from a Secret)")
    kernels_file: Path | None = Field(default=None, description="A JSON list of Urza's BlueprintRecords, each "
                                      "with its compiled artifacts (instead of Urza)")
    allocator_pool: float = Field(default=1.5, gt=0, description="Energy per region for Narset's allocator")
    emergency_tranche_fraction: float = Field(default=0.5, gt=0, le=1)
    ring_radius: int = Field(default=1, ge=0, description="Embargo ring: neighbouring regions on each side")
    history: int = Field(default=500, ge=10, description="Decisions kept for the decisions API")
    scaffold_pool: float = Field(default=2.0, ge=0, description="The scaffold steward's emergency pool (energy)")


class TamiyoService(Service):
    """Strategic controller."""

    description = ("Tamiyo: reads epoch heartbeats and domain health, decides adaptations, mints and allocates the "
                   "budget per region, funds opportunity proposals, protects scaffolds and volatile domains.")

    def __init__(self, settings: TamiyoSettings, kernels: KernelSelector | None = None) -> None:
        super().__init__(settings)
        self.settings: TamiyoSettings = settings
        from_urza = kernels is None and bool(settings.urza_url)
        if kernels is None:
            if settings.urza_url:
                kernels = UrzaKernels(settings.urza_url, token=settings.urza_token)
            elif settings.kernels_file is not None:
                kernels = FileKernels(settings.kernels_file)
            else:
                kernels = NoKernels()
        policy = settings.policy
        if from_urza:  # only what Urabrask validated and measured: never PENDING, FAILED or unmeasured kernels
            policy = policy.model_copy(update={"kernel_status": KernelStatus.VALIDATED})
        options = ControllerOptions(allocator_pool=settings.allocator_pool,
                                    emergency_tranche_fraction=settings.emergency_tranche_fraction,
                                    ring_radius=settings.ring_radius, history=settings.history,
                                    scaffold_pool=settings.scaffold_pool)
        fetcher = None
        if settings.urza_url:  # learned policy versions (PolicyUpdate.learned_policy) are fetched from Urza
            urza = UrzaClient(settings.urza_url, token=settings.urza_token)
            fetcher = urza.policy
        self.controller = TamiyoController(build_policy, RiskFilter(kernels, require_report=from_urza), policy,
                                           load_domains(settings.domains_file), options, policy_fetcher=fetcher)
        self.lock = threading.RLock()
        # Delivery is at least once: a redelivered packet gets the same answer again, never a second cycle.
        self._answers: OrderedDict[str, list[Outgoing]] = OrderedDict()
        self.app.include_router(build_router(self.controller, self.lock))
        self.app.add_exception_handler(RequestValidationError, bad_request)
        self.registry.register(StateCollector(self._families))

    def _families(self) -> list[Metric]:
        with self.lock:
            return tamiyo_families(self.controller)

    def on_start(self) -> None:
        """Subscribe to everything Tamiyo reads."""
        bus = self.bus
        bus.subscribe(Topic.SYSTEM_STATE, self.name, self._on_packet)
        bus.subscribe(Topic.HEALTH_SUMMARIES, self.name, self._on_summary)
        bus.subscribe(Topic.PROPOSALS, self.name, self._on_proposal)
        bus.subscribe(Topic.SCAFFOLD_REQUESTS, self.name, self._on_scaffold)
        bus.subscribe(Topic.FIELD_REPORTS, self.name, self._on_field_report)
        # A policy update that is a valid contract but out of range will never become valid: no retries.
        bus.subscribe(Topic.POLICY_UPDATES, self.name, self._on_policy_update, max_redeliveries=0)

    # ------------------------------------------------------------------------------------------ handlers

    def _publish(self, messages: list[Outgoing], parent: Envelope[Any]) -> None:
        for m in messages:
            self.bus.publish(m.topic, m.payload, key=m.key, parent=parent)

    def _on_packet(self, envelope: Envelope[Any]) -> None:
        packet = envelope.payload
        # The decision's span parents what it publishes: commands, allocations and field reports.
        with _tracer.start_as_current_span("tamiyo.decide", attributes={"esper.run_id": packet.run_id,
                                                                        "esper.epoch": packet.epoch}) as span, \
                self.lock:
            messages = self._answers.get(envelope.message_id)
            if messages is None:
                messages = self._answers[envelope.message_id] = self.controller.on_packet(packet)
                while len(self._answers) > 16:
                    self._answers.popitem(last=False)
            else:
                span.set_attribute("esper.repeat", True)  # a redelivered packet: the same answer again
            self._publish(messages, envelope)

    def _on_summary(self, envelope: Envelope[Any]) -> None:
        with self.lock:
            self.controller.on_health_summary(envelope.payload)

    def _on_proposal(self, envelope: Envelope[Any]) -> None:
        with self.lock:
            self._publish(self.controller.on_proposal(envelope.payload), envelope)

    def _on_scaffold(self, envelope: Envelope[Any]) -> None:
        if envelope.producer == self.bus.producer_name:
            return  # Tamiyo may publish scaffold requests of its own; it does not answer itself
        with self.lock:
            self.controller.on_scaffold_request(envelope.payload)

    def _on_field_report(self, envelope: Envelope[Any]) -> None:
        if envelope.producer == self.bus.producer_name:
            return  # our own reports, already known to the policy
        with self.lock:
            self.controller.on_field_report(envelope.payload)

    def _on_policy_update(self, envelope: Envelope[Any]) -> None:
        with self.lock:
            # Raising sends the message to control.policy.updates.dlq with the reason.
            self.controller.apply_policy_update(envelope.payload)


def create_service(config_file: str | Path | None = None, **overrides: Any) -> TamiyoService:
    """Build Tamiyo from a YAML file and overrides (``esper serve tamiyo``); ``kernels=`` injects a kernel source."""
    kernels = overrides.pop("kernels", None)
    return TamiyoService(load_settings(TamiyoSettings, config_file, **overrides), kernels=kernels)
