"""Standalone mode: Urza, Tezzeret and Urabrask in process compile and validate real kernels that seeds train.

The ``fast`` pipeline keeps these tests to seconds; the demo's default (AOTInductor) differs only in the
program it stores, which the loader tests and the asset integration test cover.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esper.kasmina import kasmina_layers, wrap
from esper.kasmina.testing import Driver, advance, fast_config, mlp, train_steps
from esper.standalone import LocalPlatform
from esper_contracts import (
    BlueprintClass,
    BlueprintIR,
    CompilationPipeline,
    IREdge,
    IRNode,
    KernelQuery,
    KernelStatus,
    OpType,
    SeedStage,
    TensorInterface,
    builtin_blueprints,
)
from esper_kernels import CompiledKernel

BD16 = TensorInterface(layout="BD", features=16)  # layer "0" of the test MLP has 16 output features


def bottleneck() -> BlueprintIR:
    return next(ir for ir in builtin_blueprints(BD16) if ir.tags[0] == "bottleneck")


def overflowing() -> BlueprintIR:
    """A blueprint whose outputs are infinite: Tezzeret's static check must refuse it with the reason."""
    return BlueprintIR(name="overflow", blueprint_class=BlueprintClass.MLP, input=BD16, output=BD16,
                       nodes=[IRNode(id="big", op=OpType.SCALE, attrs={"value": 1e30}), IRNode(id="sq", op=OpType.MUL)],
                       edges=[IREdge(src="input", dst="big"), IREdge(src="big", dst="sq", port=0),
                              IREdge(src="big", dst="sq", port=1), IREdge(src="sq", dst="output")])


def platform(data_dir: Path) -> LocalPlatform:
    return LocalPlatform(data_dir, pipelines=["fast"], sandbox=False, profile_budget_s=0.5)


@pytest.mark.slow
def test_blueprints_become_validated_kernels_that_a_seed_loads_and_trains(tmp_path: Path) -> None:
    with platform(tmp_path / "platform") as p:
        assert len(p.submit([bottleneck(), overflowing()])) == 2
        seen: list[int] = []
        state = p.wait_ready(timeout_s=600, on_progress=lambda s: seen.append(s.ready + len(s.failed)))
        assert state.ready == 1 and state.done and seen == sorted(seen)
        (failure,) = state.failed
        assert failure.startswith("overflow fast:") and "non-finite" in failure

        source = p.kernel_source()
        found = source.query(KernelQuery(interface=BD16, status=KernelStatus.VALIDATED, tags_required=["bottleneck"]))
        (artifact,) = found.artifacts
        assert artifact.pipeline is CompilationPipeline.FAST and artifact.validation is not None
        assert {"high_speed", "medium_speed", "low_speed"} & set(artifact.tags)  # Urabrask's tags

        model = wrap(mlp(), fast_config(), source)
        x = torch.randn(16, 8)
        driver = Driver(model, x)
        driver.to_stage("0", 0, artifact.artifact_id, SeedStage.LOADING)
        assert driver.apply(advance("0", 0, SeedStage.TRAINING)) == []
        kernel = kasmina_layers(model)["0"].seeds["0"]
        assert isinstance(kernel, CompiledKernel) and kernel.artifact_id == artifact.artifact_id
        before = kernel.flat_parameters.detach().clone()
        train_steps(model, x, 3)
        assert not torch.equal(before, kernel.flat_parameters.detach())

    # A second run on the same folder finds everything final at once: nothing is compiled again.
    with platform(tmp_path / "platform") as again:
        keys = again.submit([bottleneck(), overflowing()])
        state = again.progress(keys[:1])
        assert state.done and state.ready == 1 and state.total == 1
        state = again.progress()
        assert state.done and state.ready == 1 and len(state.failed) == 1
