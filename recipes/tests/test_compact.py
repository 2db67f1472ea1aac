"""Grow-then-compact: after growth, compaction cuts a fossilized seed's own layers and the host, and the history
(the report's parameter plot) shows the fall."""

from __future__ import annotations

import torch

from esper.lineage import Lineage
from esper.tolaria import TrainingHistory
from esper_contracts import TensorInterface
from esper_kernels import LocalKernelLibrary
from esper_recipes.compact import compact_grown
from esper_recipes.demo import static_twin
from esper_recipes.tasks import load_task


def test_compaction_after_growth_shrinks_the_model_and_extends_the_history() -> None:
    data = load_task("spirals", 0)
    library = LocalKernelLibrary()
    kernel = library.register_interface(TensorInterface(layout="BD", features=8))[0]  # a residual MLP seed
    torch.manual_seed(0)
    grown = static_twin("spirals", data, [("hidden.0", 0, kernel)], 1, library)  # a fossilized seed, merged
    history = TrainingHistory(epochs=[{"epoch": e, "total_params": 434, "val_accuracy": 0.8, "train_accuracy": 0.8}
                                      for e in (1, 2)])
    lineage = Lineage(run_id="t")
    result = compact_grown(grown, data, learning_rate=0.01, batch_size=32, seed=0, history=history,
                           lineage=lineage, epochs=4, every=2)
    assert result.parameters_after < result.parameters_before
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4, 5, 6]
    assert history.epochs[-1]["total_params"] == result.parameters_after
    assert lineage.removals and lineage.removals[0]["accepted"]
    assert result.model.hidden[0].host.out_features == 8  # the seed slot's host keeps its chunk width
    assert 0.0 <= result.test_accuracy <= 1.0
