"""Bus consumers: Tezzeret's compilation results, Urabrask's validation reports, Tamiyo's field reports.

Returning acknowledges a message; raising asks for redelivery, and after Oona's redelivery limit the
message goes to ``<topic>.dlq``. So: a repeat or late news is acknowledged (the ledger already made it
a no-op); an illegal status move is logged and acknowledged (redelivering cannot make it legal). A
valid message that can never succeed — it names a blueprint or artifact Urza does not hold (a blueprint
is committed before any job about it is sent, so it cannot appear later), or one Urza refuses — is
rejected (:class:`~esper_oona.RejectMessage`): it goes to ``<topic>.dlq`` at once with the reason, no
redelivery spent. Anything else (the database down, say) raises and is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from esper_contracts import CompiledKernelArtifact, Envelope, FieldReport, Topic, UrabraskValidationReport
from esper_oona import RejectMessage

from .catalog import Catalog
from .errors import BadRequest, NotFound
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
            with _permanent_errors_rejected():
                result = self.ledger.record_compilation(artifact, source="bus")
        except IllegalTransition as exc:
            log.warning("compilation result refused: %s", exc, extra=_trace(envelope))
            return
        log.debug("compilation result %s", result.decision.value, extra=_trace(envelope))

    def on_validation_report(self, envelope: Envelope[Any]) -> None:
        """Apply an UrabraskValidationReport."""
        report: UrabraskValidationReport = envelope.payload
        try:
            with _permanent_errors_rejected():
                result = self.ledger.record_validation(report, source="bus")
        except IllegalTransition as exc:
            log.warning("validation report refused: %s", exc, extra=_trace(envelope))
            return
        log.debug("validation report %s", result.decision.value, extra=_trace(envelope))

    def on_field_report(self, envelope: Envelope[Any]) -> None:
        """Store a FieldReport (once, however often it is delivered)."""
        report: FieldReport = envelope.payload
        with _permanent_errors_rejected():
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


@contextmanager
def _permanent_errors_rejected() -> Iterator[None]:
    """Turn "no such blueprint/artifact" and "refused" into a rejection: the message goes to the DLQ at once."""
    try:
        yield
    except (NotFound, BadRequest) as exc:
        raise RejectMessage(f"{type(exc).__name__}: {exc}") from exc


def _trace(envelope: Envelope[Any]) -> dict[str, str]:
    return {"message_id": envelope.message_id, "trace_id": envelope.trace_id, "producer": envelope.producer}
