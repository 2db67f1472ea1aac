"""The telemetry store: what it keeps of each message, what it counts, and the text it writes for Prometheus."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from esper_contracts import (
    AllocatorInputs,
    ControlMode,
    FieldReport,
    HealthSummaryReport,
    NarsetAllocationDecision,
    Outcome,
    SeedStage,
    SeedTelemetry,
    SystemStatePacket,
    metric_spec,
)
from esper_nissa.store import TelemetryStore


def packet(run: str, epoch: int, stages: list[SeedStage], **fields: Any) -> SystemStatePacket:
    seeds = [SeedTelemetry(layer_id="body.0", seed_index=i, epoch=epoch, stage=s, alpha=0.25 * i,
                           gradient_norm=0.5, epochs_in_stage=epoch) for i, s in enumerate(stages)]
    values: dict[str, Any] = {"train_loss": 1.0, "val_loss": 1.5, "val_accuracy": 0.5, "host_parameters": 100,
                              "seed_parameters": 7, "metrics": {"train_accuracy": 0.6}}
    return SystemStatePacket(run_id=run, epoch=epoch, seeds=seeds, **(values | fields))


def samples(store: TelemetryStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, parsed back from the store's text."""
    text = store.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(store: TelemetryStore, name: str, **labels: str) -> float:
    return samples(store)[name, tuple(sorted(labels.items()))]


D, T, F = SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.FOSSILIZED


def test_a_heartbeat_sets_the_run_metrics_and_every_seed() -> None:
    store = TelemetryStore(clock=lambda: 1234.5)
    store.on_packet(packet("r1", 3, [D, T, T], learning_rate=0.01, epoch_time_s=2.5))
    assert value(store, "esper_run_epoch", run="r1") == 3
    assert value(store, "esper_run_loss", run="r1", split="val") == 1.5
    assert value(store, "esper_run_accuracy", run="r1", split="train") == 0.6
    assert value(store, "esper_run_parameters", run="r1", part="seed") == 7
    assert value(store, "esper_run_learning_rate", run="r1") == 0.01
    assert value(store, "esper_run_epoch_seconds", run="r1") == 2.5
    assert value(store, "esper_run_last_report_seconds", run="r1") == 1234.5
    assert value(store, "esper_run_seeds", run="r1", stage="TRAINING") == 2
    assert value(store, "esper_run_seeds", run="r1", stage="FOSSILIZED") == 0  # every stage, from the start
    assert value(store, "esper_seed_stage", run="r1", layer="body.0", seed="1", stage="TRAINING") == 1
    assert value(store, "esper_seed_alpha", run="r1", layer="body.0", seed="2") == 0.5
    assert value(store, "esper_nissa_seeds") == 3 and value(store, "esper_nissa_runs") == 1


def test_germinations_and_transitions_are_counted_between_heartbeats_once() -> None:
    store = TelemetryStore()
    store.on_packet(packet("r1", 1, [D, T]))  # the first heartbeat seen: its history is unknown, nothing counts
    assert value(store, "esper_run_germinations_total", run="r1") == 0
    second = packet("r1", 2, [T, F])
    store.on_packet(second)
    store.on_packet(second)  # redelivered: no stage changes, nothing counts twice
    assert value(store, "esper_run_germinations_total", run="r1") == 1
    assert value(store, "esper_run_transitions_total", run="r1", stage="TRAINING") == 1
    assert value(store, "esper_run_transitions_total", run="r1", stage="FOSSILIZED") == 1
    assert value(store, "esper_seed_stage", run="r1", layer="body.0", seed="1", stage="FOSSILIZED") == 1
    assert ("esper_seed_stage", (("layer", "body.0"), ("run", "r1"), ("seed", "1"), ("stage", "TRAINING"))) \
        not in samples(store)


def test_a_seed_first_seen_live_in_a_known_run_was_germinated() -> None:
    # A summary heartbeat lists only live seeds and a few dormant ones: a newcomer in a live stage germinated.
    store = TelemetryStore()
    store.on_packet(packet("r1", 1, [D]))
    store.on_packet(packet("r1", 2, [D, T]))
    assert value(store, "esper_run_germinations_total", run="r1") == 1


def test_the_runs_heard_from_longest_ago_are_forgotten() -> None:
    store = TelemetryStore(max_runs=2)
    for run in ("a", "b", "a", "c"):
        store.on_packet(packet(run, 1, [D]))
    assert store.runs == ["a", "c"]
    assert ("esper_run_epoch", (("run", "b"),)) not in samples(store)


def test_summaries_allocations_and_reports() -> None:
    store = TelemetryStore()
    summary = HealthSummaryReport(region_id="early", domain_id="early", window=4, epoch=4, seed_count=10,
                                  active_seeds=2, stage_counts={T: 2, D: 8}, mean_gradient_norm=0.5,
                                  max_gradient_norm=2.0, budget_spent=0.75, loss_trend=-0.1)
    store.on_health_summary(summary)
    store.on_health_summary(summary.model_copy(update={"window": 3, "active_seeds": 9}))  # older: ignored
    assert value(store, "esper_health_active_seeds", region="early", domain="early") == 2
    assert value(store, "esper_health_seeds", region="early", domain="early", stage="TRAINING") == 2
    assert value(store, "esper_health_gradient_norm", region="early", domain="early", stat="max") == 2.0
    assert value(store, "esper_health_budget_spent_atp", region="early", domain="early") == 0.75

    inputs = AllocatorInputs(progress=0.1, stability=0.9, efficiency=0.5)
    decision = NarsetAllocationDecision(region_id="body.0", window=4, mode=ControlMode.REPAIR, x_T=1.2, x_E=0.1,
                                        c_T=1.02, c_E=0.1, pool=1.5, total_spent=1.12, overdrive_T=True,
                                        raw_inputs=inputs, smoothed_inputs=inputs)
    store.on_allocation(decision)
    store.on_allocation(decision)  # redelivered
    assert value(store, "esper_narset_intensity", region="body.0", kind="growth") == 1.2
    assert value(store, "esper_narset_overdrive", region="body.0", kind="growth") == 1
    assert value(store, "esper_narset_overdrive", region="body.0", kind="pruning") == 0
    assert value(store, "esper_narset_mode", region="body.0", mode="repair") == 1
    assert value(store, "esper_narset_mode", region="body.0", mode="consolidation") == 0
    assert value(store, "esper_narset_decisions_total", mode="repair") == 1

    report = FieldReport(blueprint_id="b" * 64, seed_id="body.0[1]", pre_metric=0.5, post_metric=0.6,
                         outcome=Outcome.ROLLED_BACK)
    store.on_field_report(report)
    store.on_field_report(report)  # redelivered
    assert value(store, "esper_field_reports_total", outcome="ROLLED_BACK") == 1
    assert value(store, "esper_field_reports_total", outcome="FOSSILIZED") == 0


def test_the_text_is_the_catalogue_s_families_with_their_labels() -> None:
    store = TelemetryStore()
    store.on_packet(packet("r1", 1, [D, T]))
    text = store.exposition().decode()
    for fam in text_string_to_metric_families(text):
        spec = metric_spec(fam.name)
        assert fam.type == spec.type.value, fam.name
        assert all(set(s.labels) == set(spec.labels) for s in fam.samples), fam.name


def test_label_values_are_escaped_and_per_seed_series_can_be_turned_off() -> None:
    store = TelemetryStore(per_seed_metrics=False)
    store.on_packet(packet('run "quoted" \\ back', 1, [D]))
    assert value(store, "esper_run_epoch", run='run "quoted" \\ back') == 1
    assert not [key for key in samples(store) if key[0].startswith("esper_seed_")]
