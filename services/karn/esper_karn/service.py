"""The Karn process: its store, the listener on the bus, the proposal loop and the REST API.

The loop wakes on every new field report (demand for designs) and every ``round_interval_s``: while
demand is pending it runs a round; a round that submits children, or finds nothing to mutate, settles the
demand, and one held back by the pipeline's backlog leaves it pending for the next wake-up.
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any

from esper_contracts import FieldReport
from esper_runtime import Service, load_settings
from esper_runtime.metrics import counter, gauge
from esper_storage import open_database
from esper_urza_client import UrzaClient

from .api import install_api
from .architect import Architect
from .diversity import DiversitySampler
from .history import KarnHistory
from .listener import KarnListener
from .pacing import Pacing
from .settings import KarnSettings
from .tinkerer import Tinkerer, UrzaPort

log = logging.getLogger(__name__)


class KarnService(Service):
    """Generative architect: learns from field and validation reports, submits mutated blueprints to Urza."""

    description = ("Generative architect of Esper: keeps the outcome history of every blueprint, learns which "
                   "mutations validate and fossilize, and submits children to Urza with their lineage.")

    def __init__(self, settings: KarnSettings, urza: UrzaPort | None = None) -> None:
        super().__init__(settings)
        self.karn_settings = s = settings
        self.db = open_database(s.resolved_database_url)
        self.history = KarnHistory(self.db)
        self._client = UrzaClient(s.urza_url, token=s.urza_token) if urza is None else None
        self.urza: UrzaPort = urza if urza is not None else self._client  # type: ignore[assignment]
        architect = Architect(sampler=DiversitySampler(tolerance=s.novelty_tolerance, scale=s.novelty_scale),
                              drafts_per_child=s.drafts_per_child, max_parameters=s.max_parameters,
                              explore=s.explore_untested)
        self.tinkerer = Tinkerer(self.history, self.urza, architect=architect,
                                 pacing=Pacing(s.max_pipeline_backlog, s.max_unresolved_children),
                                 rng=random.Random(s.seed), children_per_round=s.children_per_round)
        self.listener = KarnListener(self.history, on_news=self._on_news)
        self._subscriptions: list[Any] = []
        self._demand = 0  # new field reports not yet answered by a round
        self._demand_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        install_api(self.app, self.tinkerer)
        self.add_health_check("database", self.db.ping)
        self.children_submitted = counter(self.registry, "esper_karn_children_submitted")
        gauge(self.registry, "esper_karn_pending_demand").set_function(lambda: float(self._demand))

    def _on_news(self, report: FieldReport) -> None:
        with self._demand_lock:
            self._demand += 1
        self._wake.set()

    def on_start(self) -> None:
        """Migrate the store, subscribe to the reports, start the proposal loop."""
        s = self.karn_settings
        self.history.migrate()
        if s.consume:
            self._subscriptions = self.listener.attach(self.bus, s.subscription, max_redeliveries=s.max_redeliveries,
                                                       nack_delay_ms=s.nack_delay_ms)
        if s.auto_propose:
            self._stop.clear()
            self._loop = threading.Thread(target=self._run_loop, name="karn-rounds", daemon=True)
            self._loop.start()
        log.info("karn ready", extra={"database": self.db.url, "urza": s.urza_url})

    def _run_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.karn_settings.round_interval_s)
            self._wake.clear()
            with self._demand_lock:
                answering = self._demand
            if self._stop.is_set() or answering <= 0:
                continue
            try:
                report = self.tinkerer.run_round()
            except Exception:  # Urza down, a refused child: log, keep the demand, try again later
                log.exception("proposal round failed")
                continue
            self.children_submitted.inc(len(report.submitted))
            if report.submitted or report.parents == 0:  # reports that arrived during the round stay pending
                with self._demand_lock:
                    self._demand -= answering
            log.info("round done", extra={"submitted": len(report.submitted), "reason": report.reason})

    def on_stop(self) -> None:
        """Stop the loop and the consumers, release the store and the Urza client."""
        self._stop.set()
        self._wake.set()
        if self._loop is not None:
            self._loop.join(30)
            self._loop = None
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions = []
        if self._client is not None:
            self._client.close()
        self.db.dispose()


def create_service(config_file: str | Path | None = None, **overrides: Any) -> KarnService:
    """Entry point of ``esper serve karn``: settings from the YAML file, overrides, then ``ESPER_*`` variables."""
    return KarnService(load_settings(KarnSettings, config_file, **overrides))
