"""The metric catalogue: every Prometheus metric Esper exposes, with its type, labels, meaning and exporters.

An operator who wants to know what a dashboard or an alert can use reads this file. Services create their
metrics from these entries (``esper_runtime.metrics``), Nissa writes its families from them, and
tests/test_metric_catalogue.py lists what every service really exposes on ``/metrics`` against it, both ways.
Dashboards (deploy/grafana/dashboards/) and alert rules (deploy/prometheus/rules/) may only name metrics
catalogued here.

Names are the family names prometheus-client uses: a counter ``esper_x`` is queried as ``esper_x_total``,
a histogram ``esper_y`` as ``esper_y_bucket``, ``esper_y_sum`` and ``esper_y_count`` (see :meth:`MetricSpec.series`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MetricType(StrEnum):
    """The Prometheus metric types Esper uses."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


#: Every service that runs as a process of its own (``esper serve``): each exposes the runtime's metrics.
SERVICES = ("tamiyo", "narset-coordinator", "urza", "tezzeret", "urabrask", "karn", "nissa", "elesh", "emrakul")
#: The services built on the runtime's job worker.
JOB_SERVICES = ("tezzeret", "urabrask", "elesh")

#: Suffixes of the series a counter and a histogram expose beside (or instead of) the family name.
_SUFFIXES = {
    MetricType.COUNTER: ("_total",),
    MetricType.GAUGE: ("",),
    MetricType.HISTOGRAM: ("_bucket", "_sum", "_count"),
}


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its family name, type, label names, what it means and which services expose it.

    ``values`` names, for a label whose values form a fixed set, that set: exporters expose every value from
    the start (a zero counter rather than a missing one), so a query finds the series before the first event.
    """

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    exporters: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    values: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith("esper_") or self.name.endswith(("_total", "_bucket", "_count", "_sum")):
            raise ValueError(f"{self.name}: a catalogued name starts with esper_ and carries no series suffix")
        if bool(self.buckets) != (self.type is MetricType.HISTOGRAM):
            raise ValueError(f"{self.name}: buckets are given for histograms, and only for them")
        unknown = {label for label, _ in self.values} - set(self.labels)
        if unknown:
            raise ValueError(f"{self.name}: values for labels it does not have: {sorted(unknown)}")
        if not set(self.exporters) <= set(SERVICES):
            raise ValueError(f"{self.name}: unknown exporters {sorted(set(self.exporters) - set(SERVICES))}")

    def series(self) -> tuple[str, ...]:
        """Every sample name this metric exposes (what a query may select)."""
        return tuple(self.name + suffix for suffix in _SUFFIXES[self.type])

    def label_values(self, label: str) -> tuple[str, ...]:
        """The fixed values of ``label`` (empty when its values are open)."""
        return dict(self.values).get(label, ())


_SEED_STAGES = ("DORMANT", "GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING",
                "FINE_TUNING", "FOSSILIZED", "CULLED", "CANCELLED", "ROLLED_BACK")
_OUTCOMES = ("FOSSILIZED", "CULLED", "CANCELLED", "ROLLED_BACK")
_RUN = ("run",)
_SEED = ("run", "layer", "seed")
_REGION = ("region", "domain")
_C, _G, _H = MetricType.COUNTER, MetricType.GAUGE, MetricType.HISTOGRAM

_SPECS = [
    # --- every service (esper_runtime) ------------------------------------------------------------------------
    MetricSpec("esper_service_up", _G, ("service",), "1 while the service is running", SERVICES),
    MetricSpec("esper_bus_messages", _C, ("service", "topic", "subscription", "outcome"),
               "Messages the service's consumers took from the bus, by what became of them: delivered, acked, "
               "nacked (handed back for redelivery) or dead_lettered (set aside on <topic>.dlq)", SERVICES,
               values=(("outcome", ("delivered", "acked", "nacked", "dead_lettered")),)),
    # --- job workers: Tezzeret, Urabrask (esper_runtime.jobs) --------------------------------------------------
    MetricSpec("esper_job_worker_jobs", _C, ("service", "outcome"),
               "Jobs taken by the worker: done, duplicate (a repeat acknowledged without work), failed "
               "(dead-lettered at once) or retried (handed back after a transient error)", JOB_SERVICES,
               values=(("outcome", ("done", "duplicate", "failed", "retried")),)),
    MetricSpec("esper_job_worker_busy", _G, ("service",), "1 while the worker is handling a job", JOB_SERVICES),
    MetricSpec("esper_job_seconds", _H, ("service",),
               "Wall time of every job attempt: the work and the publication of its results", JOB_SERVICES,
               buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)),
    # --- Tezzeret and Urabrask -------------------------------------------------------------------------------
    MetricSpec("esper_tezzeret_jobs", _C, ("outcome", "pipeline"), "Compilation jobs handled, by outcome",
               ("tezzeret",)),
    MetricSpec("esper_tezzeret_compile_seconds", _H, ("pipeline",), "Compile time per pipeline", ("tezzeret",),
               buckets=(0.5, 1, 2, 5, 10, 20, 40, 60, 120, 300, 600, 1800)),
    MetricSpec("esper_urabrask_jobs", _C, ("outcome",), "Validation jobs handled, by outcome", ("urabrask",)),
    MetricSpec("esper_urabrask_latency_ms", _H, (), "Measured p50 latency of validated kernels", ("urabrask",),
               buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)),
    # --- Elesh and Emrakul (removal) ---------------------------------------------------------------------------
    MetricSpec("esper_elesh_reports", _C, ("criterion",), "Importance reports published, by primary criterion",
               ("elesh",), values=(("criterion", ("magnitude", "bn_scale", "taylor", "activation")),)),
    MetricSpec("esper_emrakul_plans", _C, ("mode",), "Pruning plans published, by blast radius", ("emrakul",),
               values=(("mode", ("probe", "lysis")),)),
    MetricSpec("esper_emrakul_outcomes", _C, ("result",), "Outcomes Tolaria reported for plans", ("emrakul",),
               values=(("result", ("applied", "rejected", "rolled_back")),)),
    # --- Urza ------------------------------------------------------------------------------------------------
    MetricSpec("esper_urza_outbox_backlog", _G, (), "Jobs written but not yet published to the bus", ("urza",)),
    MetricSpec("esper_urza_outbox_sent", _G, (), "Jobs published since start", ("urza",)),
    MetricSpec("esper_urza_pipeline_backlog", _G, ("stage",),
               "Work waiting in the asset pipeline: compilation jobs whose artifact is not compiled yet, and "
               "compiled artifacts not yet judged by Urabrask", ("urza",),
               values=(("stage", ("compilation", "validation")),)),
    MetricSpec("esper_urza_artifacts", _G, ("status",), "Kernel artifacts in the store, by status", ("urza",),
               values=(("status", ("PENDING", "COMPILING", "COMPILED", "VALIDATING", "VALIDATED", "REJECTED",
                                   "FAILED")),)),
    # --- Karn ------------------------------------------------------------------------------------------------
    MetricSpec("esper_karn_children_submitted", _C, (), "Children sent to Urza", ("karn",)),
    MetricSpec("esper_karn_pending_demand", _G, (), "New field reports not yet answered by a round", ("karn",)),
    # --- Tamiyo ----------------------------------------------------------------------------------------------
    MetricSpec("esper_tamiyo_decisions", _C, ("kind",), "Decisions recorded (GET /api/v1/decisions), by kind",
               ("tamiyo",),
               values=(("kind", ("adaptation", "allocation", "proposal", "scaffold", "policy")),)),
    MetricSpec("esper_tamiyo_commands", _C, ("command",), "Lifecycle commands sent to Kasmina, by type",
               ("tamiyo",), values=(("command", ("GERMINATE", "ADVANCE", "CULL", "CANCEL")),)),
    MetricSpec("esper_tamiyo_budget_minted_atp", _C, (), "ATP minted: the sum of every cycle's pool", ("tamiyo",)),
    MetricSpec("esper_tamiyo_budget_spent_atp", _C, ("domain",),
               "ATP the Narset workers report spent, from the health summaries, by domain", ("tamiyo",)),
    MetricSpec("esper_tamiyo_budget_atp", _G, ("part",),
               "The current cycle's books: pool, emergency_pool, allocated (to regions), unallocated (left "
               "for proposals) and emergency_left", ("tamiyo",),
               values=(("part", ("pool", "emergency_pool", "allocated", "unallocated", "emergency_left")),)),
    MetricSpec("esper_tamiyo_proposals", _C, ("result",),
               "Opportunity proposals answered: funded, unfunded (the cycle had no room left for the ask) or "
               "refused (unknown or protected region, no return promised)", ("tamiyo",),
               values=(("result", ("funded", "unfunded", "refused")),)),
    MetricSpec("esper_tamiyo_proposal_granted_atp", _C, (), "ATP granted to funded proposals", ("tamiyo",)),
    MetricSpec("esper_tamiyo_protected_zones", _G, (), "Protected zones in force", ("tamiyo",)),
    MetricSpec("esper_tamiyo_kernel_source_failures", _C, (),
               "Boundaries answered 'wait' because the kernel source (Urza) was unreachable", ("tamiyo",)),
    MetricSpec("esper_tamiyo_health_summaries", _C, (), "Health summaries received from Narset", ("tamiyo",)),
    # --- the Narset coordinator ------------------------------------------------------------------------------
    MetricSpec("esper_narset_workers", _G, ("state",), "Workers in the pool: live, or declared dead",
               ("narset-coordinator",), values=(("state", ("live", "dead")),)),
    MetricSpec("esper_narset_regions", _G, (), "Regions mapped to a worker", ("narset-coordinator",)),
    MetricSpec("esper_narset_map_generation", _G, (), "Generation of the region map (grows with every change)",
               ("narset-coordinator",)),
    MetricSpec("esper_narset_heartbeats", _C, (), "Heartbeats received from trainer processes",
               ("narset-coordinator",)),
    MetricSpec("esper_narset_worker_crashes", _C, (), "Workers reported crashed by their trainer process",
               ("narset-coordinator",)),
    MetricSpec("esper_narset_windows_folded", _C, (), "Telemetry windows folded into domain summaries",
               ("narset-coordinator",)),
    MetricSpec("esper_narset_summaries_published", _C, (), "Domain health summaries published for Tamiyo",
               ("narset-coordinator",)),
    MetricSpec("esper_narset_tree_messages", _G, ("level",),
               "Messages each level of the telemetry tree carried in the last window (level 0: region reports)",
               ("narset-coordinator",)),
    # --- Nissa: the trainer's runs, from telemetry.system.state ----------------------------------------------
    MetricSpec("esper_nissa_messages", _C, ("topic",), "Telemetry messages Nissa took from the bus, by topic",
               ("nissa",)),
    MetricSpec("esper_nissa_runs", _G, (), "Training runs Nissa holds", ("nissa",)),
    MetricSpec("esper_nissa_seeds", _G, (), "Seeds whose latest telemetry Nissa holds", ("nissa",)),
    MetricSpec("esper_run_epoch", _G, _RUN, "The last epoch the run reported", ("nissa",)),
    MetricSpec("esper_run_loss", _G, ("run", "split"), "Loss at the last epoch: train or val", ("nissa",)),
    MetricSpec("esper_run_accuracy", _G, ("run", "split"), "Accuracy at the last epoch: train or val",
               ("nissa",)),
    MetricSpec("esper_run_learning_rate", _G, _RUN, "The host optimizer's learning rate", ("nissa",)),
    MetricSpec("esper_run_parameters", _G, ("run", "part"), "Parameters of the model: host, or seed (grown)",
               ("nissa",)),
    MetricSpec("esper_run_epoch_seconds", _G, _RUN, "Wall time of the last epoch", ("nissa",)),
    MetricSpec("esper_run_last_report_seconds", _G, _RUN, "Unix time of the run's last heartbeat", ("nissa",)),
    MetricSpec("esper_run_seeds", _G, ("run", "stage"), "Seeds of the run in each lifecycle stage", ("nissa",),
               values=(("stage", _SEED_STAGES),)),
    MetricSpec("esper_run_germinations", _C, _RUN,
               "Seeds seen to leave DORMANT (or CULLED, CANCELLED) for a live stage: germinations", ("nissa",)),
    MetricSpec("esper_run_transitions", _C, ("run", "stage"), "Seed stage changes seen, by the stage entered",
               ("nissa",), values=(("stage", _SEED_STAGES),)),
    # --- Nissa: every seed (one series per seed and metric) --------------------------------------------------
    MetricSpec("esper_seed_stage", _G, (*_SEED, "stage"), "1 for the seed's current lifecycle stage", ("nissa",)),
    MetricSpec("esper_seed_alpha", _G, _SEED, "The seed's blending weight", ("nissa",)),
    MetricSpec("esper_seed_gradient_norm", _G, _SEED, "Gradient norm of the seed's chunk", ("nissa",)),
    MetricSpec("esper_seed_epochs_in_stage", _G, _SEED, "Epochs the seed has spent in its stage", ("nissa",)),
    MetricSpec("esper_seed_kernel_errors", _G, _SEED, "Runtime errors of the seed's kernel", ("nissa",)),
    MetricSpec("esper_seed_latency_us", _G, _SEED, "Execution latency of the seed's kernel", ("nissa",)),
    # --- Nissa: region and domain health, from telemetry.health.summaries ------------------------------------
    MetricSpec("esper_health_seeds", _G, (*_REGION, "stage"), "Seeds in each stage, in the last summary",
               ("nissa",), values=(("stage", _SEED_STAGES),)),
    MetricSpec("esper_health_active_seeds", _G, _REGION, "Live seeds in the last summary", ("nissa",)),
    MetricSpec("esper_health_gradient_norm", _G, (*_REGION, "stat"), "Gradient norm over the seeds: mean or max",
               ("nissa",)),
    MetricSpec("esper_health_loss_trend", _G, _REGION, "Relative change of the loss over the last window",
               ("nissa",)),
    MetricSpec("esper_health_budget_spent_atp", _G, _REGION, "ATP spent in the last window", ("nissa",)),
    MetricSpec("esper_health_window", _G, _REGION, "The last summarised window", ("nissa",)),
    # --- Nissa: the Narset workers' allocator, from telemetry.narset.allocations -----------------------------
    MetricSpec("esper_narset_intensity", _G, ("region", "kind"),
               "The allocator's intensities: growth (x_T, Tamiyo) and pruning (x_E, Emrakul)", ("nissa",)),
    MetricSpec("esper_narset_cost", _G, ("region", "kind"), "Cost of each intensity on the convex overdrive curve",
               ("nissa",)),
    MetricSpec("esper_narset_pool", _G, ("region",), "The region's energy pool (c_T + c_E stays within it)",
               ("nissa",)),
    MetricSpec("esper_narset_mode", _G, ("region", "mode"), "1 for the region's current mode", ("nissa",)),
    MetricSpec("esper_narset_overdrive", _G, ("region", "kind"), "1 while an intensity runs above 1 (overdrive)",
               ("nissa",)),
    MetricSpec("esper_narset_decisions", _C, ("mode",), "Allocator decisions seen, by mode", ("nissa",),
               values=(("mode", ("repair", "consolidation")),)),
    # --- Nissa: outcomes, from innovation.field_reports ------------------------------------------------------
    MetricSpec("esper_field_reports", _C, ("outcome",), "Field reports: the outcome of every adaptation",
               ("nissa",), values=(("outcome", _OUTCOMES),)),
]

#: family name -> spec
METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}
#: series name (``esper_x_total``, ``esper_y_bucket`` ...) -> spec
_BY_SERIES: dict[str, MetricSpec] = {series: spec for spec in _SPECS for series in spec.series()}


class UnknownMetricError(KeyError):
    """Raised for a metric name that is not in the catalogue."""

    def __str__(self) -> str:
        return f"metric {self.args[0]!r} is not in the catalogue (esper_contracts.metrics)"


def metric_spec(name: str) -> MetricSpec:
    """The catalogue entry of family ``name``; raises UnknownMetricError."""
    try:
        return METRICS[name]
    except KeyError:
        raise UnknownMetricError(name) from None


def metric_of_series(series: str) -> MetricSpec | None:
    """The metric a sample name (``esper_tezzeret_jobs_total``) belongs to, or None when it is not catalogued."""
    return _BY_SERIES.get(series)


def exported_by(service: str) -> dict[str, MetricSpec]:
    """The metrics ``service`` exposes, by family name."""
    return {name: spec for name, spec in METRICS.items() if service in spec.exporters}
