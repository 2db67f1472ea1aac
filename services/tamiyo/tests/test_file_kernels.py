"""FileKernels: a catalogue of Urza's BlueprintRecords, answered with Urza's matching rule."""

from __future__ import annotations

import json
from pathlib import Path

from esper_contracts import (
    BlueprintClass,
    BlueprintRecord,
    CompiledKernelArtifact,
    KernelQuery,
    KernelStatus,
    TensorInterface,
    artifact_id,
    family,
)
from esper_tamiyo.kernels import FileKernels

IMAGE = TensorInterface(layout="BCHW", features=16)
VECTOR = TensorInterface(layout="BD", features=16)


def _record(name: str, interface: TensorInterface, hardware: str, shape: list[int], tags: list[str]) -> BlueprintRecord:
    ir = family(name).blueprint(interface, origin="test")
    bid = ir.ir_hash()
    artifact = CompiledKernelArtifact.for_id(artifact_id(bid, hardware, "fast", "0" * 12),  # type: ignore[arg-type]
                                             status=KernelStatus.VALIDATED, input_shape=shape, tags=tags)
    return BlueprintRecord(blueprint_id=bid, ir=ir, artifacts=[artifact])


def _catalogue(tmp_path: Path) -> FileKernels:
    records = [
        # an image kernel traced at 16x16 pixels: its input shape ends with 16, but it is not a BD/16 kernel
        _record("depthwise_conv", IMAGE, "cpu", [8, 16, 16, 16], ["depthwise_conv", "spatial"]),
        _record("low_rank_adapter", VECTOR, "cpu", [8, 16], ["low_rank_adapter", "cheap"]),
        _record("bottleneck", VECTOR, "h100", [8, 16], ["bottleneck", "compact"]),
    ]
    path = tmp_path / "kernels.json"
    path.write_text(json.dumps([r.model_dump(mode="json") for r in records]))
    return FileKernels(path)


def _names(kernels: FileKernels, **query: object) -> list[str]:
    return [a.tags[0] for a in kernels.query(KernelQuery.model_validate(query)).artifacts]


def test_the_interface_is_the_blueprints_not_the_last_axis_of_the_traced_shape(tmp_path: Path) -> None:
    kernels = _catalogue(tmp_path)
    assert _names(kernels, interface=VECTOR) == ["low_rank_adapter", "bottleneck"]
    assert _names(kernels, interface=IMAGE) == ["depthwise_conv"]


def test_class_hardware_tags_and_limit_filter_as_urza_does(tmp_path: Path) -> None:
    kernels = _catalogue(tmp_path)
    assert _names(kernels, blueprint_class=BlueprintClass.LOW_RANK) == ["low_rank_adapter"]
    assert _names(kernels, hardware="h100") == ["bottleneck"]
    assert _names(kernels, tags_required=["cheap"]) == ["low_rank_adapter"]
    assert _names(kernels, tags_excluded=["spatial"]) == ["low_rank_adapter", "bottleneck"]
    assert _names(kernels, status=KernelStatus.REJECTED) == []
    limited = kernels.query(KernelQuery(limit=1))
    assert len(limited.artifacts) == 1 and limited.total == 3
