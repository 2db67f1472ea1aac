"""Stage 0: reports land in Karn's store once each, on SQLite and PostgreSQL; bad messages go to the dead letters."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

from esper_contracts import FieldReport, Outcome, Topic, UrabraskValidationReport
from esper_karn.history import MIGRATIONS, KarnHistory
from esper_karn.listener import KarnListener
from esper_karn.mutations import OPERATORS, mutate
from esper_karn.store.models import metadata
from esper_oona import connect
from esper_oona.testing import wait_for
from esper_storage import current_revision, head_revision, schema_drift, upgrade

from .conftest import low_rank, residual_mlp

TOOLCHAIN = "ab12cd34ef56"


def field_report(blueprint_id: str, outcome: Outcome = Outcome.FOSSILIZED, report_id: str = "r1") -> FieldReport:
    return FieldReport(report_id=report_id, blueprint_id=blueprint_id, seed_id="fc1[0]", pre_metric=0.7,
                       post_metric=0.75, outcome=outcome)


def validation(blueprint_id: str, passed: bool = True, latency: float = 1.0, memory: float = 2.0,
               at: datetime | None = None) -> UrabraskValidationReport:
    return UrabraskValidationReport(
        artifact_id=f"{blueprint_id}-cpu-fast-{TOOLCHAIN}", hardware="cpu", passed=passed, latency_ms_p50=latency,
        memory_mb_peak=memory, rejection_reason=None if passed else "drift", measured_at=at or datetime(2026, 1, 1,
                                                                                                     tzinfo=UTC))


def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url, MIGRATIONS)
    assert current_revision(url, MIGRATIONS) == head_revision(MIGRATIONS)
    assert schema_drift(url, MIGRATIONS, metadata) == []


def test_reports_are_kept_once(history: KarnHistory) -> None:
    bp = residual_mlp().ir_hash()
    assert history.record_field_report(field_report(bp)) is True
    assert history.record_field_report(field_report(bp)) is False  # a redelivery
    assert history.record_validation_report(validation(bp)) is True
    assert history.record_validation_report(validation(bp)) is False
    assert history.record_validation_report(validation(bp, at=datetime(2026, 2, 1, tzinfo=UTC))) is True  # re-run
    assert history.counts() == {"library": 0, "children": 0, "field_reports": 1, "validation_reports": 2}


def test_outcomes_gather_verdicts_field_results_and_cost_against_the_parent(history: KarnHistory) -> None:
    parent = residual_mlp()
    child = mutate(parent, OPERATORS["change_width"], random.Random(0))
    assert history.remember(parent) and history.remember(child.ir, proposed_by_karn=True)
    assert not history.remember(child.ir, proposed_by_karn=True)
    pid, cid = parent.ir_hash(), child.blueprint_id
    assert history.unresolved_children() == [cid]
    history.record_validation_report(validation(pid, latency=2.0, memory=4.0))
    history.record_validation_report(validation(cid, latency=3.0, memory=2.0))
    for i, outcome in enumerate((Outcome.FOSSILIZED, Outcome.CULLED)):
        history.record_field_report(field_report(cid, outcome, report_id=f"c{i}"))
    found = history.outcomes()
    assert found[pid].validated is True and found[pid].outcomes == () and found[pid].latency_ratio is None
    assert found[cid].validated is True and found[cid].outcomes == (Outcome.FOSSILIZED, Outcome.CULLED)
    assert (found[cid].latency_ratio, found[cid].memory_ratio) == (1.5, 0.5)
    assert history.unresolved_children() == []
    entries = {e.blueprint_id: e for e in history.library()}
    assert entries[cid].parent_id == pid and entries[cid].operator == "change_width"
    assert entries[cid].generation == 1 and entries[cid].proposed_by_karn and not entries[pid].proposed_by_karn
    assert history.ir(cid) == child.ir


def test_a_failed_compile_or_rejection_judges_a_child(history: KarnHistory) -> None:
    a = mutate(low_rank(), OPERATORS["change_rank"], random.Random(0))
    b = mutate(low_rank(), OPERATORS["add_hidden_layer"], random.Random(0))
    history.remember(a.ir, proposed_by_karn=True)
    history.remember(b.ir, proposed_by_karn=True)
    history.mark_failed(a.blueprint_id)
    history.record_validation_report(validation(b.blueprint_id, passed=False))
    assert history.unresolved_children() == []
    found = history.outcomes()
    assert found[a.blueprint_id].validated is False and found[b.blueprint_id].validated is False


def test_the_listener_stores_each_report_once_and_dead_letters_malformed_ones(
        history: KarnHistory, memory_bus_url: str) -> None:
    news: list[FieldReport] = []
    listener = KarnListener(history, on_news=news.append)
    karn_bus = connect(memory_bus_url, producer_name="karn", nack_delay_ms=10, max_redeliveries=1)
    tamiyo = connect(memory_bus_url, producer_name="tamiyo")
    try:
        listener.attach(karn_bus, "karn", max_redeliveries=1, nack_delay_ms=10)
        bp = residual_mlp().ir_hash()
        report = field_report(bp)
        tamiyo.publish(Topic.FIELD_REPORTS, report)
        tamiyo.publish(Topic.FIELD_REPORTS, report)  # at-least-once: the same report again
        tamiyo.publish(Topic.VALIDATION_REPORTS, validation(bp))
        tamiyo.publish_raw(Topic.FIELD_REPORTS, b'{"not": "an envelope"}')
        wait_for(lambda: history.counts()["validation_reports"] == 1, what="the validation report")
        assert karn_bus.wait_until_idle()  # type: ignore[attr-defined]
        dead = karn_bus.read_dead_letters(Topic.FIELD_REPORTS)
        assert len(dead) == 1 and dead[0].subscription == "karn"
        assert history.counts()["field_reports"] == 1 and [r.report_id for r in news] == ["r1"]
    finally:
        tamiyo.close()
        karn_bus.close()
