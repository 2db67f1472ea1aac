"""Elesh's criteria on real tensors, probes that undo themselves, and lysis that cuts coupled layers together."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esper_contracts import ImportanceCriterion, ProtectedZone, PrunableModule, PruneAction, PruneGranularity
from esper_pruning.cut import CutError, Probe, count_macs, lysis, parameter_count
from esper_pruning.importance import ScoringError, score_state
from esper_pruning.model import load_state, prunable_modules, state_bytes, unit_statistics

C = ImportanceCriterion


class ResidualConvNet(nn.Module):
    """conv -> BN -> relu -> conv + skip (the two convs' outputs are coupled by the addition) -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.block = nn.Conv2d(6, 6, 3, padding=1)
        self.mid = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))  # (B, 6, 4, 4)
        h = h + torch.relu(self.block(h))  # residual: stem and block channels are one group
        h = torch.relu(self.mid(h))  # (B, 5, 4, 4)
        return self.head(torch.relu(self.fc(h.flatten(1))))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def test_discovery_lists_what_can_be_cut_and_spots_the_batchnorm() -> None:
    model = ResidualConvNet()
    mods = {m.module_path: m for m in prunable_modules(model, exclude=["head"])}
    assert set(mods) == {"stem", "block", "mid", "fc"}
    assert mods["stem"].batchnorm_path == "bn" and mods["stem"].kind == "conv" and mods["fc"].kind == "linear"
    counted = {m.module_path: m.unit_parameters for m in prunable_modules(model, ["head"], _inputs()[0][:2])}
    assert counted["fc"] == 5 * 16 + 1 + 3  # its row and bias, and the head's input column
    # a stem channel takes its BatchNorm pair, the residual block's channel (in and out) and mid's inputs
    assert counted["stem"] == 9 + 1 + 2 + (6 * 6 * 9 - 5 * 5 * 9 + 1) + 5 * 9


def test_a_dead_unit_scores_lowest_under_every_criterion() -> None:
    torch.manual_seed(0)
    model = ResidualConvNet()
    with torch.no_grad():
        model.fc.weight[4].zero_()
        model.fc.bias[4] = 0.0  # outputs 0 whatever the input: no weight, no activation, no w·grad
    mods = prunable_modules(model, exclude=["head"])
    x, y = _inputs()
    stats = unit_statistics(model, mods, [(x, y)], F.cross_entropy)
    report = score_state(load_state(state_bytes(model)), mods, stats, epoch=2, checkpoint_id="ck")
    assert report.primary == C.TAYLOR and report.total_parameters == parameter_count(model)
    for criterion in (C.MAGNITUDE, C.TAYLOR, C.ACTIVATION):
        fc = [s for s in report.scores if s.module_path == "fc" and s.criterion == criterion]
        assert min(fc, key=lambda s: s.score).index == 4, criterion
        assert sum(s.score for s in fc) == pytest.approx(len(fc))  # normalised to mean 1
    assert {s.criterion for s in report.scores if s.module_path == "stem"} >= {C.MAGNITUDE, C.BN_SCALE}
    assert next(s for s in report.scores if s.module_path == "fc").parameters == 5 * 16 + 1


def test_attention_heads_and_whole_seeds_are_scored() -> None:
    attn = nn.MultiheadAttention(8, 4)
    with torch.no_grad():
        attn.in_proj_weight.view(3, 4, 2, 8)[:, 2].zero_()
        attn.out_proj.weight.view(8, 4, 2)[:, 2].zero_()
    state = {f"attn.{k}": v for k, v in attn.state_dict().items()}
    state["slot.seeds.0.w"] = torch.ones(3, 3)
    mods = [PrunableModule(module_path="attn", kind="attention", num_heads=4),
            PrunableModule(module_path="slot.seeds.0", kind="seed")]
    report = score_state(state, mods, epoch=0, checkpoint_id="ck")
    heads = [s for s in report.scores if s.module_path == "attn"]
    assert len(heads) == 4 and min(heads, key=lambda s: s.score).index == 2
    assert heads[0].parameters == 3 * 2 * 8 + 3 * 2 + 8 * 2
    seed = [s for s in report.scores if s.module_path == "slot.seeds.0"]
    assert len(seed) == 1 and seed[0].granularity == PruneGranularity.SEED and seed[0].parameters == 9


def test_scores_inside_a_zone_or_its_ring_are_diagnostic_only() -> None:
    model = ResidualConvNet()
    zone = ProtectedZone(module_patterns=["block"], ring_patterns=["mid"], reason="scaffold", created_epoch=0)
    report = score_state(model.state_dict(), prunable_modules(model, exclude=["head"]), zones=[zone], epoch=1,
                         checkpoint_id="ck")
    flagged = {s.module_path for s in report.scores if s.diagnostic_only}
    assert flagged == {"block", "mid"}


def test_bad_requests_are_refused_with_the_reason() -> None:
    model = ResidualConvNet()
    with pytest.raises(ScoringError, match=r"no tensor 'ghost\.weight'"):
        score_state(model.state_dict(), [PrunableModule(module_path="ghost", kind="linear")], epoch=0,
                    checkpoint_id="ck")
    from esper_contracts import UnitStatistics
    short = UnitStatistics(module_path="fc", criterion=C.TAYLOR, values=[1.0])
    with pytest.raises(ScoringError, match="1 taylor values for 12 units"):
        score_state(model.state_dict(), [PrunableModule(module_path="fc", kind="linear")], [short], epoch=0,
                    checkpoint_id="ck")


def test_a_probe_masks_and_its_removal_restores_exactly() -> None:
    model = ResidualConvNet().eval()
    x, _ = _inputs()
    before = model(x)
    probe = Probe(model, [PruneAction(module_path="fc", granularity=PruneGranularity.NEURON, indices=[0, 1])])
    masked = model(x)
    probe.remove()
    assert not torch.allclose(before, masked) and torch.equal(before, model(x))


def test_lysis_cuts_coupled_layers_together_and_stays_dense() -> None:
    torch.manual_seed(1)
    model = ResidualConvNet().eval()
    x, _ = _inputs()
    result = lysis(model, [PruneAction(module_path="stem", granularity=PruneGranularity.CHANNEL, indices=[1, 4]),
                           PruneAction(module_path="fc", granularity=PruneGranularity.NEURON, indices=[3])],
                   x[:2], protected=["head"])
    # stem, its BatchNorm, block (both sides of the residual) and mid's inputs lost channels 1 and 4
    assert model.stem.out_channels == model.bn.num_features == model.block.out_channels == 4
    assert model.block.in_channels == model.mid.in_channels == 4 and model.fc.out_features == 11
    assert model(x).shape == (32, 3) and result.units_removed == 3
    assert result.parameters_after == parameter_count(model) < result.parameters_before
    assert result.macs_after == count_macs(model, x[:2]) < result.macs_before


def test_a_refused_lysis_leaves_the_model_untouched() -> None:
    model = ResidualConvNet().eval()
    x, _ = _inputs()
    before, params = model(x), parameter_count(model)
    for action, reason in (
        (PruneAction(module_path="nope", granularity=PruneGranularity.NEURON, indices=[0]), "no layer 'nope'"),
        (PruneAction(module_path="fc", granularity=PruneGranularity.NEURON, indices=[99]), "has 12 units"),
        (PruneAction(module_path="fc", granularity=PruneGranularity.CHANNEL, indices=[0]), "no channel units"),
        (PruneAction(module_path="stem", granularity=PruneGranularity.CHANNEL, indices=[0]), "protected layer"),
    ):
        with pytest.raises(CutError, match=reason):
            lysis(model, [action], x[:2], protected=["head", "block"])
        assert parameter_count(model) == params and torch.equal(model(x), before)
