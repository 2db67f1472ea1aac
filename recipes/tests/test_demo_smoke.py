"""The demo end to end on shortened runs: it writes model, lineage, metrics and a readable report."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from esper_recipes import demo
from esper_recipes.demo import build_host, static_twin
from esper_recipes.tasks import two_spirals


def test_demo_writes_model_lineage_and_report(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # Compiled kernels from the in-process platform, with the quick pipeline (the default compiles C++).
    assert demo.main(["--task", "spirals", "--epochs", "3", "--out", str(tmp_path), "--pipeline", "fast"]) == 0
    assert (tmp_path / "platform" / "urza.db").exists()
    out = tmp_path / "demo-spirals"
    for name in ("model.pt", "model.pt.sha256", "lineage.json", "metrics.jsonl", "events.jsonl", "report.png",
                 "report.html"):
        assert (out / name).exists(), name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page  # self-contained, static
    embedded = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(embedded) == (out / "report.png").read_bytes()
    doc = json.loads((out / "lineage.json").read_text())
    assert doc["task"] == "spirals" and "host_test_accuracy" in doc["summary"]
    printed = capsys.readouterr().out
    assert "epoch   3" in printed and "Esper demo" in printed
    assert "kernels: 3 of 3 compiled (fast), validated and tagged in Urza" in printed


def test_the_eager_demo_needs_no_platform(tmp_path: Path) -> None:
    assert demo.main(["--task", "spirals", "--epochs", "2", "--out", str(tmp_path), "--kernels", "eager"]) == 0
    assert not (tmp_path / "platform").exists() and (tmp_path / "demo-spirals" / "lineage.json").exists()


def test_when_no_kernel_compiles_the_demo_stops_with_the_reasons_and_what_to_try(
        tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from esper.standalone import KernelProgress, LocalPlatform

    monkeypatch.setattr(LocalPlatform, "start", lambda self: self)  # no services: the compile outcome is given
    monkeypatch.setattr(LocalPlatform, "stop", lambda self: None)
    failed = KernelProgress(total=1, by_status={"FAILED": 1}, ready=0,
                            failed=["bottleneck-bd-8 standard: standard compile failed: g++: not found"])
    monkeypatch.setattr(demo, "prepare_kernels", lambda *_args: failed)
    assert demo.main(["--task", "spirals", "--epochs", "1", "--out", str(tmp_path)]) == 2
    printed = " ".join(capsys.readouterr().out.split())
    assert "demo stopped" in printed and "g++: not found" in printed and "--pipeline fast" in printed


def test_static_twin_has_the_evolved_shape_and_trains_everything() -> None:
    data = two_spirals(seed=0, points_per_class=32)
    from esper_contracts import KernelQuery, TensorInterface
    from esper_kernels import LocalKernelLibrary

    library = LocalKernelLibrary()
    kernel = library.query(KernelQuery(interface=TensorInterface(layout="BD", features=8),
                                       tags_required=["capacity"])).artifacts[0]
    twin = static_twin("spirals", data, [("hidden.1", 0, kernel.artifact_id)], chunks=1)
    host = build_host("spirals", data)
    extra = sum(p.numel() for p in twin.parameters()) - sum(p.numel() for p in host.parameters())
    assert extra == library.parameter_count(kernel.artifact_id) > 0
    assert all(p.requires_grad for p in twin.parameters())
    assert twin(data.test.x).shape == (len(data.test), 2)
