"""Elesh as a service on a memory bus: a request in, a report out; zones marked; bad requests dead-lettered."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi.testclient import TestClient
from torch import nn

from esper_contracts import (
    ImportanceCriterion,
    ImportanceReport,
    ImportanceRequest,
    ProtectedZone,
    PrunableModule,
    Topic,
    UnitStatistics,
)
from esper_elesh.service import create_service
from esper_oona import connect
from esper_oona.testing import Collector, wait_for
from esper_pruning.model import state_bytes


def _request(key: str, **kw: object) -> ImportanceRequest:
    fields = {"run_id": "r1", "epoch": 4, "checkpoint_id": "ck-1", "checkpoint_key": key,
              "modules": [PrunableModule(module_path="0", kind="linear"),
                          PrunableModule(module_path="2", kind="linear")],
              "statistics": [UnitStatistics(module_path="0", criterion=ImportanceCriterion.TAYLOR,
                                            values=[float(i) for i in range(8)])]}
    return ImportanceRequest(**{**fields, **kw})  # type: ignore[arg-type]


def test_a_request_becomes_a_report_and_bad_ones_are_dead_lettered(tmp_path: Path, memory_bus_url: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    service = create_service(bus_url=memory_bus_url, blob_url=(tmp_path / "blobs").as_uri(), port=0)
    service.blobs.put("checkpoints/r1/ck-1.safetensors", state_bytes(model))
    service.blobs.put("checkpoints/r1/pickled.pt", b"\x80\x04K\x01.")  # a pickle: never loaded
    bus = connect(memory_bus_url, producer_name="tolaria")
    reports = Collector(bus, Topic.IMPORTANCE)
    with TestClient(service.app) as client:
        bus.publish(Topic.PROTECTED_ZONES, ProtectedZone(module_patterns=["2"], reason="scaffold", created_epoch=0))
        bus.flush()
        wait_for(lambda: bool(service.scorer.zones()), what="the zone")
        bus.publish(Topic.IMPORTANCE_REQUESTS, _request("checkpoints/r1/ck-1.safetensors"), key="r1")
        bad_modules = [PrunableModule(module_path="9", kind="linear")]
        for bad in (_request("checkpoints/r1/missing.safetensors"), _request("checkpoints/r1/pickled.pt"),
                    _request("checkpoints/r1/ck-1.safetensors", modules=bad_modules, statistics=[])):
            bus.publish(Topic.IMPORTANCE_REQUESTS, bad, key="r1")
        bus.publish_raw(Topic.IMPORTANCE_REQUESTS, b'{"not": "a request"}')
        bus.flush()
        got: list[ImportanceReport] = reports.wait_for(1, timeout_s=20)
        assert len(got) == 1
        report = got[0]
        assert report.checkpoint_id == "ck-1" and report.run_id == "r1" and report.primary == ImportanceCriterion.TAYLOR
        assert {s.module_path for s in report.scores if s.diagnostic_only} == {"2"}
        assert len([s for s in report.scores if s.module_path == "0" and s.criterion == "taylor"]) == 8
        dead: list[str] = []

        def four_dead() -> bool:
            dead.extend(d.error or "" for d in bus.read_dead_letters(Topic.IMPORTANCE_REQUESTS, timeout_s=0.2))
            return len(dead) >= 4

        wait_for(four_dead, timeout_s=20, what="four dead letters")
        text = "\n".join(dead)
        assert "not in the blob store" in text and "not a safetensors file" in text and "no tensor '9.weight'" in text
        assert client.get("/healthz").status_code == 200
        assert 'esper_elesh_reports_total{criterion="taylor"} 1.0' in client.get("/metrics").text
    bus.close()
