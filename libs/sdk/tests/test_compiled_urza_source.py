"""UrzaKernelSource against a real Urza app: verified fetches, cache hits without I/O, and Kasmina using it.

Urza runs in process (SQLite, blob folder) behind FastAPI's TestClient; artifacts are compiled by
Tezzeret's real pipeline. Corruption is injected on the wire, between Urza and the source.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from esper.kasmina import collect_telemetry, drain_events, kasmina_layers, wait_for_loads, wrap
from esper.kasmina.telemetry import EventKind
from esper.kasmina.testing import Driver, advance, fast_config, mlp, train_steps
from esper_contracts import (
    ArtifactId,
    BlueprintIR,
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelQuery,
    KernelStatus,
    SeedStage,
    TensorInterface,
    builtin_blueprints,
)
from esper_kernels import (
    CompiledKernel,
    KernelIntegrityError,
    KernelNotFoundError,
    UrzaKernelSource,
    open_kernel_artifact,
    reference_module,
)
from esper_tezzeret.pipelines import compile_artifact
from esper_urza_client import UrzaClient

S = SeedStage


@pytest.fixture
def urza_http(tmp_path: Path, memory_bus_url: str) -> Iterator[TestClient]:
    from esper_urza.service import create_service

    service = create_service(data_dir=tmp_path / "urza", bus_url=memory_bus_url, seed_library=False,
                             pipelines=["fast"], hardware=["cpu"], validate_compiled=False)
    with TestClient(service.app, raise_server_exceptions=False) as client:
        yield client


def bottleneck(features: int) -> BlueprintIR:
    irs = builtin_blueprints(TensorInterface(layout="BD", features=features))
    return next(ir for ir in irs if ir.tags[0] == "bottleneck")


def store(client: UrzaClient, ir: BlueprintIR, shape: list[int]) -> str:
    """Compile ``ir`` (fast), upload it and report it COMPILED; returns the artifact id."""
    out = compile_artifact(ir, CompilationPipeline.FAST, "cpu", shape)
    client.submit_blueprint(ir)
    client.put_binary(out.artifact_id, out.blob, out.sha256)
    client.post_compilation(CompiledKernelArtifact.for_id(
        out.artifact_id, status=KernelStatus.COMPILED, input_shape=shape, sha256=out.sha256,
        size_bytes=len(out.blob), compile_time_s=1.0))
    return out.artifact_id


class CountingTransport:
    """Wraps the TestClient's transport: counts requests and can corrupt binary downloads."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[str] = []
        self.corrupt = False

    def handle_request(self, request: Any) -> Any:
        self.requests.append(f"{request.method} {request.url.path}")
        response = self.inner.handle_request(request)
        if self.corrupt and request.url.path.endswith("/binary"):
            body = bytearray(response.read())
            body[len(body) // 2] ^= 0xFF
            # the TestClient may be built on an httpx fork: answer with its own Response class
            return type(response)(response.status_code, headers=response.headers, content=bytes(body))
        return response


@pytest.fixture
def wire(urza_http: TestClient) -> CountingTransport:
    transport = CountingTransport(urza_http._transport)
    urza_http._transport = transport
    return transport


@pytest.fixture
def source(urza_http: TestClient, wire: CountingTransport) -> UrzaKernelSource:
    return UrzaKernelSource(client=UrzaClient(http=urza_http), cache_mb=16, prewarm_loaders=False)


def test_a_kernel_is_fetched_verified_loaded_then_served_from_memory(source: UrzaKernelSource,
                                                                     wire: CountingTransport) -> None:
    ir = bottleneck(16)
    aid = store(source.client, ir, [8, 16])
    meta = source.metadata(aid)
    assert meta.status is KernelStatus.COMPILED and meta.sha256
    first = source.load(aid)
    assert isinstance(first, CompiledKernel)
    data, sha = source.client.binary(aid)
    reference = reference_module(open_kernel_artifact(data, sha))
    x = torch.randn(3, 16)
    assert torch.allclose(first(x), reference(x), atol=1e-6)
    before = len(wire.requests)
    second = source.load(aid)
    assert len(wire.requests) == before  # a hit: no request, no loader
    assert second is not first and torch.equal(second(x), first(x))


def test_a_corrupted_download_is_refused_reported_and_not_cached(source: UrzaKernelSource,
                                                                 wire: CountingTransport) -> None:
    aid = store(source.client, bottleneck(16), [8, 16])
    reported: list[tuple[str, str]] = []
    source.on_integrity_error.append(lambda a, why: reported.append((a, why)))
    wire.corrupt = True
    with pytest.raises(KernelIntegrityError, match="refused"):
        source.load(aid)
    assert source.integrity_failures == 1 and reported and reported[0][0] == aid
    assert aid not in source.cache
    wire.corrupt = False
    assert isinstance(source.load(aid), CompiledKernel)  # the next fetch is clean and is accepted


def test_unknown_or_unbuilt_kernels_raise_not_found(source: UrzaKernelSource) -> None:
    ir = bottleneck(16)
    source.client.submit_blueprint(ir)
    with pytest.raises(KernelNotFoundError):
        source.load(ArtifactId(ir.ir_hash(), "cpu", "fast", "0123456789abcdef"))


def test_the_loaded_cache_stays_within_its_megabytes(urza_http: TestClient) -> None:
    client = UrzaClient(http=urza_http)
    ids = [store(client, bottleneck(f), [4, f]) for f in (8, 16, 32)]
    sizes = [client.kernel(a).binary_size or 0 for a in ids]
    tiny = UrzaKernelSource(client=client, cache_mb=(max(sizes) * 1.5) / (1024 * 1024), prewarm_loaders=False)
    for a in ids:
        tiny.load(a)
    assert tiny._loaded_bytes <= tiny.cache.capacity_bytes and len(tiny._loaded) == 1
    assert list(tiny._loaded) == [ids[-1]]


def test_queries_go_to_urza(source: UrzaKernelSource) -> None:
    aid = store(source.client, bottleneck(16), [8, 16])
    result = source.query(KernelQuery(status=KernelStatus.COMPILED, tags_required=["bottleneck"]))
    assert [a.artifact_id for a in result.artifacts] == [aid]


def test_the_blueprint_of_an_artifact_is_fetched_once(source: UrzaKernelSource, wire: CountingTransport) -> None:
    aid = store(source.client, bottleneck(16), [8, 16])
    before = len(wire.requests)
    assert source.blueprint(aid) == bottleneck(16) and source.blueprint(aid).name == "bottleneck-bd-16"
    assert len(wire.requests) == before + 1  # IRs never change: the second answer comes from memory
    assert source.describe(aid) == "bottleneck-bd-16" and len(wire.requests) == before + 1
    unknown = f"{'0' * 64}-cpu-fast-0123456789abcdef"
    assert source.describe(unknown) == unknown  # Urza has no such blueprint: the id is the name
    assert source.register_interface(TensorInterface(layout="BD", features=16)) == []


def test_kasmina_trains_a_compiled_kernel_from_urza_through_the_whole_lifecycle(source: UrzaKernelSource) -> None:
    aid = store(source.client, bottleneck(16), [8, 16])  # layer "0" of the MLP has 16 output features
    model = wrap(mlp(), fast_config(), source)
    x = torch.randn(16, 8)
    d = Driver(model, x)
    d.to_stage("0", 0, aid, S.LOADING)
    layer = kasmina_layers(model)["0"]
    assert d.apply(advance("0", 0, S.TRAINING)) == []
    assert layer.stage(0) is S.TRAINING  # weights are program inputs: a compiled kernel is trainable
    kernel = layer.seeds["0"]
    assert isinstance(kernel, CompiledKernel)
    before = kernel.flat_parameters.detach().clone()
    train_steps(model, x, 4)
    assert not torch.equal(kernel.flat_parameters.detach(), before)  # TRAINING moved the compiled seed's weights
    for target in (S.GRAFTING, S.STABILIZATION, S.EVALUATING, S.FINE_TUNING):
        assert d.apply(advance("0", 0, target)) == []
        assert layer.stage(0) is target
        train_steps(model, x, 6)
    assert d.apply(advance("0", 0, S.FOSSILIZED)) == []
    assert layer.stage(0) is S.FOSSILIZED
    assert not any(e.kind is EventKind.REDIRECTED for e in drain_events(model))
    assert torch.isfinite(model(x)).all()


def test_a_kernel_that_cannot_be_loaded_culls_its_seed(source: UrzaKernelSource) -> None:
    ir = bottleneck(16)
    source.client.submit_blueprint(ir)
    model = wrap(mlp(), fast_config(), source)
    d = Driver(model, torch.randn(16, 8))
    d.to_stage("0", 0, ArtifactId(ir.ir_hash(), "cpu", "fast", "0123456789abcdef"), S.LOADING)
    wait_for_loads(model)
    tel: list[Any] = collect_telemetry(model, d.epoch)
    assert tel[0].stage is S.CULLED and tel[0].error_count == 1


def test_a_model_with_a_compiled_seed_restores_from_its_state_dict(source: UrzaKernelSource) -> None:
    aid = store(source.client, bottleneck(16), [8, 16])
    model = wrap(mlp(), fast_config(), source)
    x = torch.randn(16, 8)
    d = Driver(model, x)
    d.to_stage("0", 0, aid, S.LOADING)
    assert d.apply(advance("0", 0, S.TRAINING)) == []
    train_steps(model, x, 3)
    saved = copy.deepcopy(model.state_dict())
    expected = model(x).detach()
    train_steps(model, x, 3)  # the seed's weights move on
    assert not torch.equal(model(x).detach(), expected)
    model.load_state_dict(saved)  # what a rollback does
    assert torch.allclose(model(x).detach(), expected)

    fresh = wrap(mlp(seed=1), fast_config(), source)  # a new process loading a saved model
    fresh.load_state_dict(saved)
    seed = kasmina_layers(fresh)["0"].seeds["0"]
    assert isinstance(seed, CompiledKernel) and seed.artifact_id == aid
    assert torch.allclose(fresh(x).detach(), expected)
