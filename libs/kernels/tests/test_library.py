"""KernelCache (LRU in MB, sha256 on every access) and LocalKernelLibrary (artifact ids, query, load)."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch

from esper_contracts import (
    ARTIFACT_ID_PATTERN,
    ArtifactId,
    BlueprintClass,
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelQuery,
    KernelSelector,
    KernelStatus,
    TensorInterface,
    fixed_function_blueprint,
)
from esper_kernels import (
    EAGER_HARDWARE,
    KernelCache,
    KernelIntegrityError,
    KernelNotFoundError,
    KernelSource,
    LocalKernelLibrary,
    sha256_hex,
    toolchain_hash,
)
from esper_kernels import library as library_module

BD16 = TensorInterface(layout="BD", features=16)
BTD16 = TensorInterface(layout="BTD", features=16)


def test_cache_rejects_bytes_that_do_not_match_their_sha256() -> None:
    cache = KernelCache(1.0)
    with pytest.raises(KernelIntegrityError, match="does not match"):
        cache.put("k", b"kernel bytes", sha256_hex(b"other bytes"))
    assert "k" not in cache


def test_cache_detects_corruption_on_get_and_evicts() -> None:
    cache = KernelCache(1.0)
    data = b"kernel bytes"
    assert cache.put("k", data, sha256_hex(data))
    assert cache.get("k") == data
    cache._entries["k"] = (b"kernel bytez", sha256_hex(data))  # bit rot in memory
    with pytest.raises(KernelIntegrityError):
        cache.get("k")
    assert "k" not in cache
    assert cache.put("k", data, sha256_hex(data))
    with pytest.raises(KernelIntegrityError):
        cache.get("k", sha256_hex(b"what the caller expected"))


def test_cache_is_lru_bounded_in_megabytes() -> None:
    cache = KernelCache(capacity_mb=3 / 1024)  # 3 KiB
    blobs = {k: bytes([i]) * 1024 for i, k in enumerate("abcd")}
    for k in "abc":
        cache.put(k, blobs[k], sha256_hex(blobs[k]))
    assert cache.get("a") is not None  # a is now most recent; b is the LRU entry
    cache.put("d", blobs["d"], sha256_hex(blobs["d"]))
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcd" if k in cache}
    assert cache.size_bytes <= cache.capacity_bytes and cache.evictions == 1
    big = b"x" * 4096
    assert cache.put("big", big, sha256_hex(big)) is False  # larger than the whole cache: not kept
    assert cache.get("missing") is None


def test_library_satisfies_both_protocols_and_ids_follow_the_schema() -> None:
    lib = LocalKernelLibrary()
    assert isinstance(lib, KernelSource) and isinstance(lib, KernelSelector)
    ids = lib.register_interface(BD16)
    assert len(ids) == 3 and lib.register_interface(BD16) == ids  # idempotent
    for aid in ids:
        meta = lib.metadata(aid)
        assert re.match(ARTIFACT_ID_PATTERN, aid)
        parsed = ArtifactId.parse(aid)
        assert parsed.blueprint_id == meta.blueprint_id == lib.blueprint(aid).ir_hash()
        assert (parsed.hardware, parsed.pipeline, parsed.toolchain_hash) == ("cpu", CompilationPipeline.EAGER,
                                                                              toolchain_hash())
        assert meta.pipeline is CompilationPipeline.EAGER
        assert meta.status is KernelStatus.VALIDATED and meta.sha256 is not None


def test_a_library_names_its_artifacts_by_blueprint() -> None:
    lib = LocalKernelLibrary()
    aid = lib.register_interface(BD16)[0]
    assert lib.describe(aid) == lib.blueprint(aid).name
    assert lib.describe("not-an-artifact") == "not-an-artifact"  # a display name never raises


def test_a_minimal_kernel_source_gets_working_defaults() -> None:
    lib = LocalKernelLibrary()

    class Minimal(KernelSource):
        """Only the two required methods."""

        def load(self, artifact_id: str) -> torch.nn.Module:
            return lib.load(artifact_id)

        def metadata(self, artifact_id: str) -> CompiledKernelArtifact:
            return lib.metadata(artifact_id)

    source = Minimal()
    assert isinstance(source, KernelSource)
    assert source.register_interface(BD16) == [] and source.evict("any") is None
    assert source.describe("some-artifact") == "some-artifact"


def test_toolchain_hash_covers_the_torch_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = toolchain_hash()
    monkeypatch.setattr(library_module.torch, "__version__", "0.0.1")
    assert toolchain_hash() != before


def test_query_filters_sorts_and_limits() -> None:
    lib = LocalKernelLibrary()
    result = lib.query(KernelQuery(interface=BTD16))  # registers the interface lazily
    assert result.total == 4 and len(result.artifacts) == 4
    names = [a.tags[0] for a in result.artifacts]
    assert set(names) == {"residual_mlp", "bottleneck", "low_rank_adapter", "attention_head"}
    counts = [lib.parameter_count(a.artifact_id) for a in result.artifacts]
    assert counts == sorted(counts)  # latency sort falls back to parameter count without a report
    attn = lib.query(KernelQuery(interface=BTD16, blueprint_class=BlueprintClass.ATTENTION))
    assert [a.tags[0] for a in attn.artifacts] == ["attention_head"]
    assert lib.query(KernelQuery(interface=BTD16, tags_required=["residual"], tags_excluded=["attention"])).total == 3
    limited = lib.query(KernelQuery(interface=BTD16, limit=2))
    assert limited.total == 4 and len(limited.artifacts) == 2
    assert lib.query(KernelQuery(interface=BD16, status=KernelStatus.REJECTED)).total == 0
    # Hardware matches exactly, as in Urza: eager artifacts are labelled with EAGER_HARDWARE.
    assert lib.query(KernelQuery(interface=BD16, hardware=EAGER_HARDWARE)).total == 3
    assert lib.query(KernelQuery(interface=BD16, hardware="h100")).total == 0
    assert lib.query(KernelQuery(interface=TensorInterface(layout="BD", features=17))).total == 3


def test_load_builds_fresh_modules_through_the_cache() -> None:
    lib = LocalKernelLibrary()
    aid = lib.register_interface(BD16)[0]
    a, b = lib.load(aid), lib.load(aid)
    assert a is not b and aid in lib.cache and lib.cache.hits >= 1
    x = torch.randn(3, 16)
    assert a(x).shape == x.shape


def test_tampered_artifact_bytes_fail_to_load() -> None:
    lib = LocalKernelLibrary()
    aid = lib.register(fixed_function_blueprint(BD16)).artifact_id
    lib._blobs[aid] = lib._blobs[aid].replace(b'"value":0.5', b'"value":5.0')
    with pytest.raises(KernelIntegrityError):
        lib.load(aid)


def test_unknown_artifact_is_reported() -> None:
    with pytest.raises(KernelNotFoundError, match="unknown kernel artifact"):
        LocalKernelLibrary().load(ArtifactId("f" * 64, "cpu", "eager", "0" * 16))


def test_library_is_shared_by_copies_and_survives_pickling() -> None:
    lib = LocalKernelLibrary(interfaces=[BD16])
    assert copy.deepcopy(lib) is lib
    clone = pickle.loads(pickle.dumps(lib))
    aid = lib.register_interface(BD16)[0]
    assert clone.metadata(aid) == lib.metadata(aid)
    assert isinstance(clone.load(aid), torch.nn.Module)
