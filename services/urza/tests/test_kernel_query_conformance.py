"""KernelQuery.matches() is exactly Urza's SQL answer, on random artifacts and random queries.

The in-process kernel library and Tamiyo's file catalogue filter with ``KernelQuery.matches``; Urza answers
with one SQL statement. Hypothesis loads random artifacts into a real Urza store on SQLite, through the
ledger (so the store's own tag merging and denormalised columns are what is compared), and checks that
the set of artifacts Urza returns for random queries is the set ``matches`` accepts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from esper_contracts import (
    ArtifactId,
    BlueprintClass,
    BlueprintIR,
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelQuery,
    KernelStatus,
    TensorInterface,
    UrabraskValidationReport,
    family,
)
from esper_urza.service import UrzaService
from esper_urza.store.models import artifact_events, artifact_tags, artifacts, kernel_binaries

S = KernelStatus
BD16 = TensorInterface(layout="BD", features=16)
BD32 = TensorInterface(layout="BD", features=32)
BTD16 = TensorInterface(layout="BTD", features=16)
BCHW16 = TensorInterface(layout="BCHW", features=16)
UNUSED = TensorInterface(layout="BTD", features=32)

#: Blueprints over every class and layout; two share a class, two share an interface.
BLUEPRINTS: list[BlueprintIR] = [
    family("residual_mlp").blueprint(BD16, origin="test"),
    family("low_rank_adapter").blueprint(BD16, origin="test"),
    family("low_rank_adapter").blueprint(BTD16, origin="test"),
    family("attention_head").blueprint(BTD16, origin="test"),
    family("depthwise_conv").blueprint(BCHW16, origin="test"),
    family("conv_residual").blueprint(BCHW16, origin="test"),
    family("normalization").blueprint(BD32, origin="test"),
    family("scaffold_mlp").blueprint(BD32, origin="test"),
]
HARDWARE = ["cpu", "h100", "a100"]
#: Tags a compiler or Urabrask may attach, and a few design tags the blueprints above carry.
EMPIRICAL_TAGS = ["high_speed", "low_speed", "low_memory", "numerically_stable"]
QUERY_TAGS = [*EMPIRICAL_TAGS, "residual", "cheap", "spatial", "scaffold", "low_rank_adapter", "test", "never_used"]
BLUEPRINT_OF = {ir.ir_hash(): ir for ir in BLUEPRINTS}

artifact_specs = st.fixed_dictionaries({
    "blueprint": st.integers(0, len(BLUEPRINTS) - 1),
    "hardware": st.sampled_from(HARDWARE),
    "pipeline": st.sampled_from(list(CompilationPipeline)),
    "status": st.sampled_from(list(KernelStatus)),
    "compile_tags": st.lists(st.sampled_from(EMPIRICAL_TAGS), max_size=2, unique=True),
    "report_tags": st.lists(st.sampled_from(EMPIRICAL_TAGS), max_size=3, unique=True),
    "latency": st.floats(0.01, 10.0),
})


@st.composite
def queries(draw: st.DrawFn, stored: list[CompiledKernelArtifact]) -> KernelQuery:
    """A query whose every filter is unset, the value of one stored artifact, or any value (a third each).

    Aiming filters at a stored artifact makes near misses common: one filter off decides the answer.
    """
    target = draw(st.sampled_from(stored)) if stored else None

    def pick(own: Callable[[CompiledKernelArtifact], Any], choices: list[Any]) -> Any:
        options: list[st.SearchStrategy[Any]] = [st.none(), st.sampled_from(choices)]
        if target is not None:
            options.append(st.just(own(target)))
        return draw(st.one_of(options))

    own_tags = sorted(target.tags) if target is not None else []
    required = draw(st.lists(st.sampled_from(own_tags or QUERY_TAGS), max_size=2))  # duplicates allowed, as in the API
    required += draw(st.lists(st.sampled_from(QUERY_TAGS), max_size=1))
    excluded = draw(st.lists(st.sampled_from([t for t in [*QUERY_TAGS, *own_tags] if t not in required]), max_size=2))
    return KernelQuery(
        tags_required=required, tags_excluded=excluded,
        hardware=pick(lambda a: a.hardware, [*HARDWARE, "tpu"]),
        status=pick(lambda a: a.status, list(KernelStatus)),
        blueprint_class=pick(lambda a: BLUEPRINT_OF[a.blueprint_id].blueprint_class, list(BlueprintClass)),
        interface=pick(lambda a: BLUEPRINT_OF[a.blueprint_id].input, [BD16, BD32, BTD16, BCHW16, UNUSED]),
        pipeline=pick(lambda a: a.pipeline, list(CompilationPipeline)),
        sort_by=draw(st.sampled_from(["latency", "memory", "created_at"])),
        limit=draw(st.sampled_from([1, 3, 1000])),
    )


def _load(urza: UrzaService, j: int, spec: dict[str, Any]) -> str:
    """Bring one artifact to ``spec["status"]`` the way Tezzeret and Urabrask would; returns its id."""
    ir = BLUEPRINTS[spec["blueprint"]]
    aid = ArtifactId(ir.ir_hash(), spec["hardware"], spec["pipeline"], f"{j:012x}")
    status: KernelStatus = spec["status"]
    data = aid.encode()
    compiled = status not in (S.PENDING, S.COMPILING, S.FAILED)
    if compiled:
        urza.ledger.store_binary(aid, data, hashlib.sha256(data).hexdigest())
    urza.ledger.record_compilation(CompiledKernelArtifact.for_id(
        aid, status=S.COMPILED if compiled else status, input_shape=[4, ir.input.features], tags=spec["compile_tags"],
        error="boom" if status is S.FAILED else None), source="test")
    if status is S.VALIDATING:
        urza.ledger.set_status(aid, S.VALIDATING, source="test")
    if status in (S.VALIDATED, S.REJECTED):
        passed = status is S.VALIDATED
        urza.ledger.record_validation(UrabraskValidationReport(
            artifact_id=aid, hardware=aid.hardware, passed=passed, rejection_reason=None if passed else "drift",
            latency_ms_mean=spec["latency"], memory_mb_peak=spec["latency"] * 3, tags=spec["report_tags"]),
            source="test")
    return aid


def _clear(urza: UrzaService) -> None:
    with urza.db.write() as conn:
        for table in (artifact_tags, artifact_events, artifacts, kernel_binaries):
            conn.execute(delete(table))


def test_matches_gives_exactly_urzas_sql_answer(urza_factory: Callable[..., UrzaService]) -> None:
    urza = urza_factory(validate_compiled=False)  # COMPILED stays COMPILED, so every status is reachable
    with TestClient(urza.app):
        for ir in BLUEPRINTS:
            urza.catalog.submit(ir)

        @settings(max_examples=50, deadline=None, database=None)
        @given(population=st.lists(artifact_specs, max_size=10), data=st.data())
        def check(population: list[dict[str, Any]], data: st.DataObject) -> None:
            _clear(urza)
            stored = [urza.catalog.artifact(_load(urza, j, spec))[0] for j, spec in enumerate(population)]
            assert [a.status for a in stored] == [spec["status"] for spec in population]
            for q in data.draw(st.lists(queries(stored), min_size=1, max_size=12)):
                expected = {a.artifact_id for a in stored
                            if q.matches(a, blueprint_class=BLUEPRINT_OF[a.blueprint_id].blueprint_class,
                                         interface=BLUEPRINT_OF[a.blueprint_id].input)}
                answer = urza.catalog.query(q)
                got = {a.artifact_id for a in answer.artifacts}
                assert answer.total == len(expected), q
                assert got <= expected and len(got) == min(q.limit, len(expected)), q
                if q.limit >= len(stored):
                    assert got == expected, q

        check()
