"""Tolaria runs scaffolds itself: a GERMINATE tagged ``scaffold`` is adopted by Kasmina's supervisor, trained,
grafted, judged by its gates, weaned (the weaning loss joins the training objective) and retired, with the
parameter count back to the host's; a crash mid-weaning resumes from the checkpoint with the same alpha and anchor."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from esper import KasminaConfig, LocalKernelLibrary, TolariaConfig, wrap
from esper.data import Batches
from esper.kasmina import host_parameter_count, kasmina_layers, seed_parameter_count
from esper.kasmina.scaffold import ScaffoldGates
from esper.kasmina.testing import TinyMLP
from esper.tolaria import TolariaTrainer, TrainerHooks
from esper_contracts import AdaptationSignal, CommandType, KasminaControlCommand, SeedStage, SystemStatePacket, family
from esper_policy import NullPolicy
from esper_policy.scaffolds import SCAFFOLD_TAG
from esper_recipes.tasks import two_spirals

LAYER = "fc2"


class ScaffoldAtEpoch(NullPolicy):
    """Germinates one scaffold in ``fc2[0]`` at ``epoch`` (as Tamiyo's steward would), then leaves it to Kasmina."""

    def __init__(self, kernel: str, epoch: int = 1) -> None:
        super().__init__()
        self.kernel, self.epoch = kernel, epoch

    def decide(self, packet: SystemStatePacket) -> AdaptationSignal:
        if packet.epoch != self.epoch:
            return AdaptationSignal(epoch=packet.epoch)
        return AdaptationSignal(epoch=packet.epoch, commands=[KasminaControlCommand(
            layer_id=LAYER, seed_index=0, command=CommandType.GERMINATE, kernel_artifact_id=self.kernel,
            selected_for_tags=[SCAFFOLD_TAG, "scaffold_mlp"], reason="test: region unstable")])


class Crash(RuntimeError):
    pass


def make_trainer(tmp_path: Path, epochs: int, hooks: TrainerHooks | None = None) -> TolariaTrainer:
    torch.manual_seed(0)
    data = two_spirals(seed=0, points_per_class=64)
    library = LocalKernelLibrary()
    model = wrap(TinyMLP(), KasminaConfig(target_modules=["fc1", "fc2"], training_min_steps=1, training_max_steps=4,
                                          alpha_ramp_steps=4, stabilization_steps=1, telemetry_every=1), library)
    iface = kasmina_layers(model)[LAYER].chunks.interface(0)
    kernel = library.register(family("scaffold_mlp").blueprint(iface, origin="test", ttl_epochs=25)).artifact_id
    config = TolariaConfig(epochs=epochs, run_dir=str(tmp_path), run_id="scaffolded", progress_bar=False,
                           log_lines=False, learning_rate=1e-2)
    trainer = TolariaTrainer(model, ScaffoldAtEpoch(kernel), config, train_data=Batches(data.train, 16, seed=0),
                             val_data=Batches(data.val, 256, shuffle=False), loss_fn=F.cross_entropy, hooks=hooks)
    trainer.scaffolds.gates = ScaffoldGates(green_windows=2, max_jitter=0.5, wean_epochs=3)
    return trainer


def test_the_trainer_takes_a_scaffold_from_germination_to_no_op(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=20)
    host = host_parameter_count(trainer.model)
    _, history = trainer.train()
    sunsets = [e for e in history.events if e["kind"] == "scaffold_sunset"]
    assert [(e["seed"], e["outcome"], e["escalate"]) for e in sunsets] == [("fc2[0]", "weaned", False)]
    stages = [s["stage"] for g in trainer.lineage.germinations for s in g.stages]
    assert {"TRAINING", "GRAFTING", "STABILIZATION"} <= set(stages) and "FOSSILIZED" not in stages
    layer = kasmina_layers(trainer.model)[LAYER]
    assert layer.stage(0) is SeedStage.DORMANT and layer.scaffold_seeds == set() and trainer.scaffolds.scaffolds == {}
    assert seed_parameter_count(trainer.model) == 0 and host_parameter_count(trainer.model) == host
    peak = max(r["total_params"] for r in history.epochs)
    assert peak > host and history.epochs[-1]["total_params"] == host  # it came, and it left nothing behind


def test_a_crash_while_weaning_resumes_with_the_same_alpha_and_anchor(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def crash_once_weaning(trainer: TolariaTrainer) -> None:
        weaning = [s for s in trainer.scaffolds.scaffolds.values() if s.weaning_since is not None]
        if weaning:
            s = weaning[0]
            seen.update(epoch=trainer.epoch, since=s.weaning_since, alpha=kasmina_layers(trainer.model)[LAYER].alpha(0),
                        anchor=[a.clone() for a in s.anchor])
            raise Crash

    first = make_trainer(tmp_path, epochs=20, hooks=TrainerHooks(on_epoch_end=crash_once_weaning))
    with contextlib.suppress(Crash):
        first.train()
    assert seen, "the scaffold never began weaning"

    again = make_trainer(tmp_path, epochs=20)
    assert again.resume() == seen["epoch"]
    s = again.scaffolds.scaffolds["fc2[0]"]
    assert s.weaning_since == seen["since"] and kasmina_layers(again.model)[LAYER].alpha(0) == seen["alpha"]
    anchor = seen["anchor"]
    assert isinstance(anchor, list) and len(s.anchor) == len(anchor) > 0
    assert all(torch.equal(a, b) for a, b in zip(s.anchor, anchor, strict=True))
    _, history = again.train()
    assert [e["outcome"] for e in history.events if e["kind"] == "scaffold_sunset"] == ["weaned"]
    assert seed_parameter_count(again.model) == 0
