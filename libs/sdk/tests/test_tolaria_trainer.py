"""Tolaria end to end on a tiny task: the lifecycle runs, rollback restores everything bit-identically,
corrupt checkpoints are skipped, kernel crashes are culled, and the run leaves its files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper import KasminaConfig, LocalKernelLibrary, TolariaConfig, wrap
from esper.data import Batches
from esper.kasmina import kasmina_layers
from esper.kasmina.testing import TinyMLP
from esper.tolaria import TolariaTrainer, TrainerHooks
from esper_contracts import Outcome, SeedStage
from esper_policy import HeuristicPolicy, TamiyoConfig
from esper_recipes.tasks import two_spirals

S = SeedStage


# Every lifecycle step takes about one epoch of 5 batches; the policy sees a "plateau" at every boundary.
KASMINA = KasminaConfig(exclude_modules=["head"], training_min_steps=1, training_max_steps=4, alpha_ramp_steps=4,
                        stabilization_steps=1, evaluation_steps=1, fine_tuning_steps=2, telemetry_every=1,
                        embargo_epochs=1)
TAMIYO = TamiyoConfig(warmup_epochs=0, plateau_patience_epochs=1, plateau_min_delta=100.0, fine_tuning_epochs=1,
                      cull_regression_tolerance=1.0, min_improvement=-1.0)


def make_trainer(tmp_path: Path, epochs: int, *, loss_fn: Any = F.cross_entropy, hooks: TrainerHooks | None = None,
                 kernels: Any = None, **tolaria: Any) -> TolariaTrainer:
    torch.manual_seed(0)
    data = two_spirals(seed=0, points_per_class=64)
    model = TinyMLP()
    library = kernels or LocalKernelLibrary()
    wrap(model, KASMINA, library)
    controller = HeuristicPolicy(TAMIYO, library)
    config = TolariaConfig(epochs=epochs, run_dir=str(tmp_path), run_id="tiny", progress_bar=False, log_lines=False,
                           learning_rate=1e-2, **tolaria)
    return TolariaTrainer(model, controller, config, train_data=Batches(data.train, 16, seed=0),
                          val_data=Batches(data.val, 256, shuffle=False), loss_fn=loss_fn, hooks=hooks)


def stages_reached(trainer: TolariaTrainer) -> set[str]:
    return {s["stage"] for g in trainer.lineage.germinations for s in g.stages}


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-identical comparison of nested state (tensors compared exactly, NaN-safe)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.bool else a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), f"{where}: {a!r} != {b!r}"


def test_a_seed_is_germinated_and_grafted_and_the_run_leaves_its_files(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=9)
    _, history = trainer.train()
    reached = stages_reached(trainer)
    assert {"GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING"} <= reached
    assert trainer.lineage.germinations[0].outcome == "FOSSILIZED"
    assert len(history.epochs) == 9 and history.epochs[-1]["seed_params"] > 0
    assert any(r["outcome"] == "FOSSILIZED" for r in history.field_reports)
    run = tmp_path / "tiny"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 10))
    assert any(e["kind"] == "transition" and e["new"] == "GRAFTING" for e in events)
    assert len(list((run / "checkpoints").glob("*.pt.sha256"))) == 3  # checkpoints_kept


def test_nan_rolls_back_host_seeds_and_controller_bit_identically(tmp_path: Path) -> None:
    snapshots: dict[int, Any] = {}
    restored: dict[str, Any] = {}
    poison = {"armed": False}

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        if poison["armed"]:
            poison["armed"] = False
            return loss * math.nan
        return loss

    def on_epoch_end(t: TolariaTrainer) -> None:
        snapshots[t.epoch] = (copy.deepcopy(t.model.state_dict()), copy.deepcopy(t.controller.state_dict()))
        if t.epoch == 4 and not restored:  # a seed is live (TRAINING/GRAFTING) here; poison the next epoch's first step
            poison["armed"] = True

    def on_restore(t: TolariaTrainer, path: Path) -> None:
        restored.update(path=path, model=copy.deepcopy(t.model.state_dict()),
                        controller=copy.deepcopy(t.controller.state_dict()), epoch=t.epoch)

    trainer = make_trainer(tmp_path, epochs=6, loss_fn=loss_fn, hooks=TrainerHooks(on_epoch_end, on_restore))

    _, history = trainer.train()
    assert restored["epoch"] == 4 and restored["path"].name == "epoch-00004.pt"
    assert_same(restored["model"], snapshots[4][0], "model")
    assert_same(restored["controller"], snapshots[4][1], "controller")

    (rollback,) = history.rollbacks
    assert "non-finite" in rollback["reason"] and rollback["epoch"] == 5
    live_before = rollback["seeds"]
    assert live_before, "a seed should have been live when the NaN struck"
    layers = kasmina_layers(trainer.model)
    for sid in live_before:
        layer_id, index = sid[:-1].split("[")
        assert layers[layer_id].stage(int(index)) is S.ROLLED_BACK
    reports = [r for r in history.field_reports if r["outcome"] == Outcome.ROLLED_BACK.value]
    assert [r["seed_id"] for r in reports] == live_before
    assert len(history.epochs) == 6  # the failed epoch was retried


def test_corrupt_newest_checkpoint_falls_back_to_an_older_one(tmp_path: Path) -> None:
    used: list[Path] = []
    poison = {"armed": False}

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if poison["armed"]:
            poison["armed"] = False
            return F.cross_entropy(logits, y) * math.inf
        return F.cross_entropy(logits, y)

    def on_epoch_end(t: TolariaTrainer) -> None:
        if t.epoch == 3 and not used:
            newest = t.checkpoints.path_for(3)
            data = bytearray(newest.read_bytes())
            data[len(data) // 2] ^= 0xFF  # one flipped byte in the newest rollback point
            newest.write_bytes(bytes(data))
            poison["armed"] = True

    trainer = make_trainer(tmp_path, epochs=4, loss_fn=loss_fn,
                           hooks=TrainerHooks(on_epoch_end, lambda t, p: used.append(p)))
    _, history = trainer.train()
    assert [p.name for p in used] == ["epoch-00002.pt"]
    assert len(history.rollbacks) == 1 and len(history.epochs) == 4


def test_loss_spike_triggers_rollback_and_too_many_rollbacks_raise(tmp_path: Path) -> None:
    from esper.tolaria import TrainingDivergedError

    def exploding(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        exploding.calls += 1  # type: ignore[attr-defined]
        scale = 1e4 if exploding.calls > 15 else 1.0  # type: ignore[attr-defined]  # from epoch 4 on
        return F.cross_entropy(logits, y) * scale

    exploding.calls = 0  # type: ignore[attr-defined]
    trainer = make_trainer(tmp_path, epochs=8, loss_fn=exploding, max_rollbacks=2)
    with pytest.raises(TrainingDivergedError, match="loss spike"):
        trainer.train()
    assert len(trainer.history.rollbacks) == 3


class CrashingKernels(LocalKernelLibrary):
    """A library whose kernels raise on every forward (``when="load"``: the load probe fails) or only when
    training (``when="runtime"``: they load, then raise at the first training step)."""

    def __init__(self, when: str = "load") -> None:
        super().__init__()
        self.when = when
        self.evicted: list[str] = []

    def load(self, artifact_id: str) -> nn.Module:
        inner = super().load(artifact_id)
        crash_in_eval = self.when == "load"

        class Crash(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if self.training or crash_in_eval:
                    raise RuntimeError("kernel exploded")
                return x

        return Crash()

    def evict(self, artifact_id: str) -> None:
        self.evicted.append(artifact_id)
        super().evict(artifact_id)


@pytest.mark.parametrize("when", ["load", "runtime"])
def test_a_failed_kernel_is_culled_once_by_kasmina_and_the_trainer_records_it(tmp_path: Path, when: str) -> None:
    library = CrashingKernels(when)
    trainer = make_trainer(tmp_path, epochs=5, kernels=library)
    _, history = trainer.train()
    errors = [e for e in history.events if e["kind"] == "kernel_error"]
    assert errors and all("kernel exploded" in e["message"] for e in errors)
    assert {e["error_kind"] for e in errors} == {"load_failed" if when == "load" else "runtime_error"}
    # One failure, one cull: the transition Kasmina reported, recorded with its reason, and no command of ours.
    culls = [e for e in history.events if e["kind"] == "transition" and e["new"] == "CULLED"]
    assert [(c["seed"], c["epoch"]) for c in culls] == [(e["seed"], e["epoch"]) for e in errors]
    assert all(c["reason"] == f"kernel error: {e['message']}" for c, e in zip(culls, errors, strict=True))
    assert {c["old"] for c in culls} == {"LOADING" if when == "load" else "TRAINING"}
    assert not any(e["kind"] == "command_refused" for e in history.events)
    assert len(library.evicted) == len(errors)
    culled = [g for g in trainer.lineage.germinations if g.outcome == "CULLED"]
    assert len(culled) == len(errors) and culled[0].stages[-1]["reason"].startswith("kernel error: kernel ")
    # The controller hears of each outcome once, from Tolaria; its own books are closed, not reported twice.
    reports = [r["seed_id"] for r in history.field_reports if r["outcome"] == "CULLED"]
    assert reports == [e["seed"] for e in errors]
    failed = trainer.controller.state_dict()["failed"]
    assert sum(len(blueprints) for blueprints in failed.values()) == len(errors)
    # Names in the lineage come from the kernel source's describe().
    kernel = culled[0].kernel_artifact_id
    assert kernel and culled[0].blueprint_name == library.describe(kernel) != kernel


def test_the_sdk_user_journey_through_the_public_api(tmp_path: Path) -> None:
    """Design F.2: one YAML, wrap, a controller, the trainer, save_model — kernels chosen and loaded by
    two different library instances (the controller's and wrap's default)."""
    import esper

    text = (Path(__file__).resolve().parents[3] / "recipes" / "configs" / "demo-spirals.yaml").read_text()
    config_path = tmp_path / "run.yaml"
    config_path.write_text(text)
    config = esper.load_config(config_path)
    config = config.model_copy(update={
        "tolaria": config.tolaria.model_copy(update={"epochs": 6, "run_dir": str(tmp_path), "progress_bar": False,
                                                     "log_lines": False}),
        "tamiyo": TAMIYO.model_copy(update={"blueprint_preference": ["capacity"]}),
        "kasmina": KASMINA,
    })
    data = two_spirals(seed=0, points_per_class=64)
    model = esper.wrap(TinyMLP(), config.kasmina)
    controller = esper.build_controller(config.tamiyo)
    trainer = esper.TolariaTrainer(model, controller, config.tolaria, train_data=Batches(data.train, 16),
                                   val_data=Batches(data.val, 256, shuffle=False))
    final_model, history = trainer.train()
    assert "GRAFTING" in stages_reached(trainer) and len(history.epochs) == 6
    out = esper.save_model(final_model, tmp_path / "evolved")
    assert json.loads((out / "lineage.json").read_text())["germinations"]
    plain = esper.unwrap(final_model, live_seeds="keep")
    assert not kasmina_layers(plain)
