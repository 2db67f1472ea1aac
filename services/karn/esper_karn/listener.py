"""Stage 0, the listener: field reports and validation reports from the bus into Karn's store.

Returning acknowledges a message. Each handler is one idempotent insert, so redelivery is harmless. A
payload that does not validate against its topic's contract never reaches a handler: Oona sets it aside on
``<topic>.dlq`` and keeps consuming. A handler that raises (the database is down) asks for redelivery, and
after the redelivery limit the message joins the dead letters too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from esper_contracts import Envelope, FieldReport, Topic, UrabraskValidationReport

from .history import KarnHistory

if TYPE_CHECKING:
    from esper_oona import Bus, Subscription

log = logging.getLogger(__name__)

class KarnListener:
    """The two handlers, bound to Karn's history. ``on_news`` hears every field report stored for the first time."""

    def __init__(self, history: KarnHistory, on_news: Callable[[FieldReport], None] | None = None) -> None:
        self.history = history
        self.on_news = on_news

    def on_field_report(self, envelope: Envelope[Any]) -> None:
        """Keep a FieldReport once; tell ``on_news`` about a new one (it is demand for new designs)."""
        report: FieldReport = envelope.payload
        if self.history.record_field_report(report):
            log.info("field report stored", extra={"blueprint_id": report.blueprint_id, "outcome": report.outcome,
                                                   "report_id": report.report_id})
            if self.on_news is not None:
                self.on_news(report)

    def on_validation_report(self, envelope: Envelope[Any]) -> None:
        """Keep an UrabraskValidationReport once."""
        report: UrabraskValidationReport = envelope.payload
        if self.history.record_validation_report(report):
            log.debug("validation report stored", extra={"artifact_id": report.artifact_id, "passed": report.passed})

    def attach(self, bus: Bus, subscription: str, *, max_redeliveries: int = 3,
                  nack_delay_ms: int = 1000) -> list[Subscription]:
        """Attach both handlers under one subscription name; a new subscription also gets earlier messages."""
        options: dict[str, Any] = {"max_redeliveries": max_redeliveries, "nack_delay_ms": nack_delay_ms,
                                   "initial_position": "earliest"}
        return [bus.subscribe(Topic.FIELD_REPORTS, subscription, self.on_field_report, **options),
                bus.subscribe(Topic.VALIDATION_REPORTS, subscription, self.on_validation_report, **options)]
