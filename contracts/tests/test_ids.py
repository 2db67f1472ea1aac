"""ArtifactId and SeedId: format, parse, round trips, and errors that name the bad value."""

from __future__ import annotations

import copy
import json
import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper_contracts import (
    ARTIFACT_ID_PATTERN,
    ArtifactId,
    CompilationPipeline,
    CompiledKernelArtifact,
    KasminaControlCommand,
    SeedId,
    SeedStage,
    SeedTelemetry,
    artifact_id,
    blueprint_id_of,
)

HEX = "0123456789abcdef"
BID = "a" * 64

artifact_parts = st.tuples(
    st.text(HEX, min_size=64, max_size=64),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12),
    st.sampled_from(list(CompilationPipeline)),
    st.text(HEX, min_size=12, max_size=64),
)


@given(artifact_parts)
def test_artifact_ids_round_trip(parts: tuple[str, str, CompilationPipeline, str]) -> None:
    blueprint_id, hardware, pipeline, toolchain = parts
    aid = ArtifactId(blueprint_id, hardware, pipeline, toolchain)
    assert str(aid) == f"{blueprint_id}-{hardware}-{pipeline.value}-{toolchain}" and re.match(ARTIFACT_ID_PATTERN, aid)
    parsed = ArtifactId.parse(str(aid))
    assert parsed == aid and (parsed.blueprint_id, parsed.hardware, parsed.pipeline, parsed.toolchain_hash) == parts
    assert artifact_id(blueprint_id, hardware, pipeline, toolchain) == aid


def test_an_artifact_id_is_usable_where_ids_are_strings() -> None:
    aid = ArtifactId(BID, "cpu", "fast", "b" * 16)
    assert isinstance(aid, str) and aid == BID + "-cpu-fast-" + "b" * 16 and {aid: 1}[str(aid)] == 1
    assert type(str(aid)) is str and json.dumps([aid]) == json.dumps([str(aid)])
    for copied in (pickle.loads(pickle.dumps(aid)), copy.deepcopy(aid)):
        assert type(copied) is ArtifactId and copied == aid and copied.pipeline is CompilationPipeline.FAST
    record = CompiledKernelArtifact.for_id(aid, input_shape=[1, 8])
    assert (record.artifact_id, record.blueprint_id, record.hardware, record.pipeline, record.toolchain_hash) == (
        aid, BID, "cpu", CompilationPipeline.FAST, "b" * 16)


@pytest.mark.parametrize("bad", [
    "not-an-artifact-id",
    BID,
    BID + "-cpu-fast",
    BID + "-CPU-fast-" + "b" * 12,  # hardware is lowercase
    BID + "-cpu-turbo-" + "b" * 12,  # no such pipeline
    BID + "-cpu-fast-" + "b" * 11,  # toolchain hash too short
    BID + "-gpu-0-fast-" + "b" * 12,  # a dash inside the hardware
    "A" * 64 + "-cpu-fast-" + "b" * 12,  # the IR hash is lowercase hex
    "",
])
def test_malformed_artifact_ids_are_refused_naming_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"malformed artifact id {bad!r}")):
        ArtifactId.parse(bad)
    assert not ArtifactId.is_valid(bad) and blueprint_id_of(bad) is None


def test_formatting_from_bad_parts_names_the_result() -> None:
    with pytest.raises(ValueError, match="malformed artifact id 'not-a-hash-cpu-fast-"):
        ArtifactId("not-a-hash", "cpu", CompilationPipeline.FAST, "b" * 16)
    with pytest.raises(ValueError, match="'warp' is not a valid CompilationPipeline"):
        ArtifactId(BID, "cpu", "warp", "b" * 16)


def test_blueprint_id_of_reads_the_ir_hash_or_gives_none() -> None:
    assert blueprint_id_of(ArtifactId(BID, "cpu", "eager", "c" * 12)) == BID
    assert blueprint_id_of(None) is None and blueprint_id_of("fake-kernel") is None


@given(st.from_regex(r"[a-z_][a-z0-9_.\[\]]{0,30}", fullmatch=True), st.integers(0, 10_000))
def test_seed_ids_round_trip(layer: str, index: int) -> None:
    sid = SeedId(layer, index)
    assert sid == f"{layer}[{index}]"
    parsed = SeedId.parse(str(sid))
    assert (parsed.layer_id, parsed.seed_index) == (layer, index) and parsed == sid
    assert sid.index("[") >= 1  # still a str: its methods are not shadowed by the parts


def test_seed_ids_of_contracts_and_copies() -> None:
    t = SeedTelemetry(layer_id="blocks.2.mlp", seed_index=3, epoch=0, stage=SeedStage.DORMANT)
    assert type(t.seed_id) is SeedId and t.seed_id == "blocks.2.mlp[3]" and t.seed_id.layer_id == "blocks.2.mlp"
    cmd = KasminaControlCommand(layer_id="fc1", seed_index=0, command="CULL")
    assert cmd.seed_id == SeedId("fc1", 0) and cmd.seed_id.seed_index == 0
    for copied in (pickle.loads(pickle.dumps(t.seed_id)), copy.deepcopy(t.seed_id)):
        assert type(copied) is SeedId and copied == t.seed_id


@pytest.mark.parametrize("bad", ["fc1", "fc1[]", "fc1[-1]", "fc1[01]", "[0]", " fc1[0]", "fc1[0] ", "fc1[x]", ""])
def test_malformed_seed_ids_are_refused_naming_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"malformed seed id {bad!r}")):
        SeedId.parse(bad)


@pytest.mark.parametrize(("layer", "index", "named"), [("", 0, "layer ''"), ("fc1", -1, "index -1"),
                                                        ("fc1", True, "index True"), (" fc1", 0, "layer ' fc1'")])
def test_bad_seed_parts_are_refused_naming_the_value(layer: str, index: int, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        SeedId(layer, index)
