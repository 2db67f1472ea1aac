"""Tolaria on two ranks (gloo, CPU): the model grows identically on both, a NaN on one rank rolls back both,
a kernel failing on one rank is culled on both, mismatched ranks stop at start, and the pieces (sharded
batches, config differences) on their own.

Each rank runs a function of this file (``run_ranks``: forked from a fork server that imported torch and
esper once) and returns what it trained through a file the test reads back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper import Batches, KasminaConfig, LocalKernelLibrary, TolariaConfig, wrap
from esper.data import Split
from esper.kasmina import apply_commands, kasmina_layers, seed_stages
from esper.kasmina.testing import kernel_for
from esper.tolaria import RankDivergedError, RankMismatchError, TolariaTrainer, TrainerHooks
from esper.tolaria.distributed import differences
from esper.tolaria.testing import run_ranks as run_functions
from esper_contracts import CommandType, KasminaControlCommand
from esper_policy import HeuristicPolicy, TamiyoConfig
from esper_recipes.tasks import two_spirals

WORLD = 2
#: What this file imports, for the ranks' fork server to import once.
PRELOAD = ("pytest", "esper_policy", "esper_recipes.tasks", "esper.kasmina.testing")
# Every lifecycle step takes about one epoch of 8 steps; the policy sees a "plateau" at every boundary.
KASMINA = KasminaConfig(exclude_modules=["out"], training_min_steps=1, training_max_steps=4, alpha_ramp_steps=4,
                        stabilization_steps=1, evaluation_steps=1, fine_tuning_steps=2, telemetry_every=1,
                        embargo_epochs=1)
TAMIYO = TamiyoConfig(warmup_epochs=0, plateau_patience_epochs=1, plateau_min_delta=100.0, fine_tuning_epochs=1,
                      cull_regression_tolerance=1.0, min_improvement=-1.0)


class Host(nn.Module):
    """2 -> width -> width -> 2, the last layer left without a seed slot."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(2, width), nn.Linear(width, width), nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def run_ranks(function: Callable[..., Any], out: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """``function(rank, out, **kwargs)`` of this file on two ranks."""
    return run_functions(__file__, function.__name__, out, world=WORLD, preload=PRELOAD, **kwargs)


def values(results: list[dict[str, Any]]) -> list[Any]:
    for rank, r in enumerate(results):
        assert "value" in r, f"rank {rank} failed: {r.get('trace')}"
    return [r["value"] for r in results]


def make_trainer(rank: int, out: Path, epochs: int, *, width: int = 8, hooks: TrainerHooks | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 kernels: LocalKernelLibrary | None = None, **tolaria: Any) -> TolariaTrainer:
    data = two_spirals(seed=0, points_per_class=64)
    torch.manual_seed(100 + rank)  # different initial weights on each rank: DDP starts every rank from rank 0's
    model = Host(width)
    library = kernels or LocalKernelLibrary()
    wrap(model, KASMINA, library)
    config = TolariaConfig(epochs=epochs, run_dir=str(out), run_id="ddp", progress_bar=False, log_lines=False,
                           learning_rate=1e-2, **tolaria)
    trainer = TolariaTrainer(model, HeuristicPolicy(TAMIYO, library), config, loss_fn=loss_fn, hooks=hooks,
                             train_data=Batches(data.train, 8, seed=0, rank=rank, world_size=WORLD),
                             val_data=Batches(data.val, 256, shuffle=False, rank=rank, world_size=WORLD))
    torch.manual_seed(200 + rank)  # and different random streams: kernels built later initialise differently
    return trainer


def outcome(trainer: TolariaTrainer) -> dict[str, Any]:
    """What must be identical on every rank, and what shows who wrote what."""
    model = trainer.model
    return {
        "parameters": {n: p.detach().clone() for n, p in model.named_parameters()},
        "seed_parameters": {f"{lid}[{i}]": [p.detach().clone() for p in m.parameters()]
                            for lid, layer in kasmina_layers(model).items() for i, m in layer.seeds.items()},
        "stages": [(lid, i, s.value) for lid, i, s in seed_stages(model)],
        "lineage": trainer.lineage.to_dict(),
        "epochs": [{k: e[k] for k in ("epoch", "train_loss", "val_loss", "val_accuracy")}
                   for e in trainer.history.epochs],
        "rollbacks": trainer.history.rollbacks,
        "field_reports": trainer.history.field_reports,
    }


def assert_identical(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["parameters"].keys() == b["parameters"].keys()
    for name in a["parameters"]:
        assert torch.equal(a["parameters"][name], b["parameters"][name]), name
    assert a["seed_parameters"].keys() == b["seed_parameters"].keys()
    for sid, params in a["seed_parameters"].items():
        assert all(torch.equal(x, y) for x, y in zip(params, b["seed_parameters"][sid], strict=True)), sid
    for key in ("stages", "lineage", "epochs", "rollbacks"):
        assert a[key] == b[key], key


def grow(rank: int, out: Path, epochs: int) -> dict[str, Any]:
    trainer = make_trainer(rank, out, epochs)
    trainer.train()
    return outcome(trainer)


def test_two_ranks_grow_one_model_through_the_whole_lifecycle(tmp_path: Path) -> None:
    zero, one = values(run_ranks(grow, tmp_path, epochs=9))
    assert_identical(zero, one)
    reached = {s["stage"] for g in zero["lineage"]["germinations"] for s in g["stages"]}
    assert {"GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING",
            "FOSSILIZED"} <= reached
    assert zero["seed_parameters"], "the fossilized seed's weights are part of both models"
    # Rank 0 alone talks to the controller and writes the run: one set of files, its field reports only.
    assert any(r["outcome"] == "FOSSILIZED" for r in zero["field_reports"]) and one["field_reports"] == []
    run = tmp_path / "ddp"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 9
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [
        "epoch-00007.pt", "epoch-00008.pt", "epoch-00009.pt"]


def poisoned_on_rank_one(rank: int, out: Path) -> dict[str, Any]:
    armed = {"now": False}

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        if armed["now"]:
            armed["now"] = False
            return loss * math.nan
        return loss

    def on_epoch_end(t: TolariaTrainer) -> None:
        if rank == 1 and t.epoch == 4 and not t.history.rollbacks:  # a seed is live here
            armed["now"] = True  # only rank 1's next step goes bad

    trainer = make_trainer(rank, out, 6, hooks=TrainerHooks(on_epoch_end=on_epoch_end), loss_fn=loss_fn)
    trainer.train()
    return outcome(trainer)


def test_a_nan_on_one_rank_rolls_every_rank_back_to_the_same_checkpoint(tmp_path: Path) -> None:
    zero, one = values(run_ranks(poisoned_on_rank_one, tmp_path))
    assert_identical(zero, one)
    (rollback,) = zero["rollbacks"]
    assert rollback["epoch"] == 5 and "non-finite" in rollback["reason"] and rollback["seeds"]
    assert {s for _, _, s in zero["stages"]} >= {"ROLLED_BACK"}
    assert [e["epoch"] for e in zero["epochs"]] == [1, 2, 3, 4, 5, 6]  # the failed epoch was retried


class CrashOnRankOne(LocalKernelLibrary):
    """Kernels that raise at their first training forward on rank 1 only (same modules, rank 0's run fine)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def load(self, artifact_id: str) -> nn.Module:
        module = super().load(artifact_id)
        if self.rank == 1:
            plain = module.forward

            def forward(x: torch.Tensor) -> torch.Tensor:
                if module.training:
                    raise RuntimeError("kernel exploded on rank 1")
                return plain(x)

            module.forward = forward  # type: ignore[method-assign]
        return module


def crashing_on_rank_one(rank: int, out: Path) -> dict[str, Any]:
    trainer = make_trainer(rank, out, 5, kernels=CrashOnRankOne(rank))
    trainer.train()
    return outcome(trainer)


def test_a_kernel_failing_on_one_rank_is_culled_on_every_rank_with_its_reason(tmp_path: Path) -> None:
    zero, one = values(run_ranks(crashing_on_rank_one, tmp_path))
    assert_identical(zero, one)  # the rank whose kernel ran fine culled it too, at the same boundary
    culled = [g for g in zero["lineage"]["germinations"] if g["outcome"] == "CULLED"]
    assert culled and all("kernel exploded on rank 1" in g["stages"][-1]["reason"] for g in culled)


def diverging(rank: int, out: Path) -> None:
    trainer = make_trainer(rank, out, 1)
    if rank == 1:  # a seed moved on rank 1 alone (what a bug or a lost command would do)
        errors = apply_commands(trainer.model, [KasminaControlCommand(
            layer_id="fc1", seed_index=0, command=CommandType.GERMINATE, kernel_artifact_id=kernel_for(
                trainer.model, kasmina_layers(trainer.model)["fc1"].kernels, "fc1"))], 0)  # type: ignore[arg-type]
        assert errors == []
    assert trainer.ranks is not None
    trainer.ranks.check_lifecycle(trainer.model, 0)


def test_ranks_whose_seeds_differ_after_a_boundary_stop_naming_the_seed(tmp_path: Path) -> None:
    for r in run_ranks(diverging, tmp_path):
        assert r.get("error") == RankDivergedError.__name__, r
        assert "rank 1: fc1.fields.STAGE[0]: 0.0 / 1.0" in r["message"]  # DORMANT here, GERMINATED there


def mismatched(rank: int, out: Path, field: str) -> None:
    """Rank 1's host is wider, or its weight decay differs."""
    if field == "width":
        make_trainer(rank, out, 2, width=8 + 8 * rank)
    else:
        make_trainer(rank, out, 2, weight_decay=0.1 * rank)


@pytest.mark.parametrize(("field", "named"), [("width", "model.parameters.fc1.host.weight"),
                                               ("weight_decay", "tolaria.weight_decay")])
def test_ranks_started_differently_stop_at_start_naming_the_difference(tmp_path: Path, field: str,
                                                                      named: str) -> None:
    results = run_ranks(mismatched, tmp_path, field=field)
    for r in results:
        assert r.get("error") == RankMismatchError.__name__, r
        assert named in r["message"] and "rank 1" in r["message"]
    assert not (tmp_path / "ddp").exists()  # nothing was written


def test_batches_shard_one_order_into_disjoint_equal_parts() -> None:
    split = Split(torch.arange(21, dtype=torch.float32).unsqueeze(1), torch.arange(21))
    whole = [y.tolist() for _, y in Batches(split, 4, seed=3)]
    assert [y.tolist() for _, y in Batches(split, 4, seed=3, rank=0, world_size=1)] == whole  # unchanged alone
    shards = [[v for _, y in Batches(split, 4, seed=3, rank=r, world_size=2) for v in y.tolist()] for r in (0, 1)]
    order = [v for batch in whole for v in batch]
    assert shards == [order[:20][0::2], order[:20][1::2]]
    assert len(Batches(split, 4, rank=1, world_size=2)) == 3
    with pytest.raises(ValueError, match="rank"):
        Batches(split, 4, rank=2, world_size=2)


def test_differences_name_the_path_of_each_mismatch() -> None:
    a = {"tolaria": {"lr": 0.1, "epochs": 3}, "model": {"parameters": {"w": "(2, 2) float32"}}, "x": [1, 2]}
    b = {"tolaria": {"lr": 0.2, "epochs": 3}, "model": {"parameters": {"v": "(2, 2) float32"}}, "x": [1, 3]}
    assert differences(a, b) == ["tolaria.lr: 0.1 / 0.2", "model.parameters.w: only on rank 0",
                                 "model.parameters.v: missing on rank 0", "x[1]: 2 / 3"]
    assert differences(a, a) == []
