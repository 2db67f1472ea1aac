"""Lineage: every germination with its slot, kernel, stage history, metrics and outcome; save_model writes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from esper import KasminaConfig, LocalKernelLibrary, TamiyoConfig, TolariaConfig, save_model, wrap
from esper.config import EsperConfig
from esper.lineage import Lineage, lineage_of
from esper_recipes.demo import build_host, run_experiment
from esper_recipes.tasks import two_spirals


def test_record_follows_one_adaptation_from_germination_to_outcome() -> None:
    lineage = Lineage(run_id="r")
    steps = [("DORMANT", "GERMINATED", 3), ("GERMINATED", "LOADING", 3), ("LOADING", "TRAINING", 4),
             ("TRAINING", "GRAFTING", 5), ("GRAFTING", "CULLED", 7), ("CULLED", "DORMANT", 9),
             ("DORMANT", "GERMINATED", 10)]
    for old, new, epoch in steps:
        lineage.record(seed_id="fc[0]", layer_id="fc", seed_index=0, old=old, new=new, epoch=epoch,
                       metrics={"val_accuracy": epoch / 10}, blueprint_id="b" * 64, blueprint_name="mlp",
                       kernel_artifact_id="k", reason=f"to {new}")
    first, second = lineage.germinations
    assert [s["stage"] for s in first.stages] == ["GERMINATED", "LOADING", "TRAINING", "GRAFTING", "CULLED"]
    assert first.outcome == "CULLED" and first.outcome_epoch == 7
    assert first.metrics_before == {"val_accuracy": 0.3} and first.metrics_after == {"val_accuracy": 0.7}
    assert second.germinated_epoch == 10 and second.outcome is None
    assert lineage.summary() == {"CULLED": 1, "UNFINISHED": 1}
    assert Lineage.from_dict(json.loads(json.dumps(lineage.to_dict()))) == lineage


FAST = EsperConfig(
    tolaria=TolariaConfig(epochs=9, learning_rate=0.01, batch_size=16, progress_bar=False, log_lines=False),
    kasmina=KasminaConfig(exclude_modules=["head"], training_min_steps=1, training_max_steps=4, alpha_ramp_steps=4,
                          stabilization_steps=1, evaluation_steps=1, fine_tuning_steps=2, telemetry_every=1),
    tamiyo=TamiyoConfig(warmup_epochs=0, plateau_patience_epochs=1, plateau_min_delta=100.0, fine_tuning_epochs=1,
                        cull_regression_tolerance=1.0, min_improvement=-1.0),
)


def test_save_model_writes_weights_and_lineage_json(tmp_path: Path) -> None:
    data = two_spirals(seed=0, points_per_class=64)
    result = run_experiment("spirals", FAST, data=data, run_dir=tmp_path, run_id="lineage", quiet=True)
    assert result.model is not None and lineage_of(result.model) is result.lineage
    out = save_model(result.model, tmp_path / "model", extra={"note": "tiny"})

    doc = json.loads((out / "lineage.json").read_text())
    weights = (out / "model.pt").read_bytes()
    assert doc["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert doc["run_id"] == "lineage" and doc["note"] == "tiny" and doc["outcomes"]["FOSSILIZED"] >= 1
    g = doc["germinations"][0]
    assert g["layer_id"].startswith("hidden.") and g["seed_id"] == f"{g['layer_id']}[0]"
    assert g["blueprint_name"] and g["kernel_artifact_id"].startswith(g["blueprint_id"])
    assert [s["stage"] for s in g["stages"]][:4] == ["GERMINATED", "LOADING", "TRAINING", "GRAFTING"]
    assert all(isinstance(s["epoch"], int) for s in g["stages"]) and g["outcome"] == "FOSSILIZED"
    assert set(g["metrics_before"]) == {"val_loss", "val_accuracy", "train_loss"}
    assert g["metrics_after"]["val_accuracy"] is not None

    # The weights load back into the same host wrapped the same way, and compute the same outputs.
    torch.manual_seed(1)
    twin = wrap(build_host("spirals", data), FAST.kasmina, LocalKernelLibrary())
    twin.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    twin.eval()
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(twin(data.test.x), result.model(data.test.x))
