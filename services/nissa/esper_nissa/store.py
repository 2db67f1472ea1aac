"""The latest picture of the platform's telemetry, kept for Prometheus.

:class:`TelemetryStore` takes the bus messages Nissa follows and keeps, bounded:

* per run (``telemetry.system.state``): the last epoch's metrics, every seed's latest telemetry, stage counts,
  and the germinations and stage changes seen between heartbeats — the ``max_runs`` most recently heard from;
* per region or domain (``telemetry.health.summaries``): the newest summary;
* per region (``telemetry.narset.allocations``): the allocator's newest decision;
* field reports by outcome (``innovation.field_reports``).

Delivery is at least once: a redelivered heartbeat changes no stage, so it counts nothing twice, and counted
reports and decisions are remembered by id. :meth:`TelemetryStore.exposition` writes it all in the Prometheus
text format, under the names of the metric catalogue.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from esper_contracts import (
    ACTIVE_STAGES,
    ControlMode,
    FieldReport,
    HealthSummaryReport,
    NarsetAllocationDecision,
    Outcome,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
)

from .exposition import TextFamily, label_text

#: Stages a germinated seed leaves behind: moving from one of them into a live stage is a germination.
_IDLE = frozenset({SeedStage.DORMANT, SeedStage.CULLED, SeedStage.CANCELLED})
_SEED_LABELS = ("run", "layer", "seed")


@dataclass(slots=True)
class SeedRow:
    """One seed's latest telemetry, with its label text written once."""

    labels: str
    stage: SeedStage
    stage_name: str
    alpha: float
    gradient_norm: float
    epochs_in_stage: int
    kernel_errors: int
    latency_us: float


@dataclass
class RunState:
    """One training run as its heartbeats describe it."""

    run_id: str
    packet: SystemStatePacket
    received_at: float
    seeds: dict[tuple[str, int], SeedRow] = field(default_factory=dict)
    stage_counts: Counter[SeedStage] = field(default_factory=Counter)
    germinations: int = 0
    transitions: Counter[SeedStage] = field(default_factory=Counter)
    #: The run's per-seed samples as text, one string per family of SEED_FAMILIES; None until the next scrape
    #: after a heartbeat. Heartbeats come once an epoch, scrapes every few seconds: most scrapes reuse it.
    seed_text: list[str] | None = None


class _Recent:
    """The last ``size`` ids seen, to count a redelivered message once."""

    def __init__(self, size: int = 8192) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first_time(self, key: str) -> bool:
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class TelemetryStore:
    """Everything Nissa exposes; safe to feed from the bus threads while Prometheus scrapes."""

    def __init__(self, max_runs: int = 16, per_seed_metrics: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_runs = max_runs
        self.per_seed_metrics = per_seed_metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, RunState] = OrderedDict()  # least recently heard from first
        self._health: dict[tuple[str, str], HealthSummaryReport] = {}  # (region, domain) -> newest summary
        self._allocations: dict[str, NarsetAllocationDecision] = {}  # region -> newest decision
        self._decisions: Counter[ControlMode] = Counter()
        self._reports: Counter[Outcome] = Counter()
        self._messages: Counter[str] = Counter()  # topic -> messages taken
        self._seen_reports = _Recent()
        self._seen_decisions = _Recent()

    # ------------------------------------------------------------------------------------------ intake

    def count_message(self, topic: str) -> None:
        """One message taken from ``topic``."""
        with self._lock:
            self._messages[topic] += 1

    def on_packet(self, packet: SystemStatePacket) -> None:
        """A run's epoch-boundary heartbeat: its metrics, and every seed it carries.

        A seed that changed stage since the last heartbeat counts a transition into its new stage, and a
        germination when it left an idle stage for a live one. On the first heartbeat Nissa sees of a run
        nothing counts: the seeds' history before it is unknown.
        """
        with self._lock:
            run = self._runs.get(packet.run_id)
            known = run is not None
            if run is None:
                run = self._runs[packet.run_id] = RunState(packet.run_id, packet, self.clock())
            self._runs.move_to_end(packet.run_id)
            run.packet, run.received_at = packet, self.clock()
            for t in packet.seeds:
                self._update_seed(run, t, known)
            run.stage_counts = Counter(row.stage for row in run.seeds.values())
            run.seed_text = None
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)

    def _update_seed(self, run: RunState, t: SeedTelemetry, known_run: bool) -> None:
        key = (t.layer_id, t.seed_index)
        row = run.seeds.get(key)
        before = row.stage if row is not None else (SeedStage.DORMANT if known_run else None)
        if before is not None and before is not t.stage:
            run.transitions[t.stage] += 1
            if before in _IDLE and t.stage in ACTIVE_STAGES:
                run.germinations += 1
        if row is None:
            row = run.seeds[key] = SeedRow(label_text(_SEED_LABELS, (run.run_id, t.layer_id, str(t.seed_index))),
                                           t.stage, t.stage.value, 0.0, 0.0, 0, 0, 0.0)
        row.stage, row.stage_name = t.stage, t.stage.value
        row.alpha, row.gradient_norm = float(t.alpha), float(t.gradient_norm)
        row.epochs_in_stage, row.kernel_errors, row.latency_us = t.epochs_in_stage, t.error_count, \
            float(t.execution_latency_us)

    def on_health_summary(self, report: HealthSummaryReport) -> None:
        """A region's or domain's summary; an older window than the one held is ignored."""
        key = (report.region_id, report.domain_id or "")
        with self._lock:
            held = self._health.get(key)
            if held is None or report.window >= held.window:
                self._health[key] = report

    def on_allocation(self, decision: NarsetAllocationDecision) -> None:
        """An allocator decision for a region; an older window than the one held is ignored."""
        with self._lock:
            if self._seen_decisions.first_time(decision.decision_id):
                self._decisions[decision.mode] += 1
            held = self._allocations.get(decision.region_id)
            if held is None or decision.window >= held.window:
                self._allocations[decision.region_id] = decision

    def on_field_report(self, report: FieldReport) -> None:
        """The outcome of one adaptation (a redelivered report counts once)."""
        with self._lock:
            if self._seen_reports.first_time(report.report_id):
                self._reports[report.outcome] += 1

    # ------------------------------------------------------------------------------------------ views

    @property
    def runs(self) -> list[str]:
        """The runs held, least recently heard from first."""
        with self._lock:
            return list(self._runs)

    def messages_taken(self) -> int:
        """Messages taken from every topic so far."""
        with self._lock:
            return sum(self._messages.values())

    def seed_count(self) -> int:
        """Seeds held over every run."""
        with self._lock:
            return sum(len(run.seeds) for run in self._runs.values())

    # ------------------------------------------------------------------------------------------ exposition

    def exposition(self) -> bytes:
        """Every family Nissa holds, in the Prometheus text format."""
        with self._lock:
            parts = [self._nissa_families(), self._run_families(), self._health_families(),
                     self._allocation_families()]
            if self.per_seed_metrics:
                parts.append(self._seed_families())
        return "".join(f.text() for group in parts for f in group).encode()

    def _nissa_families(self) -> list[TextFamily]:
        messages, runs, seeds = TextFamily("esper_nissa_messages"), TextFamily("esper_nissa_runs"), \
            TextFamily("esper_nissa_seeds")
        for topic, n in sorted(self._messages.items()):
            messages.add([topic], n)
        runs.add([], len(self._runs))
        seeds.add([], sum(len(run.seeds) for run in self._runs.values()))
        reports = TextFamily("esper_field_reports")
        for outcome in Outcome:
            reports.add([outcome.value], self._reports[outcome])
        return [messages, runs, seeds, reports]

    def _run_families(self) -> list[TextFamily]:
        names = ("epoch", "loss", "accuracy", "learning_rate", "parameters", "epoch_seconds", "last_report_seconds",
                 "seeds", "germinations", "transitions")
        f = {name: TextFamily(f"esper_run_{name}") for name in names}
        for run_id, run in self._runs.items():
            p = run.packet
            f["epoch"].add([run_id], p.epoch)
            f["loss"].add([run_id, "train"], p.train_loss)
            f["loss"].add([run_id, "val"], p.val_loss)
            if p.val_accuracy is not None:
                f["accuracy"].add([run_id, "val"], p.val_accuracy)
            if "train_accuracy" in p.metrics:
                f["accuracy"].add([run_id, "train"], p.metrics["train_accuracy"])
            if p.learning_rate is not None:
                f["learning_rate"].add([run_id], p.learning_rate)
            f["parameters"].add([run_id, "host"], p.host_parameters)
            f["parameters"].add([run_id, "seed"], p.seed_parameters)
            f["epoch_seconds"].add([run_id], p.epoch_time_s)
            f["last_report_seconds"].add([run_id], run.received_at)
            f["germinations"].add([run_id], run.germinations)
            for stage in SeedStage:
                f["seeds"].add([run_id, stage.value], run.stage_counts[stage])
                f["transitions"].add([run_id, stage.value], run.transitions[stage])
        return [f[name] for name in names]

    def _health_families(self) -> list[TextFamily]:
        names = ("seeds", "active_seeds", "gradient_norm", "loss_trend", "budget_spent_atp", "window")
        f = {name: TextFamily(f"esper_health_{name}") for name in names}
        for (region, domain), r in sorted(self._health.items()):
            where = [region, domain]
            for stage in SeedStage:
                f["seeds"].add([*where, stage.value], r.stage_counts.get(stage, 0))
            f["active_seeds"].add(where, r.active_seeds)
            f["gradient_norm"].add([*where, "mean"], r.mean_gradient_norm)
            f["gradient_norm"].add([*where, "max"], r.max_gradient_norm)
            f["loss_trend"].add(where, r.loss_trend)
            f["budget_spent_atp"].add(where, r.budget_spent)
            f["window"].add(where, r.window)
        return [f[name] for name in names]

    def _allocation_families(self) -> list[TextFamily]:
        intensity, cost, pool = TextFamily("esper_narset_intensity"), TextFamily("esper_narset_cost"), \
            TextFamily("esper_narset_pool")
        mode, overdrive, decisions = TextFamily("esper_narset_mode"), TextFamily("esper_narset_overdrive"), \
            TextFamily("esper_narset_decisions")
        for region, d in sorted(self._allocations.items()):
            for kind, x, c, over in (("growth", d.x_T, d.c_T, d.overdrive_T), ("pruning", d.x_E, d.c_E, d.overdrive_E)):
                intensity.add([region, kind], x)
                cost.add([region, kind], c)
                overdrive.add([region, kind], 1 if over else 0)
            pool.add([region], d.pool)
            for m in ControlMode:
                mode.add([region, m.value], 1 if d.mode is m else 0)
        for m in ControlMode:
            decisions.add([m.value], self._decisions[m])
        return [intensity, cost, pool, mode, overdrive, decisions]

    def _seed_families(self) -> list[TextFamily]:
        families = [TextFamily(name) for name in SEED_FAMILIES]
        for run in self._runs.values():
            if run.seed_text is None:
                run.seed_text = _seed_text(families, list(run.seeds.values()))
            for family, text in zip(families, run.seed_text, strict=True):
                family.add_lines((text,))
        return families


#: The per-seed families, in the order :func:`_seed_text` writes them.
SEED_FAMILIES = ("esper_seed_stage", "esper_seed_alpha", "esper_seed_gradient_norm", "esper_seed_epochs_in_stage",
                 "esper_seed_kernel_errors", "esper_seed_latency_us")


def _seed_text(families: list[TextFamily], rows: list[SeedRow]) -> list[str]:
    """The samples of ``rows`` for each of ``families`` (SEED_FAMILIES), as one string per family.

    The hot path of Nissa (six lines per seed): each line is one f-string over pre-escaped labels. Floats come
    from validated contracts (finite), so repr() is a valid sample value; ints print as ints.
    """
    stage, alpha, grad, epochs, errors, latency = (f.sample for f in families)
    return [
        "".join([f'{stage}{{{r.labels},stage="{r.stage_name}"}} 1\n' for r in rows]),
        "".join([f"{alpha}{{{r.labels}}} {r.alpha!r}\n" for r in rows]),
        "".join([f"{grad}{{{r.labels}}} {r.gradient_norm!r}\n" for r in rows]),
        "".join([f"{epochs}{{{r.labels}}} {r.epochs_in_stage}\n" for r in rows]),
        "".join([f"{errors}{{{r.labels}}} {r.kernel_errors}\n" for r in rows]),
        "".join([f"{latency}{{{r.labels}}} {r.latency_us!r}\n" for r in rows]),
    ]
