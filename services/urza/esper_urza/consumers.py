"""Bus consumers: Tezzeret's compilation results, Urabrask's validation reports, Tamiyo's field reports.

Returning acknowledges a message; raising asks for redelivery, and after Oona's redelivery limit the
message goes to ``<topic>.dlq``. So: a repeat or late news is acknowledged (the ledger already made it
a no-op); an illegal status move is logged and acknowledged (redelivering cannot make it legal); a
message about something not stored yet, or one Urza cannot accept, raises, so it is retried and, if it
stays wrong, kept on the dead-letter topic for a person to look at.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from esper_contracts import CompiledKernelArtifact, Envelope, FieldReport, Topic, UrabraskValidationReport

from .catalog import Catalog
from .ledger import Ledger
from .transitions import IllegalTransition

if TYPE_CHECKING:
    from esper_oona import Bus, Subscription

log = logging.getLogger(__name__)


class UrzaConsumers:
    """The three handlers, bound to Urza's catalog and ledger."""

    def __init__(self, catalog: Catalog, ledger: Ledger) -> None:
        self.catalog = catalog
        self.ledger = ledger

    def on_compilation_result(self, envelope: Envelope[Any]) -> None:
        """Apply a CompiledKernelArtifact from Tezzeret."""
        artifact: CompiledKernelArtifact = envelope.payload
        try:
            result = self.ledger.record_compilation(artifact, source="bus")
        except IllegalTransition as exc:
            log.warning("compilation result refused: %s", exc, extra=_trace(envelope))
            return
        log.debug("compilation result %s", result.decision.value, extra=_trace(envelope))

    def on_validation_report(self, envelope: Envelope[Any]) -> None:
        """Apply an UrabraskValidationReport."""
        report: UrabraskValidationReport = envelope.payload
        try:
            result = self.ledger.record_validation(report, source="bus")
        except IllegalTransition as exc:
            log.warning("validation report refused: %s", exc, extra=_trace(envelope))
            return
        log.debug("validation report %s", result.decision.value, extra=_trace(envelope))

    def on_field_report(self, envelope: Envelope[Any]) -> None:
        """Store a FieldReport (once, however often it is delivered)."""
        report: FieldReport = envelope.payload
        self.catalog.add_field_report(report)

    def attach(self, bus: Bus, subscription: str, *, max_redeliveries: int = 3,
               nack_delay_ms: int = 1000) -> list[Subscription]:
        """Attach every handler under one subscription name; replicas with the same name share the work.

        ``earliest``: a subscription created for the first time also gets what was published before it.
        """
        options: dict[str, Any] = {"max_redeliveries": max_redeliveries, "nack_delay_ms": nack_delay_ms,
                                   "initial_position": "earliest"}
        return [
            bus.subscribe(Topic.COMPILATION_RESULTS, subscription, self.on_compilation_result, **options),
            bus.subscribe(Topic.VALIDATION_REPORTS, subscription, self.on_validation_report, **options),
            bus.subscribe(Topic.FIELD_REPORTS, subscription, self.on_field_report, **options),
        ]


def _trace(envelope: Envelope[Any]) -> dict[str, str]:
    return {"message_id": envelope.message_id, "trace_id": envelope.trace_id, "producer": envelope.producer}
