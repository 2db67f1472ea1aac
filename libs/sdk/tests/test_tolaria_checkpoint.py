"""Checkpoints: bytes checked against their sha256 before anything is unpickled; corrupt ones are skipped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from esper.tolaria import (
    CheckpointIntegrityError,
    CheckpointStore,
    NoGoodCheckpointError,
    load_checkpoint,
    save_checkpoint,
)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_round_trip_and_sidecar(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 3), "controller": '{"a": 1}', "epoch": 4}
    digest = save_checkpoint(tmp_path / "c.pt", state)
    assert (tmp_path / "c.pt.sha256").read_text().split()[0] == digest
    assert digest == hashlib.sha256((tmp_path / "c.pt").read_bytes()).hexdigest()
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["w"], state["w"]) and loaded["controller"] == '{"a": 1}' and loaded["epoch"] == 4


def test_checksum_mismatch_and_missing_checksum_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    digest = save_checkpoint(path, {"w": torch.ones(100)})
    flip_a_byte(path)
    with pytest.raises(CheckpointIntegrityError, match=f"recorded sha256 {digest}") as err:
        load_checkpoint(path)
    assert err.value.expected == digest and err.value.actual != digest and err.value.path == path
    save_checkpoint(path, {"w": torch.ones(1)})
    (tmp_path / "c.pt.sha256").unlink()
    with pytest.raises(CheckpointIntegrityError, match="no recorded checksum"):
        load_checkpoint(path)


def test_store_keeps_the_newest_and_falls_back_past_corrupt_ones(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    for epoch in range(5):
        store.save(epoch, {"epoch": epoch})
    assert [p.name for p in store.paths()] == ["epoch-00002.pt", "epoch-00003.pt", "epoch-00004.pt"]
    flip_a_byte(store.path_for(4))
    path, state = store.load_latest_good()
    assert path.name == "epoch-00003.pt" and state["epoch"] == 3
    store.discard_after(2)
    assert [p.name for p in store.paths()] == ["epoch-00002.pt"]
    flip_a_byte(store.path_for(2))
    with pytest.raises(NoGoodCheckpointError, match=r"epoch-00002\.pt is corrupt"):
        store.load_latest_good()
